"""Settings: one frozen, validated object built once from flags, environment, TOML file, defaults.

Precedence is flag > environment variable > config file > default (CONTRACT.md, "Settings").
Every default is in ``DEFAULTS``; every setting's flag, environment variable and TOML key is in
``OPTIONS``, which also builds the command-line flags, so the three spellings cannot drift.

Every problem raises ``ConfigError(setting, message)`` whose ``setting`` is the spelling the
user wrote (``--pem-mode``, ``CERT_SIDECAR_PEM_MODE`` or ``files.pem_mode in <file>``), so the
one-line message points at the place to fix.

``load_settings`` reads only the config file and the EAB key file. The checks that look at the
rest of the disk are separate functions so each command runs only those it needs:
``check_ca_bundle`` (``run`` skips it: it waits for the bundle to appear) and
``check_directories``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import grp
import ipaddress
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, TypeGuard, get_args
from urllib.parse import urlsplit

from sidecar import domains
from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from ca_client.key_types import KeyType
    from sidecar.haproxy import HAProxyAddress

__all__ = [
    "CHALLENGES",
    "DEFAULTS",
    "ENV_PREFIX",
    "KEY_TYPES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "OPTIONS",
    "RELOAD_MODES",
    "CertificateSpec",
    "ConfigError",
    "Option",
    "ReloadMode",
    "Settings",
    "add_setting_arguments",
    "check_ca_bundle",
    "check_directories",
    "default_reload_mode",
    "describe",
    "is_reload_mode",
    "load_settings",
    "locate_running_sidecar",
    "parse_bool",
    "parse_host_port",
    "parse_pem_mode",
    "parse_signal",
    "resolve_group",
    "split_command",
]

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
_DEFAULT_RELOAD_SIGNAL: Final = signal.SIGUSR2
# Group-write, any "other" bit, and every execute bit: HAProxy only needs to read the file,
# and the key in it must not be writable by the group nor visible to anyone else.
_FORBIDDEN_MODE_BITS: Final = 0o137


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
_OPTION_BY_FIELD: Final = {option.field: option for option in OPTIONS}
_TABLES: Final = ("acme", "files", "renewal", "haproxy", "service")
_TOML_KEYS: Final = {
    table: {option.key: option for option in OPTIONS if option.table == table} for table in _TABLES
}
_CERT_KEYS: Final = ("name", "domains", "key_type", "challenge")
_ENV_DOMAINS: Final = ENV_PREFIX + "DOMAINS"
_ENV_CONFIG: Final = ENV_PREFIX + "CONFIG"
_ENV_EAB_KEY: Final = ENV_PREFIX + "EAB_HMAC_KEY"
_KNOWN_ENV: Final = frozenset(
    {env for option in OPTIONS for env in option.envs} | {_ENV_DOMAINS, _ENV_CONFIG, _ENV_EAB_KEY}
)


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
    # TOML key), for errors found after loading, e.g. by check_ca_bundle.
    setting_labels: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )
    # The socket addresses as written, for describe() and messages.
    haproxy_socket_texts: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # Environment variables passed to child processes beyond ca_client.childenv's allow-list.
    hook_env: tuple[str, ...] = ()

    def label(self, name: str) -> str:
        """The spelling of setting ``name`` to use in a message."""
        return self.setting_labels.get(name) or f"{_OPTION_BY_FIELD[name].flag} (default)"

    def certificate(self, name: str) -> CertificateSpec | None:
        return next((spec for spec in self.certificates if spec.name == name), None)


# --- where a value comes from -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Raw:
    value: object
    label: str
    source: Literal["flag", "env", "file", "default"]
    base_dir: Path | None = None  # for relative paths in the config file


class _Sources:
    """Looks a setting up in flag > env > file > default order."""

    def __init__(
        self,
        args: argparse.Namespace,
        environ: Mapping[str, str],
        file_values: Mapping[str, _Raw],
    ) -> None:
        self._args = args
        self._environ = environ
        self._file = file_values
        self.labels: dict[str, str] = {}

    def env(self, name: str) -> str | None:
        # An empty variable counts as unset: compose files pass "${X:-}" for optional ones.
        value = self._environ.get(name)
        return value if value else None

    def flag(self, dest: str) -> Any:
        return getattr(self._args, dest, None)

    def get(self, name: str) -> _Raw:
        option = _OPTION_BY_FIELD[name]
        raw = self._lookup(option)
        if raw.source != "default":
            self.labels[name] = raw.label
        return raw

    def _lookup(self, option: Option) -> _Raw:
        value = self.flag(option.field)
        if value is not None:
            return _Raw(value, option.flag, "flag")
        for env in option.envs:
            text = self.env(env)
            if text is not None:
                if option.kind == "list":
                    return _Raw(_split_list(text), env, "env")
                return _Raw(text, env, "env")
        if option.field in self._file:
            return self._file[option.field]
        return _Raw(DEFAULTS[option.field], f"{option.flag} (default)", "default")


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")]


# --- value parsers --------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _string(raw: _Raw) -> str:
    if not isinstance(raw.value, str):
        raise ConfigError(raw.label, f"must be a string, not {_type_name(raw.value)}")
    text = raw.value.strip()
    if not text:
        raise ConfigError(raw.label, "must not be empty")
    return text


def _optional_string(raw: _Raw) -> str | None:
    return None if raw.value is None else _string(raw)


def _choice(raw: _Raw, choices: Sequence[str]) -> str:
    text = _string(raw).lower()
    if text not in choices:
        raise ConfigError(raw.label, f"{text!r} is not one of {', '.join(choices)}")
    return text


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def parse_bool(text: str) -> bool:
    """Environment-style boolean: 1/0, true/false, yes/no, on/off (any case)."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def _bool(raw: _Raw) -> bool | None:
    if raw.value is None or isinstance(raw.value, bool):
        return raw.value
    if isinstance(raw.value, str) and raw.source == "env":
        try:
            return parse_bool(raw.value)
        except ValueError as exc:
            raise ConfigError(raw.label, str(exc)) from None
    raise ConfigError(raw.label, f"must be true or false, not {_type_name(raw.value)}")


def _path(raw: _Raw, *, local: bool = True) -> Path:
    text = _string(raw)
    path = Path(text)
    if not local:
        if not path.is_absolute():
            raise ConfigError(raw.label, f"{text!r} must be an absolute path")
        return path
    if raw.base_dir is not None and not path.is_absolute():
        # A relative path in the config file is relative to the file, not to the cwd.
        path = raw.base_dir / path
    return Path(os.path.abspath(path))


def _optional_path(raw: _Raw) -> Path | None:
    return None if raw.value is None else _path(raw)


_HOSTNAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` with an IPv6 host in brackets (``[::]:80``); returns ``(host, port)``."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [IPv6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, like [::]:80")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} in {text!r} is not a host name or address")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} in {text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _host_port(raw: _Raw) -> tuple[str, int]:
    try:
        return parse_host_port(_string(raw))
    except ValueError as exc:
        raise ConfigError(raw.label, str(exc)) from None


def _optional_host_port(raw: _Raw) -> tuple[str, int] | None:
    return None if raw.value is None else _host_port(raw)


def parse_pem_mode(value: str | int) -> int:
    """An octal mode (``"0640"``, ``"640"``, ``"0o640"``, or a TOML ``0o640``) that is safe.

    Refused: group-write, any bit for others, execute bits, and anything beyond 0o777; the
    owner must be able to read (``status`` reads the file back).
    """
    if isinstance(value, bool):
        raise TypeError('must be an octal mode like "0640"')
    if isinstance(value, int):
        mode = value
    else:
        text = value.strip().lower().removeprefix("0o")
        if not text or not re.fullmatch(r"[0-7]+", text):
            raise ValueError(f"{value!r} is not an octal mode like 0640")
        mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not a file mode from 0000 to 0777 (write it in octal)")
    if mode & _FORBIDDEN_MODE_BITS:
        raise ValueError(
            f"mode {mode:04o} is refused: the PEM holds a private key, so no group-write, "
            "no access for others and no execute bits (use 0640 or 0600)"
        )
    if not mode & 0o400:
        raise ValueError(f"mode {mode:04o} is refused: the owner must be able to read it")
    return mode


def resolve_group(
    value: str | int,
    *,
    euid: int,
    groups: Sequence[int],
    lookup: Callable[[str], int],
) -> int:
    """A group name or number that the process may ``chown`` files to.

    A non-root process can only give a file to a group it belongs to (``groups``: getgroups()
    plus getegid()); root may use any group, named or numbered (in a container the HAProxy
    group often has no name on the sidecar's side).
    """
    if isinstance(value, bool):
        raise TypeError("must be a group name or number")
    if isinstance(value, int) or value.strip().isdigit():
        gid = int(value)
        name = str(gid)
    else:
        name = value.strip()
        if not name:
            raise ValueError("must not be empty")
        try:
            gid = lookup(name)
        except KeyError:
            raise ValueError(f"no group named {name!r}") from None
    if euid != 0 and gid not in groups:
        raise ValueError(
            f"this process (uid {euid}) is not in group {name!r}, so it cannot give files to it"
        )
    return gid


def _pem_group(raw: _Raw) -> int | None:
    if raw.value is None:
        return None
    if not isinstance(raw.value, str | int):
        raise ConfigError(raw.label, f"must be a group name or number, not {_type_name(raw.value)}")
    try:
        return resolve_group(
            raw.value,
            euid=os.geteuid(),
            groups=[*os.getgroups(), os.getegid()],
            lookup=lambda name: grp.getgrnam(name).gr_gid,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(raw.label, str(exc)) from None


def split_command(text: str) -> tuple[str, ...]:
    """A command line split like a shell would (no shell runs it); ValueError if it cannot be,
    or if nothing is left."""
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r}: {exc}") from None
    if not argv:
        raise ValueError("must not be empty")
    return argv


def _command(raw: _Raw) -> tuple[str, ...] | None:
    """A command line split like a shell would (no shell runs it); it must exist now."""
    if raw.value is None:
        return None
    text = _string(raw)
    try:
        argv = split_command(text)
    except ValueError as exc:
        raise ConfigError(raw.label, str(exc)) from None
    program = argv[0]
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise ConfigError(raw.label, f"{program} does not exist or is not executable")
    elif shutil.which(program) is None:
        raise ConfigError(raw.label, f"{program!r} is not found in PATH")
    return argv


def _directory_url(raw: _Raw) -> str:
    text = _string(raw)
    parts = urlsplit(text)
    # RFC 8555 §6.1: "Each ACME function is accomplished by the client sending a sequence of
    # HTTPS requests to the server"; plain http would also bypass the CA-bundle trust.
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(raw.label, f"{text!r} must be an https:// URL (RFC 8555 §6.1)")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(raw.label, f"{text!r} has an invalid port") from None
    return text


def _email(raw: _Raw) -> str | None:
    if raw.value is None:
        return None
    text = _string(raw).removeprefix("mailto:")
    local, at, host = text.rpartition("@")
    if not at or not local or any(c in local for c in ' ,<>"'):
        raise ConfigError(raw.label, f"{text!r} is not an email address")
    try:
        domains.normalize_dns_name(host)
    except ValueError:
        raise ConfigError(raw.label, f"{text!r} is not an email address") from None
    return text


def _renew_at(raw: _Raw) -> float:
    value = raw.value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(raw.label, f"{raw.value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(raw.label, f"must be a number, not {_type_name(value)}")
    if not 0.0 < value < 1.0:
        raise ConfigError(raw.label, f"{value} must be between 0 and 1 (a share of the lifetime)")
    return float(value)


def parse_signal(value: str | int) -> signal.Signals:
    """A signal by name (``SIGUSR2``, ``usr2``, any case) or number; ValueError otherwise."""
    text = str(value).strip()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        name = text.upper()
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise ValueError(f"{text!r} is not a signal name like SIGUSR2") from None


def _signal(raw: _Raw) -> signal.Signals | None:
    if raw.value is None:
        return None
    text = _string(raw) if not isinstance(raw.value, int) else str(raw.value)
    try:
        return parse_signal(text)
    except ValueError as exc:
        raise ConfigError(raw.label, str(exc)) from None


def _key_type(raw: _Raw) -> KeyType:
    text = _choice(raw, KEY_TYPES)
    from ca_client.key_types import KeyType

    return KeyType(text)


def _eab_key(sources: _Sources) -> tuple[bytes | None, str | None]:
    """The EAB HMAC key and where it came from; a secret, so never from a flag's value."""
    option = _OPTION_BY_FIELD["eab_hmac_key_file"]
    flag_file = sources.flag(option.field)
    env_key = sources.env(_ENV_EAB_KEY)
    env_file = sources.env(option.envs[0])
    if flag_file is not None:
        return _read_eab_file(_Raw(flag_file, option.flag, "flag")), option.flag
    if env_key is not None and env_file is not None:
        raise ConfigError(_ENV_EAB_KEY, f"set either {_ENV_EAB_KEY} or {option.envs[0]}, not both")
    if env_key is not None:
        return _decode_eab(env_key, _ENV_EAB_KEY), _ENV_EAB_KEY
    raw = sources.get(option.field)
    if raw.value is None:
        return None, None
    return _read_eab_file(raw), raw.label


def _read_eab_file(raw: _Raw) -> bytes:
    path = _path(raw)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(raw.label, f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(raw.label, f"{path} does not hold a base64url key") from None
    except OSError as exc:
        raise ConfigError(raw.label, f"cannot read {path}: {exc.strerror}") from None
    return _decode_eab(text, raw.label)


def _decode_eab(text: str, label: str) -> bytes:
    # RFC 8555 §7.3.4: the CA gives the MAC key base64url-encoded; padding is optional.
    # The message never quotes the value: it is a secret.
    compact = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", compact):
        raise ConfigError(label, "the EAB HMAC key is not base64url text")
    try:
        key = base64.urlsafe_b64decode(compact.rstrip("=") + "=" * (-len(compact.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ConfigError(label, "the EAB HMAC key is not valid base64url") from None
    if not key:
        raise ConfigError(label, "the EAB HMAC key is empty")
    return key


# --- the config file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FileConfig:
    path: Path
    values: dict[str, _Raw]
    certificates: list[tuple[int, dict[str, object]]] | None


def _config_path(sources: _Sources) -> tuple[Path, str] | None:
    flag = sources.flag("config")
    if flag is not None:
        return Path(os.path.abspath(flag)), "--config"
    env = sources.env(_ENV_CONFIG)
    if env is not None:
        return Path(os.path.abspath(env)), _ENV_CONFIG
    return None


def _read_config_file(path: Path, label: str) -> _FileConfig:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(label, f"{path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(label, f"{path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(label, f"cannot read {path}: {exc.strerror}") from None
    import tomllib  # only when there is a file: most containers configure by environment

    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(label, f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(label, f"{path} is not valid TOML: {exc}") from None
    where = f" in {path}"
    values: dict[str, _Raw] = {}
    certificates: list[tuple[int, dict[str, object]]] | None = None
    for table, content in document.items():
        if table == "certificates":
            if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
                raise ConfigError(
                    "certificates" + where, "must be an array of tables: [[certificates]]"
                )
            certificates = list(enumerate(content, start=1))
            continue
        if table not in _TOML_KEYS:
            raise ConfigError(
                table + where,
                f"unknown table or key {table!r} (known: {', '.join(_TABLES)}, certificates)",
            )
        if not isinstance(content, dict):
            raise ConfigError(table + where, f"must be a table: [{table}]")
        for key, value in content.items():
            option = _TOML_KEYS[table].get(key)
            if option is None:
                raise ConfigError(
                    f"{table}.{key}{where}",
                    f"unknown key {key!r} in [{table}] (known: {', '.join(_TOML_KEYS[table])})",
                )
            values[option.field] = _Raw(value, f"{option.toml}{where}", "file", path.parent)
    return _FileConfig(path, values, certificates)


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CertInput:
    names: list[str]
    label: str
    name: str | None = None
    key_type: _Raw | None = None
    challenge: _Raw | None = None


def _certificate_inputs(sources: _Sources, file: _FileConfig | None) -> list[_CertInput]:
    """Flags, else the environment, else the file: flags/env replace the file's list."""
    flags = sources.flag("domains")
    if flags is not None:
        return [_CertInput(_split_list(value), "--domain") for value in flags]
    env = sources.env(_ENV_DOMAINS)
    if env is not None:
        return [_CertInput(_split_list(part), _ENV_DOMAINS) for part in env.split(";")]
    if file is None or file.certificates is None:
        return []
    inputs = []
    for index, table in file.certificates:
        prefix = f"[[certificates]] #{index}"
        where = f" in {file.path}"
        for key in table:
            if key not in _CERT_KEYS:
                raise ConfigError(
                    f"{prefix} {key}{where}",
                    f"unknown key {key!r} (known: {', '.join(_CERT_KEYS)})",
                )
        names = table.get("domains")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{prefix} domains{where}", "must be a list of names")
        name = table.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{prefix} name{where}", "must be a string")
        key_type, challenge = (
            _Raw(table[key], f"{prefix} {key}{where}", "file") if key in table else None
            for key in ("key_type", "challenge")
        )
        inputs.append(
            _CertInput(list(names), f"{prefix} domains{where}", name, key_type, challenge)
        )
    return inputs


def _certificate(
    spec: _CertInput,
    default_key_type: KeyType,
    default_challenge: _Raw,
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
    key_type = _key_type(spec.key_type) if spec.key_type is not None else default_key_type
    challenge_raw = spec.challenge or default_challenge
    challenge = _choice(challenge_raw, CHALLENGES)
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


# --- load -----------------------------------------------------------------------------------


def _check_unknown_env(environ: Mapping[str, str]) -> None:
    """Refuse a variable that looks like a misspelt setting (CERT_SIDECAR_DOMIANS=...).

    Other unknown CERT_SIDECAR_* variables are left alone: test harnesses and scripts use the
    prefix for their own settings, and refusing them would break those set-ups.
    """
    known = sorted(name.removeprefix(ENV_PREFIX) for name in _KNOWN_ENV)
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in _KNOWN_ENV:
            continue
        import difflib  # only when an unknown variable is present

        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), known, n=1, cutoff=0.8)
        if close:
            raise ConfigError(name, f"unknown setting; did you mean {ENV_PREFIX}{close[0]}?")


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
    ``check_ca_bundle`` and ``check_directories``).
    """
    _check_unknown_env(environ)
    sources, file = _load_sources(args, environ)
    # The sections are parsed in this order, each setting in a fixed order within its section,
    # so that the first bad setting is always the one reported.
    ca = _ca_section(sources)
    acme = _acme_section(sources)
    storage = _storage_section(sources)
    haproxy, socket_texts = _haproxy_section(sources, storage["certs_dir"])
    runtime = _runtime_section(sources)
    cert_inputs = _certificate_inputs(sources, file)
    if cert_inputs:
        # Where the list came from, for check-config (a flag or the environment replaces the
        # file's [[certificates]] as a whole).
        first = cert_inputs[0].label
        if first not in ("--domain", _ENV_DOMAINS) and file is not None:
            first = f"[[certificates]] in {file.path}"
        sources.labels["certificates"] = first
    certificates = _certificate_specs(
        cert_inputs,
        acme["key_type"],
        sources.get("challenge"),
        acme["dns_hook"],
        require_certificates=require_certificates,
    )
    return Settings(
        **ca,
        **acme,
        **storage,
        **haproxy,
        **runtime,
        certificates=certificates,
        config_file=file.path if file else None,
        setting_labels=MappingProxyType(dict(sources.labels)),
        haproxy_socket_texts=socket_texts,
    )


def _load_sources(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[_Sources, _FileConfig | None]:
    """Flags, environment and (once its path is known from those two) the config file."""
    sources = _Sources(args, environ, {})
    located = _config_path(sources)
    file = _read_config_file(*located) if located else None
    if file is not None:
        sources = _Sources(args, environ, file.values)
    return sources, file


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
    sources = _Sources(args, environ, {})
    located = _config_path(sources)
    if located is not None:
        sources = _Sources(args, environ, _salvage(located[0]))
    return RunningSidecarAddress(
        health_listen=_host_port(sources.get("health_listen")),
        state_dir=_path(sources.get("state_dir")),
    )


_SALVAGED: Final = ("health_listen", "state_dir")
_TABLE_LINE: Final = re.compile(r"\s*\[\s*([A-Za-z_]+)\s*\]\s*(#.*)?")


def _salvage(path: Path) -> dict[str, _Raw]:
    """``_SALVAGED`` from a config file that does not load as a whole (see above)."""
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        # Line by line: each `key = value` line under its [table] header is TOML of its own.
        document, table = {}, None
        for line in text.splitlines():
            header = _TABLE_LINE.fullmatch(line)
            if header:
                table = header.group(1)
                continue
            if table is None:
                continue
            try:
                document.setdefault(table, {}).update(tomllib.loads(line))
            except tomllib.TOMLDecodeError:
                continue
    values = {}
    for name in _SALVAGED:
        option = _OPTION_BY_FIELD[name]
        table_values = document.get(option.table)
        if isinstance(table_values, dict) and option.key in table_values:
            values[name] = _Raw(
                table_values[option.key], f"{option.toml} in {path}", "file", path.parent
            )
    return values


class _CaSection(TypedDict):
    directory: str
    ca_bundle: Path
    system_trust: bool
    email: str | None
    eab_kid: str | None
    eab_hmac_key: bytes | None


def _ca_section(sources: _Sources) -> _CaSection:
    """Which CA, how it is trusted, and the account's contact and external binding."""
    get = sources.get
    directory = _directory_url(get("directory"))
    ca_bundle = _path(get("ca_bundle"))
    system_trust = bool(_bool(get("system_trust")))
    email = _email(get("email"))
    kid_raw = get("eab_kid")
    eab_kid = _optional_string(kid_raw)
    eab_key, eab_label = _eab_key(sources)
    if eab_kid is not None and eab_key is None:
        raise ConfigError(
            kid_raw.label,
            f"needs the HMAC key too: {_ENV_EAB_KEY} or --eab-hmac-key-file",
        )
    if eab_key is not None and eab_kid is None:
        raise ConfigError(eab_label or _ENV_EAB_KEY, "needs the key id too: --eab-kid")
    return _CaSection(
        directory=directory,
        ca_bundle=ca_bundle,
        system_trust=system_trust,
        email=email,
        eab_kid=eab_kid,
        eab_hmac_key=eab_key,
    )


class _AcmeSection(TypedDict):
    key_type: KeyType
    challenge: str
    http_listen: tuple[str, int]
    tls_alpn_listen: tuple[str, int]
    dns_hook: tuple[str, ...] | None


def _acme_section(sources: _Sources) -> _AcmeSection:
    """The defaults for each certificate's key and challenge, and the challenges' settings."""
    get = sources.get
    return _AcmeSection(
        key_type=_key_type(get("key_type")),
        challenge=_choice(get("challenge"), CHALLENGES),
        http_listen=_host_port(get("http_listen")),
        tls_alpn_listen=_host_port(get("tls_alpn_listen")),
        dns_hook=_command(get("dns_hook")),
    )


class _StorageSection(TypedDict):
    certs_dir: Path
    state_dir: Path
    pem_mode: int
    pem_group: int | None
    renew_at: float


def _storage_section(sources: _Sources) -> _StorageSection:
    """Where files go, with which mode and group, and when a certificate is due."""
    get = sources.get
    certs_dir = _path(get("certs_dir"))
    state_dir = _path(get("state_dir"))
    mode_raw = get("pem_mode")
    if not isinstance(mode_raw.value, str | int):
        raise ConfigError(
            mode_raw.label, f"must be an octal mode, not {_type_name(mode_raw.value)}"
        )
    try:
        pem_mode = parse_pem_mode(mode_raw.value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(mode_raw.label, str(exc)) from None
    return _StorageSection(
        certs_dir=certs_dir,
        state_dir=state_dir,
        pem_mode=pem_mode,
        pem_group=_pem_group(get("pem_group")),
        renew_at=_renew_at(get("renew_at")),
    )


class _HAProxySection(TypedDict):
    haproxy_sockets: tuple[HAProxyAddress, ...]
    haproxy_certs_dir: Path
    reload: ReloadMode
    reload_command: tuple[str, ...] | None
    reload_signal: signal.Signals | None
    reload_pid_file: Path | None
    verify_address: tuple[str, int] | None
    deploy_hook: tuple[str, ...] | None
    hook_env: tuple[str, ...]


def _haproxy_section(sources: _Sources, certs_dir: Path) -> tuple[_HAProxySection, tuple[str, ...]]:
    """How certificates reach HAProxy, and the socket addresses as written."""
    get = sources.get
    socket_texts, haproxy_sockets = _haproxy_sockets(get("haproxy_sockets"))
    certs_raw = get("haproxy_certs_dir")
    haproxy_certs_dir = certs_dir if certs_raw.value is None else _path(certs_raw, local=False)
    reload_raw = get("reload")
    reload = (
        _reload_mode(reload_raw)
        if reload_raw.value is not None
        else default_reload_mode(bool(haproxy_sockets))
    )
    reload_command = _command(get("reload_command"))
    signal_raw = get("reload_signal")
    reload_signal = _signal(signal_raw)
    reload_pid_file = _optional_path(get("reload_pid_file"))
    if reload_signal is not None and reload_pid_file is None:
        raise ConfigError(signal_raw.label, "needs --reload-pid-file to know whom to signal")
    if reload_pid_file is not None and reload_signal is None:
        reload_signal = _DEFAULT_RELOAD_SIGNAL
    _check_reload(reload, reload_raw.label, haproxy_sockets, reload_command, reload_pid_file)
    section = _HAProxySection(
        haproxy_sockets=haproxy_sockets,
        haproxy_certs_dir=haproxy_certs_dir,
        reload=reload,
        reload_command=reload_command,
        reload_signal=reload_signal,
        reload_pid_file=reload_pid_file,
        verify_address=_optional_host_port(get("verify_address")),
        deploy_hook=_command(get("deploy_hook")),
        hook_env=_hook_env(get("hook_env")),
    )
    return section, socket_texts


class _RuntimeSection(TypedDict):
    health_listen: tuple[str, int]
    placeholder: bool | None
    log_format: str
    log_level: str


def _runtime_section(sources: _Sources) -> _RuntimeSection:
    """The health listener, the placeholder switch and logging."""
    get = sources.get
    health_listen = _host_port(get("health_listen"))
    placeholder = _bool(get("placeholder"))
    format_raw = get("log_format")
    log_format = (
        _choice(format_raw, LOG_FORMATS)
        if format_raw.value is not None
        else ("console" if sys.stderr is not None and sys.stderr.isatty() else "json")
    )
    return _RuntimeSection(
        health_listen=health_listen,
        placeholder=placeholder,
        log_format=log_format,
        log_level=_choice(get("log_level"), LOG_LEVELS),
    )


def _certificate_specs(
    inputs: Sequence[_CertInput],
    key_type: KeyType,
    challenge_raw: _Raw,
    dns_hook: tuple[str, ...] | None,
    *,
    require_certificates: bool,
) -> tuple[CertificateSpec, ...]:
    """Every certificate, validated, then checked against the others and the dns-01 hook."""
    if not inputs and require_certificates:
        raise ConfigError(
            "--domain",
            f"no certificates configured: give --domain, {_ENV_DOMAINS} or [[certificates]]"
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


_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _hook_env(raw: _Raw) -> tuple[str, ...]:
    """Names of variables a child process may see; never one of the sidecar's own."""
    value = raw.value
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(raw.label, "must be a list of environment variable names")
    names = tuple(v.strip() for v in value)
    for name in names:
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(raw.label, f"{name!r} is not an environment variable name")
        # The sidecar's settings are for the sidecar; one of them is the EAB HMAC key.
        if name.upper().startswith(ENV_PREFIX):
            raise ConfigError(raw.label, f"{name}: the sidecar's own settings never reach a hook")
    return tuple(dict.fromkeys(names))


def _haproxy_sockets(raw: _Raw) -> tuple[tuple[str, ...], tuple[HAProxyAddress, ...]]:
    value = raw.value
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(raw.label, "must be a list of socket addresses")
    texts = tuple(v.strip() for v in value)
    if not texts:
        return (), ()
    # Imported only when sockets are configured: haproxy.py is network code.
    from sidecar.haproxy import parse_haproxy_address

    addresses = []
    for text in texts:
        if not text:
            raise ConfigError(raw.label, "has an empty socket address")
        try:
            addresses.append(parse_haproxy_address(text))
        except ValueError as exc:
            raise ConfigError(raw.label, str(exc)) from None
    if len(set(texts)) != len(texts):
        raise ConfigError(raw.label, "names the same socket twice")
    return texts, tuple(addresses)


def is_reload_mode(text: str) -> TypeGuard[ReloadMode]:
    return text in RELOAD_MODES


def default_reload_mode(has_sockets: bool) -> ReloadMode:
    """The contract's default: the runtime API when a socket is configured, else nothing."""
    return "runtime-api" if has_sockets else "none"


def _reload_mode(raw: _Raw) -> ReloadMode:
    text = _choice(raw, RELOAD_MODES)
    assert is_reload_mode(text)  # _choice refused anything else
    return text


def _check_reload(
    reload: ReloadMode,
    label: str,
    sockets: tuple[HAProxyAddress, ...],
    command: tuple[str, ...] | None,
    pid_file: Path | None,
) -> None:
    if reload == "runtime-api" and not sockets:
        raise ConfigError(label, "runtime-api needs --haproxy-socket")
    if reload == "master-reload" and not any(socket.master for socket in sockets):
        raise ConfigError(label, "master-reload needs a master CLI socket: master:unix:/path")
    if reload == "signal" and pid_file is None:
        raise ConfigError(label, "signal needs --reload-pid-file")
    if reload == "command" and command is None:
        raise ConfigError(label, "command needs --reload-command")


# --- checks of the disk, run by the commands that need them -----------------------------------


def check_ca_bundle(settings: Settings) -> None:
    """The bundle exists, is readable and holds at least one PEM certificate.

    ``run`` does not call this: it waits for the bundle (CONTRACT.md, "Commands").
    """
    from sidecar.trust import load_ca_bundle

    load_ca_bundle(settings.ca_bundle, setting=settings.label("ca_bundle"))


def check_directories(settings: Settings) -> None:
    """``certs_dir`` and ``state_dir`` are writable directories, or can be created.

    The check and its one-line message (path, owner, mode, the fix) live in ``preflight``.
    """
    from sidecar import preflight

    preflight.check_directories(settings)


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
        return _ENV_EAB_KEY
    if name == "certificates":
        return settings.setting_labels.get("certificates", "--domain")
    return settings.label(name)


# --- describe ---------------------------------------------------------------------------------


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
        derived = _DEFAULT_HELP.get(field_name)
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
    for table in _TABLES:
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


# --- flags --------------------------------------------------------------------------------------


# Help text for the defaults that load_settings resolves from other settings.
_DEFAULT_HELP: Final = {
    "haproxy_certs_dir": "--certs-dir",
    "reload": "runtime-api with a socket, else none",
    "placeholder": "on for run",
    "log_format": "json unless stderr is a terminal",
    "pem_group": "the process's group",
}


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every setting's flag, grouped like the TOML tables; none has an argparse default.

    Defaults are applied by ``load_settings`` (so a flag left out can fall back to the
    environment and the file); the help shows them from ``DEFAULTS``.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML config file (env {_ENV_CONFIG})",
    )
    titles = {
        "acme": "ACME",
        "files": "files",
        "renewal": "renewal",
        "haproxy": "HAProxy",
        "service": "service",
    }
    groups = {table: parser.add_argument_group(titles[table] + " settings") for table in _TABLES}
    groups["acme"].add_argument(
        "--domain",
        dest="domains",
        action="append",
        metavar="NAMES",
        default=None,
        help=f"one certificate, its names comma-separated; repeatable (env {_ENV_DOMAINS},"
        " certificates separated by ';')",
    )
    for option in OPTIONS:
        default = _DEFAULT_HELP.get(option.field, DEFAULTS[option.field])
        shown = "" if default in (None, (), False) else f"; default {default}"
        text = f"{option.help} (env {option.envs[0]}, file {option.toml}{shown})"
        text = text.replace("%", "%%")
        group = groups[option.table]
        if option.kind == "bool":
            group.add_argument(
                option.flag,
                dest=option.field,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        elif option.kind == "list":
            group.add_argument(
                option.flag,
                dest=option.field,
                action="append",
                metavar=option.metavar,
                default=None,
                help=text,
            )
        else:
            group.add_argument(
                option.flag,
                dest=option.field,
                metavar=option.metavar,
                default=None,
                help=text,
            )
