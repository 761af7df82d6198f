"""The values only this host can check: a command that must exist now, a group the process
may give files to, and the EAB key read from its file.

Kept apart from the pure parsers (`parsers`) because each asks the system (PATH, the group
database and the process's groups, the disk); each still raises ``ConfigError`` naming the
setting as the user wrote it.
"""

from __future__ import annotations

import grp
import os
import shutil

from sidecar.config.parsers import (
    Raw,
    as_path,
    as_string,
    decode_eab,
    resolve_group,
    split_command,
    type_name,
)
from sidecar.errors import ConfigError


def as_pem_group(raw: Raw) -> int | None:
    if raw.value is None:
        return None
    if not isinstance(raw.value, str | int):
        raise ConfigError(raw.label, f"must be a group name or number, not {type_name(raw.value)}")
    try:
        return resolve_group(
            raw.value,
            euid=os.geteuid(),
            groups=[*os.getgroups(), os.getegid()],
            lookup=lambda name: grp.getgrnam(name).gr_gid,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(raw.label, str(exc)) from None


def as_command(raw: Raw) -> tuple[str, ...] | None:
    """A command line split like a shell would (no shell runs it); it must exist now."""
    if raw.value is None:
        return None
    text = as_string(raw)
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


def read_eab_file(raw: Raw) -> bytes:
    path = as_path(raw)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(raw.label, f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(raw.label, f"{path} does not hold a base64url key") from None
    except OSError as exc:
        raise ConfigError(raw.label, f"cannot read {path}: {exc.strerror}") from None
    return decode_eab(text, raw.label)
