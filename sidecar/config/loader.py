"""`load_settings`: every setting parsed in a fixed order, then checked against the others.

The settings are read section by section (the CA and account, ACME, files, HAProxy, the
service), each setting in a fixed order within its section, so the first bad setting is always
the one reported. `locate_running_sidecar` is the loader for a config file that does not load:
the two settings needed to reach a running sidecar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, TypedDict

from sidecar import domains
from sidecar.config.host_lookups import as_command, as_pem_group, read_eab_file
from sidecar.config.model import (
    AcmeSettings,
    CertificateSpec,
    FilesSettings,
    HAProxySettings,
    RenewalSettings,
    ServiceSettings,
    Settings,
)
from sidecar.config.options import (
    CHALLENGES,
    DEFAULT_RELOAD_SIGNAL,
    ENV_DOMAINS,
    ENV_EAB_KEY,
    ENV_PREFIX,
    LOG_FORMATS,
    LOG_LEVELS,
    OPTION_BY_FIELD,
    default_reload_mode,
)
from sidecar.config.parsers import (
    Raw,
    as_bool,
    as_choice,
    as_directory_url,
    as_email,
    as_haproxy_sockets,
    as_hook_env,
    as_host_port,
    as_key_type,
    as_optional_host_port,
    as_optional_path,
    as_optional_string,
    as_path,
    as_reload_mode,
    as_renew_at,
    as_signal,
    check_reload,
    decode_eab,
    parse_pem_mode,
    type_name,
)
from sidecar.config.sources import (
    CertInput,
    Sources,
    certificate_inputs,
    check_unknown_env,
    config_path,
    load_sources,
    salvage,
)
from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from ca_client.key_types import KeyType


def load_settings(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    require_certificates: bool = True,
) -> Settings:
    """Build and validate the settings; raises ``ConfigError`` naming the first bad setting.

    ``require_certificates=False`` is for commands that need none (``healthcheck`` only asks
    the running sidecar).

    Reads the config file and an EAB key file if named; checks nothing else on disk (see
    ``sidecar.preflight``, whose checks run after this).
    """
    check_unknown_env(environ)
    sources, file = load_sources(args, environ)
    # The sections are parsed in this order, each setting in a fixed order within its section,
    # so that the first bad setting is always the one reported.
    ca = _ca_section(sources)
    challenges = _challenge_section(sources)
    files, renewal = _files_section(sources)
    haproxy, hook_env = _haproxy_section(sources, files.certs_dir)
    service = _service_section(sources, hook_env)
    cert_inputs = certificate_inputs(sources, file)
    if cert_inputs:
        # Where the list came from, for check-config (a flag or the environment replaces the
        # file's [[certificates]] as a whole).
        first = cert_inputs[0].label
        if first not in ("--domain", ENV_DOMAINS) and file is not None:
            first = f"[[certificates]] in {file.path}"
        sources.labels["certificates"] = first
    certificates = _certificate_specs(
        cert_inputs,
        challenges["key_type"],
        sources.get("challenge"),
        challenges["dns_hook"],
        require_certificates=require_certificates,
    )
    return Settings(
        acme=AcmeSettings(**ca, **challenges),
        files=files,
        renewal=renewal,
        haproxy=haproxy,
        service=service,
        certificates=certificates,
        config_file=file.path if file else None,
        setting_labels=MappingProxyType(dict(sources.labels)),
    )


@dataclass(frozen=True, slots=True)
class RunningSidecarAddress:
    """Where a running sidecar answers: its health listener and its state directory (the
    control socket)."""

    health_listen: tuple[str, int]
    state_dir: Path


def locate_running_sidecar(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> RunningSidecarAddress:
    """Where to ask a running sidecar when the config file does not load (issue 16, item 4).

    `run` keeps its last good settings when a bad file is saved; ``healthcheck`` and ``status``
    must still reach it. They need only two settings, so those are taken from the flags, the
    environment, and whatever of the file still reads: the two keys from a file that is valid
    TOML (an unknown key or a bad value elsewhere), or their own lines from one that is not.
    Raises `ConfigError` when these two settings themselves are wrong.
    """
    sources = Sources(args, environ, {})
    located = config_path(sources)
    if located is not None:
        sources = Sources(args, environ, salvage(located[0]))
    return RunningSidecarAddress(
        health_listen=as_host_port(sources.get("health_listen")),
        state_dir=as_path(sources.get("state_dir")),
    )


class _CaSection(TypedDict):
    directory: str
    ca_bundle: Path
    system_trust: bool
    email: str | None
    eab_kid: str | None
    eab_hmac_key: bytes | None


def _ca_section(sources: Sources) -> _CaSection:
    """Which CA, how it is trusted, and the account's contact and external binding."""
    get = sources.get
    directory = as_directory_url(get("directory"))
    ca_bundle = as_path(get("ca_bundle"))
    system_trust = bool(as_bool(get("system_trust")))
    email = as_email(get("email"))
    kid_raw = get("eab_kid")
    eab_kid = as_optional_string(kid_raw)
    eab_key, eab_label = _read_eab_key(sources)
    if eab_kid is not None and eab_key is None:
        raise ConfigError(
            kid_raw.label,
            f"needs the HMAC key too: {ENV_EAB_KEY} or --eab-hmac-key-file",
        )
    if eab_key is not None and eab_kid is None:
        raise ConfigError(eab_label or ENV_EAB_KEY, "needs the key id too: --eab-kid")
    return _CaSection(
        directory=directory,
        ca_bundle=ca_bundle,
        system_trust=system_trust,
        email=email,
        eab_kid=eab_kid,
        eab_hmac_key=eab_key,
    )


class _ChallengeSection(TypedDict):
    key_type: KeyType
    challenge: str
    http_listen: tuple[str, int]
    tls_alpn_listen: tuple[str, int]
    dns_hook: tuple[str, ...] | None


def _challenge_section(sources: Sources) -> _ChallengeSection:
    """The defaults for each certificate's key and challenge, and the challenges' settings."""
    get = sources.get
    return _ChallengeSection(
        key_type=as_key_type(get("key_type")),
        challenge=as_choice(get("challenge"), CHALLENGES),
        http_listen=as_host_port(get("http_listen")),
        tls_alpn_listen=as_host_port(get("tls_alpn_listen")),
        dns_hook=as_command(get("dns_hook")),
    )


def _files_section(sources: Sources) -> tuple[FilesSettings, RenewalSettings]:
    """Where files go, with which mode and group, and when a certificate is due."""
    get = sources.get
    certs_dir = as_path(get("certs_dir"))
    state_dir = as_path(get("state_dir"))
    mode_raw = get("pem_mode")
    if not isinstance(mode_raw.value, str | int):
        raise ConfigError(mode_raw.label, f"must be an octal mode, not {type_name(mode_raw.value)}")
    try:
        pem_mode = parse_pem_mode(mode_raw.value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(mode_raw.label, str(exc)) from None
    files = FilesSettings(
        certs_dir=certs_dir,
        state_dir=state_dir,
        pem_mode=pem_mode,
        pem_group=as_pem_group(get("pem_group")),
    )
    return files, RenewalSettings(renew_at=as_renew_at(get("renew_at")))


def _haproxy_section(sources: Sources, certs_dir: Path) -> tuple[HAProxySettings, tuple[str, ...]]:
    """How certificates reach HAProxy; and ``service.hook_env``, read here so that the order in
    which settings are checked (and so the first one reported) stays what it always was."""
    get = sources.get
    socket_texts, haproxy_sockets = as_haproxy_sockets(get("haproxy_sockets"))
    certs_raw = get("haproxy_certs_dir")
    haproxy_certs_dir = certs_dir if certs_raw.value is None else as_path(certs_raw, local=False)
    reload_raw = get("reload")
    reload = (
        as_reload_mode(reload_raw)
        if reload_raw.value is not None
        else default_reload_mode(bool(haproxy_sockets))
    )
    reload_command = as_command(get("reload_command"))
    signal_raw = get("reload_signal")
    reload_signal = as_signal(signal_raw)
    reload_pid_file = as_optional_path(get("reload_pid_file"))
    if reload_signal is not None and reload_pid_file is None:
        raise ConfigError(signal_raw.label, "needs --reload-pid-file to know whom to signal")
    if reload_pid_file is not None and reload_signal is None:
        reload_signal = DEFAULT_RELOAD_SIGNAL
    check_reload(reload, reload_raw.label, haproxy_sockets, reload_command, reload_pid_file)
    section = HAProxySettings(
        sockets=haproxy_sockets,
        certs_dir=haproxy_certs_dir,
        reload=reload,
        reload_command=reload_command,
        reload_signal=reload_signal,
        reload_pid_file=reload_pid_file,
        verify_address=as_optional_host_port(get("verify_address")),
        deploy_hook=as_command(get("deploy_hook")),
        socket_texts=socket_texts,
    )
    return section, as_hook_env(get("hook_env"))


def _service_section(sources: Sources, hook_env: tuple[str, ...]) -> ServiceSettings:
    """The health listener, the placeholder switch and logging."""
    get = sources.get
    health_listen = as_host_port(get("health_listen"))
    placeholder = as_bool(get("placeholder"))
    format_raw = get("log_format")
    log_format = (
        as_choice(format_raw, LOG_FORMATS)
        if format_raw.value is not None
        else ("console" if sys.stderr is not None and sys.stderr.isatty() else "json")
    )
    return ServiceSettings(
        hook_env=hook_env,
        health_listen=health_listen,
        placeholder=placeholder,
        log_format=log_format,
        log_level=as_choice(get("log_level"), LOG_LEVELS),
    )


def _certificate_specs(
    inputs: Sequence[CertInput],
    key_type: KeyType,
    challenge_raw: Raw,
    dns_hook: tuple[str, ...] | None,
    *,
    require_certificates: bool,
) -> tuple[CertificateSpec, ...]:
    """Every certificate, validated, then checked against the others and the dns-01 hook."""
    if not inputs and require_certificates:
        raise ConfigError(
            "--domain",
            f"no certificates configured: give --domain, {ENV_DOMAINS} or [[certificates]]"
            " in the config file",
        )
    certificates: list[CertificateSpec] = []
    names: set[str] = set()
    for cert_input in inputs:
        spec, challenge_label = _certificate(cert_input, key_type, challenge_raw)
        if spec.name in names:
            raise ConfigError(cert_input.label, f"certificate name {spec.name!r} is used twice")
        names.add(spec.name)
        if spec.challenge == "dns-01" and dns_hook is None:
            raise ConfigError(
                challenge_label, f"dns-01 needs a hook: --dns-hook or {ENV_PREFIX}DNS_HOOK"
            )
        certificates.append(spec)
    return tuple(certificates)


def _certificate(
    spec: CertInput,
    default_key_type: KeyType,
    default_challenge: Raw,
) -> tuple[CertificateSpec, str]:
    """One validated certificate, and the label of its challenge setting."""
    if not spec.names or spec.names == [""]:
        raise ConfigError(spec.label, "a certificate needs at least one name")
    identifiers: list[tuple[str, str]] = []
    for text in spec.names:
        try:
            identifiers.append(domains.normalize_identifier(text))
        except ValueError as exc:
            raise ConfigError(spec.label, str(exc)) from None
    values = [value for _, value in identifiers]
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        raise ConfigError(spec.label, f"{duplicates[0]!r} is listed twice")
    try:
        name = (
            domains.validate_certificate_name(spec.name.strip())
            if spec.name is not None
            else domains.certificate_name(values[0])
        )
    except ValueError as exc:
        label = spec.label.replace(" domains", " name") if spec.name is not None else spec.label
        raise ConfigError(label, str(exc)) from None
    key_type = as_key_type(spec.key_type) if spec.key_type is not None else default_key_type
    challenge_raw = spec.challenge or default_challenge
    challenge = as_choice(challenge_raw, CHALLENGES)
    for kind, value in identifiers:
        # RFC 8555 §7.1.3 / §8.4: only dns-01 can prove control of a whole wildcard domain.
        if domains.is_wildcard(value) and challenge != "dns-01":
            raise ConfigError(
                spec.label, f"{value!r} is a wildcard, which only dns-01 can prove, not {challenge}"
            )
        # RFC 8738 §7: "The dns-01 challenge ... MUST NOT be used to validate IP identifiers."
        if kind == "ip" and challenge == "dns-01":
            raise ConfigError(spec.label, f"{value!r} is an IP address, which dns-01 cannot prove")
    return CertificateSpec(name, tuple(values), key_type, challenge), challenge_raw.label


def _read_eab_key(sources: Sources) -> tuple[bytes | None, str | None]:
    """The EAB HMAC key and where it came from; a secret, so never from a flag's value."""
    option = OPTION_BY_FIELD["eab_hmac_key_file"]
    flag_file = sources.flag(option.field)
    env_key = sources.env(ENV_EAB_KEY)
    env_file = sources.env(option.envs[0])
    if flag_file is not None:
        return read_eab_file(Raw(flag_file, option.flag, "flag")), option.flag
    if env_key is not None and env_file is not None:
        raise ConfigError(ENV_EAB_KEY, f"set either {ENV_EAB_KEY} or {option.envs[0]}, not both")
    if env_key is not None:
        return decode_eab(env_key, ENV_EAB_KEY), ENV_EAB_KEY
    raw = sources.get(option.field)
    if raw.value is None:
        return None, None
    return read_eab_file(raw), raw.label
