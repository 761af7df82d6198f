"""The settings model: what the rest of the sidecar imports (`Settings`, `CertificateSpec`).

Both are frozen: built once by `sidecar.config.loader`, then passed around and replaced whole
(a reloaded config file is a new `Settings`). `work_fingerprint` says which of them a
certificate's work follows, so a one-shot and a running sidecar can compare without ever
sending a value.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from sidecar.config.options import ENV_EAB_KEY, OPTION_BY_FIELD, ReloadMode

if TYPE_CHECKING:
    from ca_client.key_types import KeyType
    from sidecar.haproxy import HAProxyAddress


@dataclass(frozen=True, slots=True)
class CertificateSpec:
    """One certificate: ``<certs_dir>/<name>.pem`` covering ``domains`` (normalised)."""

    name: str
    domains: tuple[str, ...]
    key_type: KeyType
    challenge: str


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration; field names are the TOML keys (CONTRACT.md)."""

    directory: str
    ca_bundle: Path
    system_trust: bool
    email: str | None
    eab_kid: str | None
    eab_hmac_key: bytes | None = field(repr=False)
    key_type: KeyType
    challenge: str
    http_listen: tuple[str, int]
    tls_alpn_listen: tuple[str, int]
    dns_hook: tuple[str, ...] | None
    certs_dir: Path
    state_dir: Path
    pem_mode: int
    pem_group: int | None  # None: the process's own group (no chown)
    renew_at: float
    haproxy_sockets: tuple[HAProxyAddress, ...]
    haproxy_certs_dir: Path
    reload: ReloadMode
    reload_command: tuple[str, ...] | None
    reload_signal: signal.Signals | None
    reload_pid_file: Path | None
    verify_address: tuple[str, int] | None
    deploy_hook: tuple[str, ...] | None
    health_listen: tuple[str, int]
    placeholder: bool | None  # None: each command decides (on for run)
    log_format: str
    log_level: str
    certificates: tuple[CertificateSpec, ...]
    config_file: Path | None
    # How the user spelled each setting that came from somewhere (field -> "--flag", env or
    # TOML key), for errors found after loading, e.g. by preflight.check_ca_bundle.
    setting_labels: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )
    # The socket addresses as written, for describe() and messages.
    haproxy_socket_texts: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # Environment variables passed to child processes beyond ca_client.childenv's allow-list.
    hook_env: tuple[str, ...] = ()

    def label(self, name: str) -> str:
        """The spelling of setting ``name`` to use in a message."""
        return self.setting_labels.get(name) or f"{OPTION_BY_FIELD[name].flag} (default)"

    def certificate(self, name: str) -> CertificateSpec | None:
        return next((spec for spec in self.certificates if spec.name == name), None)


# --- what the work depends on ---------------------------------------------------------------

# The settings a certificate's order, files and deploy follow. A one-shot handed to a running
# sidecar is done with the sidecar's settings, so these must agree (`work_fingerprint`); the
# others (health listener, logging, placeholder) do not change what the work does.
WORK_FIELDS: Final = (
    "directory",
    "ca_bundle",
    "system_trust",
    "email",
    "eab_kid",
    "eab_hmac_key",
    "key_type",
    "challenge",
    "http_listen",
    "tls_alpn_listen",
    "dns_hook",
    "certs_dir",
    "state_dir",
    "pem_mode",
    "pem_group",
    "renew_at",
    "haproxy_sockets",
    "haproxy_certs_dir",
    "reload",
    "reload_command",
    "reload_signal",
    "reload_pid_file",
    "verify_address",
    "deploy_hook",
    "hook_env",
    "certificates",
)


def work_fingerprint(settings: Settings) -> dict[str, str]:
    """Each of `WORK_FIELDS` as a short digest: comparable across processes (the control
    socket) without ever sending a value, since hook commands and the EAB key may be secret."""
    import hashlib

    digests = {}
    for name in WORK_FIELDS:
        value = getattr(settings, name)
        text = repr(sorted(map(repr, value))) if name == "certificates" else repr(value)
        digests[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return digests


def work_label(settings: Settings, name: str) -> str:
    """How to name one of `WORK_FIELDS` in a message."""
    if name == "eab_hmac_key":
        return ENV_EAB_KEY
    if name == "certificates":
        return settings.setting_labels.get("certificates", "--domain")
    return settings.label(name)
