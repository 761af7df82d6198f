"""``check-config``'s text: the effective settings as TOML, each value's source beside it.

Secrets never appear: the EAB key is shown as set or not, and a hook command keeps only its
program (`mask_command`).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from sidecar.config.model import Settings
from sidecar.config.options import DEFAULT_HELP, ENV_PREFIX, OPTIONS, TABLES


def _toml_value(value: object) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _host_port_text(value: tuple[str, int] | None) -> str | None:
    if value is None:
        return None
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mask_command(argv: Sequence[str] | None) -> str | None:
    """A command for display: the program, and ``***`` for every argument after it.

    Arguments are where hook commands carry credentials (``--auth-token=...``, a bare token,
    a URL with a password), and no pattern recognises them all; the program's name is enough
    to check that the right hook is configured. The count of masked arguments stays visible.
    """
    if not argv:
        return None
    return shlex.join([argv[0], *("***" for _ in argv[1:])])


def _source_name(settings: Settings, field_name: str) -> str:
    """Where a value came from, as ``check-config`` says it (issue 16, item 9)."""
    label = settings.setting_labels.get(field_name)
    if label is None:
        derived = DEFAULT_HELP.get(field_name)
        return f"default: {derived}" if derived else "default"
    if label.startswith("--"):
        return f"flag {label}"
    if label.startswith(ENV_PREFIX):
        return f"environment {label}"
    if " in " in label:
        return f"file {label.rpartition(' in ')[2]}"
    return label


def _origin(settings: Settings, field_name: str) -> str:
    return f"  # {_source_name(settings, field_name)}"


def describe(settings: Settings) -> str:
    """The effective settings as TOML-like text, for ``check-config``; secrets masked."""
    acme, files, haproxy, service = (
        settings.acme,
        settings.files,
        settings.haproxy,
        settings.service,
    )
    values: dict[str, object] = {
        "directory": acme.directory,
        "ca_bundle": acme.ca_bundle,
        "system_trust": acme.system_trust,
        "email": acme.email,
        "eab_kid": acme.eab_kid,
        "key_type": str(acme.key_type),
        "challenge": acme.challenge,
        "http_listen": _host_port_text(acme.http_listen),
        "tls_alpn_listen": _host_port_text(acme.tls_alpn_listen),
        "dns_hook": mask_command(acme.dns_hook),
        "certs_dir": files.certs_dir,
        "state_dir": files.state_dir,
        "pem_mode": f"{files.pem_mode:04o}",
        "pem_group": files.pem_group,
        "renew_at": settings.renewal.renew_at,
        "haproxy_sockets": list(haproxy.socket_texts),
        "haproxy_certs_dir": haproxy.certs_dir,
        "reload": haproxy.reload,
        "reload_command": mask_command(haproxy.reload_command),
        "reload_signal": haproxy.reload_signal.name if haproxy.reload_signal else None,
        "reload_pid_file": haproxy.reload_pid_file,
        "verify_address": _host_port_text(haproxy.verify_address),
        "deploy_hook": mask_command(haproxy.deploy_hook),
        "hook_env": list(service.hook_env),
        "health_listen": _host_port_text(service.health_listen),
        "placeholder": service.placeholder,
        "log_format": service.log_format,
        "log_level": service.log_level,
    }
    source = str(settings.config_file) if settings.config_file else "none"
    lines = [
        f"# cert-sidecar effective settings (config file: {source})",
        "# each value's source follows it: a flag, an environment variable, the file, or default",
    ]
    for table in TABLES:
        lines.append(f"\n[{table}]")
        for option in OPTIONS:
            if option.table != table:
                continue
            origin = _origin(settings, option.field)
            if option.field == "eab_hmac_key_file":
                # The key itself is a secret: only say whether one is set.
                state = "***" if acme.eab_hmac_key is not None else "(not set)"
                lines.append(f"# eab_hmac_key = {state}")
                continue
            value = values[option.field]
            if value is None:
                lines.append(f"# {option.key} = (not set)")
            else:
                lines.append(f"{option.key} = {_toml_value(value)}{origin}")
    if settings.certificates:
        lines.append(f"\n# certificates from {_source_name(settings, 'certificates')}")
    for spec in settings.certificates:
        lines.append("\n[[certificates]]")
        lines.append(f"name = {_toml_value(spec.name)}")
        lines.append(f"domains = {_toml_value(list(spec.domains))}")
        lines.append(f"key_type = {_toml_value(str(spec.key_type))}")
        lines.append(f"challenge = {_toml_value(spec.challenge)}")
    return "\n".join(lines) + "\n"
