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
class AcmeSettings:
    """``[acme]``: which CA, how it is trusted, the account, and how names are proven."""

    directory: str
    ca_bundle: Path
    system_trust: bool
    email: str | None
    eab_kid: str | None
    eab_hmac_key: bytes | None = field(repr=False)
    key_type: KeyType  # the default of each certificate's own
    challenge: str  # likewise
    http_listen: tuple[str, int]
    tls_alpn_listen: tuple[str, int]
    dns_hook: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class FilesSettings:
    """``[files]``: where the combined PEMs and the state go, and who may read the PEMs."""

    certs_dir: Path
    state_dir: Path
    pem_mode: int
    pem_group: int | None  # None: the process's own group (no chown)


@dataclass(frozen=True, slots=True)
class RenewalSettings:
    """``[renewal]``: when a certificate is due."""

    renew_at: float


@dataclass(frozen=True, slots=True)
class HAProxySettings:
    """``[haproxy]``: how a new certificate reaches HAProxy, and how that is checked."""

    sockets: tuple[HAProxyAddress, ...]
    certs_dir: Path  # the certs directory as HAProxy sees it
    reload: ReloadMode
    reload_command: tuple[str, ...] | None
    reload_signal: signal.Signals | None
    reload_pid_file: Path | None
    verify_address: tuple[str, int] | None
    deploy_hook: tuple[str, ...] | None
    # The socket addresses as written, for describe() and messages.
    socket_texts: tuple[str, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """``[service]``: the process itself: hooks' environment, health listener, logging."""

    # Environment variables passed to child processes beyond ca_client.childenv's allow-list.
    hook_env: tuple[str, ...]
    health_listen: tuple[str, int]
    placeholder: bool | None  # None: each command decides (on for run)
    log_format: str
    log_level: str


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration, one part per TOML table (CONTRACT.md); within a part the
    field names are the table's keys, so ``settings.haproxy.certs_dir`` is ``haproxy.certs_dir``.

    Each part goes to the code that uses it (the account takes ``acme``, the deployer
    ``haproxy``), so a reader of a module sees which settings it can depend on.
    """

    acme: AcmeSettings
    files: FilesSettings
    renewal: RenewalSettings
    haproxy: HAProxySettings
    service: ServiceSettings
    certificates: tuple[CertificateSpec, ...]
    config_file: Path | None
    # How the user spelled each setting that came from somewhere (option field -> "--flag",
    # env or TOML key), for errors found after loading, e.g. by preflight.check_ca_bundle.
    setting_labels: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    def label(self, name: str) -> str:
        """The spelling of setting ``name`` (an `OPTIONS` field) to use in a message."""
        return self.setting_labels.get(name) or f"{OPTION_BY_FIELD[name].flag} (default)"

    def certificate(self, name: str) -> CertificateSpec | None:
        return next((spec for spec in self.certificates if spec.name == name), None)

    def value(self, name: str) -> object:
        """The value of one `WORK_FIELDS` entry: an `OPTIONS` field, found in its table."""
        if name == "certificates":
            return self.certificates
        if name == "eab_hmac_key":  # the option is the key's file; the model holds the key
            return self.acme.eab_hmac_key
        option = OPTION_BY_FIELD[name]
        return getattr(getattr(self, option.table), option.key)


# --- what the work depends on ---------------------------------------------------------------

# The settings a certificate's order, files and deploy follow. A one-shot handed to a running
# sidecar is done with the sidecar's settings, so these must agree (`work_fingerprint`); the
# others (health listener, logging, placeholder) do not change what the work does. Named by
# their `OPTIONS` fields, the names the control socket carries (`Settings.value` finds each).
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
        if name == "certificates":
            text = repr(sorted(map(repr, settings.certificates)))
        else:
            text = repr(settings.value(name))
        digests[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return digests


def work_label(settings: Settings, name: str) -> str:
    """How to name one of `WORK_FIELDS` in a message."""
    if name == "eab_hmac_key":
        return ENV_EAB_KEY
    if name == "certificates":
        return settings.setting_labels.get("certificates", "--domain")
    return settings.label(name)
