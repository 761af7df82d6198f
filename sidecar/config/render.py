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
    values: dict[str, object] = {
        "directory": settings.directory,
        "ca_bundle": settings.ca_bundle,
        "system_trust": settings.system_trust,
        "email": settings.email,
        "eab_kid": settings.eab_kid,
        "key_type": str(settings.key_type),
        "challenge": settings.challenge,
        "http_listen": _host_port_text(settings.http_listen),
        "tls_alpn_listen": _host_port_text(settings.tls_alpn_listen),
        "dns_hook": mask_command(settings.dns_hook),
        "certs_dir": settings.certs_dir,
        "state_dir": settings.state_dir,
        "pem_mode": f"{settings.pem_mode:04o}",
        "pem_group": settings.pem_group,
        "renew_at": settings.renew_at,
        "haproxy_sockets": list(settings.haproxy_socket_texts),
        "haproxy_certs_dir": settings.haproxy_certs_dir,
        "reload": settings.reload,
        "reload_command": mask_command(settings.reload_command),
        "reload_signal": settings.reload_signal.name if settings.reload_signal else None,
        "reload_pid_file": settings.reload_pid_file,
        "verify_address": _host_port_text(settings.verify_address),
        "deploy_hook": mask_command(settings.deploy_hook),
        "hook_env": list(settings.hook_env),
        "health_listen": _host_port_text(settings.health_listen),
        "placeholder": settings.placeholder,
        "log_format": settings.log_format,
        "log_level": settings.log_level,
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
                state = "***" if settings.eab_hmac_key is not None else "(not set)"
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
