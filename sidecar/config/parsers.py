"""Pure value parsers: one value as the user wrote it in, a typed value out.

The ``parse_*`` functions take text and raise ``ValueError`` (`sidecar.deploy` uses them too);
the ``as_*`` functions take a `Raw` (the value, and the spelling of the setting it came from)
and raise ``ConfigError`` naming that spelling. Nothing here reads the disk or asks the
process: the values only this host can check are in `host_lookups`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import shlex
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import urlsplit

from sidecar import domains
from sidecar.config.options import ENV_PREFIX, KEY_TYPES, RELOAD_MODES, ReloadMode, is_reload_mode
from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from ca_client.key_types import KeyType
    from sidecar.haproxy import HAProxyAddress

# Group-write, any "other" bit, and every execute bit: HAProxy only needs to read the file,
# and the key in it must not be writable by the group nor visible to anyone else.
_FORBIDDEN_MODE_BITS: Final = 0o137


@dataclass(frozen=True, slots=True)
class Raw:
    """One value as the user wrote it, and how to name the setting it came from (``label``:
    ``--flag``, ``CERT_SIDECAR_...`` or ``table.key in <file>``)."""

    value: object
    label: str
    source: Literal["flag", "env", "file", "default"]
    base_dir: Path | None = None  # for relative paths in the config file


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")]


def type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def as_string(raw: Raw) -> str:
    if not isinstance(raw.value, str):
        raise ConfigError(raw.label, f"must be a string, not {type_name(raw.value)}")
    text = raw.value.strip()
    if not text:
        raise ConfigError(raw.label, "must not be empty")
    return text


def as_optional_string(raw: Raw) -> str | None:
    return None if raw.value is None else as_string(raw)


def as_choice(raw: Raw, choices: Sequence[str]) -> str:
    text = as_string(raw).lower()
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


def as_bool(raw: Raw) -> bool | None:
    if raw.value is None or isinstance(raw.value, bool):
        return raw.value
    if isinstance(raw.value, str) and raw.source == "env":
        try:
            return parse_bool(raw.value)
        except ValueError as exc:
            raise ConfigError(raw.label, str(exc)) from None
    raise ConfigError(raw.label, f"must be true or false, not {type_name(raw.value)}")


def as_path(raw: Raw, *, local: bool = True) -> Path:
    text = as_string(raw)
    path = Path(text)
    if not local:
        if not path.is_absolute():
            raise ConfigError(raw.label, f"{text!r} must be an absolute path")
        return path
    if raw.base_dir is not None and not path.is_absolute():
        # A relative path in the config file is relative to the file, not to the cwd.
        path = raw.base_dir / path
    return Path(os.path.abspath(path))


def as_optional_path(raw: Raw) -> Path | None:
    return None if raw.value is None else as_path(raw)


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


def as_host_port(raw: Raw) -> tuple[str, int]:
    try:
        return parse_host_port(as_string(raw))
    except ValueError as exc:
        raise ConfigError(raw.label, str(exc)) from None


def as_optional_host_port(raw: Raw) -> tuple[str, int] | None:
    return None if raw.value is None else as_host_port(raw)


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


def as_directory_url(raw: Raw) -> str:
    text = as_string(raw)
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


def as_email(raw: Raw) -> str | None:
    if raw.value is None:
        return None
    text = as_string(raw).removeprefix("mailto:")
    local, at, host = text.rpartition("@")
    if not at or not local or any(c in local for c in ' ,<>"'):
        raise ConfigError(raw.label, f"{text!r} is not an email address")
    try:
        domains.normalize_dns_name(host)
    except ValueError:
        raise ConfigError(raw.label, f"{text!r} is not an email address") from None
    return text


def as_renew_at(raw: Raw) -> float:
    value = raw.value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(raw.label, f"{raw.value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(raw.label, f"must be a number, not {type_name(value)}")
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


def as_signal(raw: Raw) -> signal.Signals | None:
    if raw.value is None:
        return None
    text = as_string(raw) if not isinstance(raw.value, int) else str(raw.value)
    try:
        return parse_signal(text)
    except ValueError as exc:
        raise ConfigError(raw.label, str(exc)) from None


def as_key_type(raw: Raw) -> KeyType:
    text = as_choice(raw, KEY_TYPES)
    from ca_client.key_types import KeyType

    return KeyType(text)


def decode_eab(text: str, label: str) -> bytes:
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


_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def as_hook_env(raw: Raw) -> tuple[str, ...]:
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


def as_haproxy_sockets(raw: Raw) -> tuple[tuple[str, ...], tuple[HAProxyAddress, ...]]:
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


def as_reload_mode(raw: Raw) -> ReloadMode:
    text = as_choice(raw, RELOAD_MODES)
    assert is_reload_mode(text)  # as_choice refused anything else
    return text


def check_reload(
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
