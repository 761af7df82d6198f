"""The one table that spells every setting three ways, and every default.

Each `Option` is a setting's flag, environment variable and TOML key (``table.key``); the
flags (`sidecar.config.flags`), the environment lookup and the TOML reader (`sources`) and
``check-config`` (`render`) are all made from `OPTIONS`, so the three spellings cannot drift.
`DEFAULTS` holds every default; the few that depend on other settings are resolved by the
loader and described for ``--help`` in `DEFAULT_HELP`. The names of the choices (key types,
challenges, reload modes, log formats and levels) live here too: the help text lists them.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, TypeGuard, get_args

ENV_PREFIX: Final = "CERT_SIDECAR_"
KEY_TYPES: Final = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
CHALLENGES: Final = ("http-01", "tls-alpn-01", "dns-01")
# How HAProxy loads a new certificate. The one definition: the deployer takes this type.
ReloadMode = Literal["runtime-api", "master-reload", "signal", "command", "none"]
RELOAD_MODES: Final[tuple[ReloadMode, ...]] = get_args(ReloadMode)
LOG_FORMATS: Final = ("json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

# The one table of defaults. ``None`` means "unset"; three defaults depend on other settings
# and are resolved in ``load_settings``: haproxy_certs_dir (= certs_dir), reload
# ("runtime-api" with a socket, else "none") and log_format (json unless stderr is a terminal).
DEFAULTS: Final[Mapping[str, object]] = MappingProxyType(
    {
        "directory": "https://step-ca:9000/acme/acme/directory",
        "ca_bundle": "/root_ca/root_ca.crt",
        "system_trust": False,
        "email": None,
        "eab_kid": None,
        "eab_hmac_key_file": None,
        "key_type": "ec-p256",
        "challenge": "http-01",
        "http_listen": "0.0.0.0:80",
        "tls_alpn_listen": "0.0.0.0:443",
        "dns_hook": None,
        "certs_dir": "/etc/haproxy/certs",
        "state_dir": "/var/lib/cert-sidecar",
        "pem_mode": "0640",
        "pem_group": None,
        "renew_at": 0.66,
        "haproxy_sockets": (),
        "haproxy_certs_dir": None,
        "reload": None,
        "reload_command": None,
        "reload_signal": None,
        "reload_pid_file": None,
        "verify_address": None,
        "deploy_hook": None,
        "hook_env": (),
        "health_listen": "127.0.0.1:9102",
        "placeholder": None,
        "log_format": None,
        "log_level": "info",
    }
)


# Signal sent when a pid file is configured without a signal: HAProxy's master-worker reload.
DEFAULT_RELOAD_SIGNAL: Final = signal.SIGUSR2


@dataclass(frozen=True, slots=True)
class Option:
    """One setting's three spellings, and how the flag takes its value."""

    field: str
    table: str
    key: str
    metavar: str | None
    help: str
    kind: Literal["value", "bool", "list"] = "value"
    flag_name: str | None = None  # default: --<field with dashes>
    env_names: tuple[str, ...] = ()  # default: CERT_SIDECAR_<FIELD>

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.field.replace("_", "-")

    @property
    def envs(self) -> tuple[str, ...]:
        return self.env_names or (ENV_PREFIX + self.field.upper(),)

    @property
    def toml(self) -> str:
        return f"{self.table}.{self.key}"


OPTIONS: Final[tuple[Option, ...]] = (
    Option("directory", "acme", "directory", "URL", "ACME directory URL"),
    Option("ca_bundle", "acme", "ca_bundle", "FILE", "PEM bundle trusted for the CA's TLS"),
    Option(
        "system_trust",
        "acme",
        "system_trust",
        None,
        "also trust the system store (a public ACME CA)",
        kind="bool",
    ),
    Option("email", "acme", "email", "ADDR", "account contact address"),
    Option("eab_kid", "acme", "eab_kid", "KID", "External Account Binding key id"),
    Option(
        "eab_hmac_key_file",
        "acme",
        "eab_hmac_key_file",
        "FILE",
        "file holding the base64url EAB HMAC key; the key itself may be given in env"
        " CERT_SIDECAR_EAB_HMAC_KEY, never as a flag",
    ),
    Option("key_type", "acme", "key_type", "TYPE", "certificate key type: " + ", ".join(KEY_TYPES)),
    Option("challenge", "acme", "challenge", "TYPE", "challenge type: " + ", ".join(CHALLENGES)),
    Option("http_listen", "acme", "http_listen", "HOST:PORT", "http-01 responder address"),
    Option(
        "tls_alpn_listen", "acme", "tls_alpn_listen", "HOST:PORT", "tls-alpn-01 responder address"
    ),
    Option(
        "dns_hook",
        "acme",
        "dns_hook",
        "CMD",
        "dns-01 hook, run as CMD present|cleanup <record.> <value>; the same in its environment"
        " as ACME_DNS_ACTION, ACME_DNS_RECORD, ACME_DNS_VALUE (a value may start with '-')",
    ),
    Option("certs_dir", "files", "certs_dir", "DIR", "where <name>.pem files are written"),
    Option("state_dir", "files", "state_dir", "DIR", "account, keys and metadata"),
    Option("pem_mode", "files", "pem_mode", "MODE", "octal mode of the PEM files"),
    Option("pem_group", "files", "pem_group", "GROUP", "group (name or number) of the PEM files"),
    Option(
        "renew_at",
        "renewal",
        "renew_at",
        "FRACTION",
        "renew once this share of the lifetime has passed",
    ),
    Option(
        "haproxy_sockets",
        "haproxy",
        "sockets",
        "ADDR",
        "HAProxy runtime API: unix:/path, tcp:host:port, master:unix:/path (repeatable)",
        kind="list",
        flag_name="--haproxy-socket",
        env_names=(ENV_PREFIX + "HAPROXY_SOCKET", ENV_PREFIX + "HAPROXY_SOCKETS"),
    ),
    Option(
        "haproxy_certs_dir",
        "haproxy",
        "certs_dir",
        "DIR",
        "the certs directory as HAProxy sees it",
    ),
    Option(
        "reload",
        "haproxy",
        "reload",
        "MODE",
        "how HAProxy loads a new certificate: " + ", ".join(RELOAD_MODES),
    ),
    Option("reload_command", "haproxy", "reload_command", "CMD", "command for --reload command"),
    Option("reload_signal", "haproxy", "reload_signal", "SIG", "signal for --reload signal"),
    Option("reload_pid_file", "haproxy", "reload_pid_file", "FILE", "pid file of HAProxy"),
    Option(
        "verify_address",
        "haproxy",
        "verify_address",
        "HOST:PORT",
        "after a deploy, check the served certificate here",
    ),
    Option("deploy_hook", "haproxy", "deploy_hook", "CMD", "command run after each deploy"),
    Option(
        "hook_env",
        "service",
        "hook_env",
        "NAME",
        "environment variable passed to the dns-01 hook, the deploy hook and the reload command"
        " beyond PATH, HOME, locale, TZ, TMPDIR, USER (repeatable)",
        kind="list",
    ),
    Option(
        "health_listen",
        "service",
        "health_listen",
        "HOST:PORT",
        "/healthz, /readyz, /metrics address",
    ),
    Option(
        "placeholder",
        "service",
        "placeholder",
        None,
        "write a self-signed placeholder until the first real certificate",
        kind="bool",
    ),
    Option("log_format", "service", "log_format", "FORMAT", "json or console"),
    Option("log_level", "service", "log_level", "LEVEL", ", ".join(LOG_LEVELS)),
)
OPTION_BY_FIELD: Final = {option.field: option for option in OPTIONS}
TABLES: Final = ("acme", "files", "renewal", "haproxy", "service")
TOML_KEYS: Final = {
    table: {option.key: option for option in OPTIONS if option.table == table} for table in TABLES
}
CERT_KEYS: Final = ("name", "domains", "key_type", "challenge")
ENV_DOMAINS: Final = ENV_PREFIX + "DOMAINS"
ENV_CONFIG: Final = ENV_PREFIX + "CONFIG"
ENV_EAB_KEY: Final = ENV_PREFIX + "EAB_HMAC_KEY"
KNOWN_ENV: Final = frozenset(
    {env for option in OPTIONS for env in option.envs} | {ENV_DOMAINS, ENV_CONFIG, ENV_EAB_KEY}
)


def is_reload_mode(text: str) -> TypeGuard[ReloadMode]:
    return text in RELOAD_MODES


def default_reload_mode(has_sockets: bool) -> ReloadMode:
    """The contract's default: the runtime API when a socket is configured, else nothing."""
    return "runtime-api" if has_sockets else "none"


# Help text for the defaults that load_settings resolves from other settings.
DEFAULT_HELP: Final = {
    "haproxy_certs_dir": "--certs-dir",
    "reload": "runtime-api with a socket, else none",
    "placeholder": "on for run",
    "log_format": "json unless stderr is a terminal",
    "pem_group": "the process's group",
}
