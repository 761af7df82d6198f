"""Start-up checks, and the one table of which command runs which (`STARTUP_CHECKS`).

Each check raises ``ConfigError`` (exit 2, one line naming the setting as the user wrote it)
before any network I/O: the CA bundle parses (`check_ca_bundle`), cert-sidecar can write its
directories (`check_directories`) and use HAProxy's unix sockets (`check_sockets`). `cli` runs
a command's row once, before the command starts; `wiring.rebuild` runs the ``reload`` row before
`run` takes a new config file. This module imports the settings model; ``sidecar.config`` never
imports it back.

Why the writability checks name the fix: a non-root sidecar in a compose stack meets volumes
that something else made. OpenCHAMI's quickstart had acme.sh (root) write the ``haproxy-certs``
volume, and HAProxy (uid 65532 there) creates its runtime socket with its own owner and mode.
The plain ``Permission denied`` of a later write names neither the owner nor the way out, and
it arrives after the sidecar looked healthy. These checks run before anything is written and
fail with one line: which path, its owner (uid:gid) and mode, who we are, and the command that
fixes it.

Root passes every check (root ignores modes), which is also what the kernel will do for it.
A socket that does not exist yet is not a problem: HAProxy may simply not have started.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from sidecar.config import Settings
from sidecar.errors import ConfigError

__all__ = [
    "FIX_GUIDE",
    "STARTUP_CHECKS",
    "Check",
    "Identity",
    "check_ca_bundle",
    "check_directories",
    "check_sockets",
    "directory_problem",
    "run_startup_checks",
    "socket_problem",
]

Check = Literal["ca_bundle", "directories", "sockets"]

# Which command runs which start-up check, in this order, before it does anything else. `run`
# does not check the CA bundle: it waits for the bundle to appear (CONTRACT.md, "Commands").
# ``reload`` is `run` taking a changed config file (`wiring.rebuild`). `status` and
# `healthcheck` only read: they must answer even where nothing could be written.
STARTUP_CHECKS: Final[Mapping[str, tuple[Check, ...]]] = MappingProxyType(
    {
        "run": ("directories", "sockets"),
        "issue": ("ca_bundle", "directories", "sockets"),
        "renew": ("ca_bundle", "directories", "sockets"),
        "revoke": ("ca_bundle", "directories", "sockets"),
        "check-config": ("ca_bundle", "directories"),
        "status": (),
        "healthcheck": (),
        "reload": ("directories", "sockets"),
    }
)

# Where the compose recipe for the one-time fix is written down (OpenCHAMI's pre-existing,
# root-owned volume is the common case).
FIX_GUIDE = "docker/openchami/README.md"

# Modes the fix commands give. The certs directory: HAProxy's group must list it (HAProxy
# stops with "unable to scan directory" otherwise) and the setgid bit keeps new files in that
# group. The socket's directory: HAProxy's group creates its socket there.
CERTS_DIR_MODE = 0o2750
SOCKET_DIR_MODE = 0o2770
STATE_DIR_MODE = 0o0750


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the checks are for: the process's effective ids, and the group files should get."""

    uid: int
    gid: int
    share_gid: int  # the group HAProxy reads through (pem_group, or our own group)

    @classmethod
    def of_process(cls, settings: Settings) -> Identity:
        gid = os.getegid()
        share = settings.files.pem_group if settings.files.pem_group is not None else gid
        return cls(uid=os.geteuid(), gid=gid, share_gid=share)


def _owner_mode(path: Path) -> str:
    try:
        info = path.lstat()
    except OSError as error:
        return f"cannot be inspected: {error.strerror}"
    return f"owner {info.st_uid}:{info.st_gid} mode {stat.S_IMODE(info.st_mode):04o}"


def _nearest_existing(path: Path) -> Path:
    target = path
    while not os.path.lexists(target) and target.parent != target:
        target = target.parent
    return target


def _read_only_mount(path: Path) -> bool:
    """Whether ``path`` is on a file system mounted read-only (``volume:/dir:ro``)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False  # the checks below name what is wrong with it


def _probe(directory: Path) -> OSError | None:
    # os.access answers for the mode bits; a read-only mount or an ACL only shows on a real
    # write, so a file is made and removed as well.
    # Imported here, not with the module: `cli` imports this module for every command, and
    # tempfile (with random) is start-up time that `healthcheck` and `status` never use.
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".cert-sidecar-preflight.", dir=directory)
    except OSError as error:
        return error
    os.close(fd)
    os.unlink(probe)
    return None


def directory_problem(path: Path, mode: int, who: Identity) -> str | None:
    """Why ``path`` (a directory cert-sidecar writes into) is unusable, or None.

    ``mode`` is what the fix command sets. A missing directory is fine when it can be made.
    """
    if path.is_symlink() and not path.exists():
        return f"{path} is a dangling symbolic link"
    target = _nearest_existing(path)
    if not target.is_dir():
        if target == path:
            return f"{path} is not a directory"
        return f"{path} cannot be made: {target} is not a directory"
    what = str(path) if target == path else f"{path} does not exist and {target}"
    if _read_only_mount(target):
        # Before os.access, which says "not writable" here too, and would send the operator
        # to chown a directory whose owner and mode are already right.
        return (
            f"{what} is not writable: it is on a read-only mount (remove `:ro` from the "
            "volume or bind mount)"
        )
    if os.access(target, os.W_OK | os.X_OK):
        error = _probe(target)
        if error is None:
            return None
        if error.errno not in (errno.EACCES, errno.EPERM):
            return f"{what} is not writable: {error.strerror} ({_owner_mode(target)})"
    made = "" if target == path else f"mkdir -p {path} && "
    return (
        f"{what} is not writable by uid {who.uid} gid {who.gid} ({_owner_mode(target)}); "
        f"fix once as root: {made}chown {who.uid}:{who.share_gid} {path} && "
        f"chmod {mode:04o} {path}, or see {FIX_GUIDE}"
    )


def socket_problem(path: Path, who: Identity) -> str | None:
    """Why cert-sidecar could not connect to the unix socket at ``path``, or None.

    Connecting needs search permission on every directory on the way and write permission on
    the socket file, which HAProxy creates with its own uid:gid and the mode of its
    ``stats socket`` line.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return None  # HAProxy has not made it (yet): the deployer waits for it
    except PermissionError:
        blocked = next(
            (parent for parent in reversed(path.parents) if not os.access(parent, os.X_OK)),
            path.parent,
        )
        return (
            f"{path} cannot be reached by uid {who.uid} gid {who.gid}: {blocked} is not "
            f"searchable ({_owner_mode(blocked)}); fix once as root: "
            f"chown {who.uid}:{who.share_gid} {blocked} && chmod {SOCKET_DIR_MODE:04o} "
            f"{blocked}, or see {FIX_GUIDE}"
        )
    except OSError as error:
        if error.errno in (errno.ENOTDIR, errno.ELOOP):
            return f"{path} is not a socket path ({error.strerror})"
        raise
    if not stat.S_ISSOCK(info.st_mode):
        return f"{path} is not a unix socket ({_owner_mode(path)})"
    if os.access(path, os.W_OK):
        return None
    return (
        f"{path} is not writable by uid {who.uid} gid {who.gid} ({_owner_mode(path)}), so "
        f"cert-sidecar cannot use HAProxy's runtime API; give the socket to group "
        f"{who.gid} in haproxy.cfg (stats socket {path} mode 660 level admin, with HAProxy "
        f"running in group {who.gid}), or see {FIX_GUIDE}"
    )


def check_directories(settings: Settings) -> None:
    """Raise ConfigError (exit 2, one line) when certs_dir or state_dir is unusable."""
    who = Identity.of_process(settings)
    for name, path, mode in (
        ("certs_dir", settings.files.certs_dir, CERTS_DIR_MODE),
        ("state_dir", settings.files.state_dir, STATE_DIR_MODE),
    ):
        problem = directory_problem(path, mode, who)
        if problem is not None:
            raise ConfigError(settings.label(name), problem)


def check_sockets(settings: Settings) -> None:
    """Raise ConfigError (exit 2, one line) when a HAProxy unix socket exists but is unusable."""
    who = Identity.of_process(settings)
    for address in settings.haproxy.sockets:
        if address.kind != "unix" or address.path is None:
            continue
        problem = socket_problem(Path(address.path), who)
        if problem is not None:
            raise ConfigError(settings.label("haproxy_sockets"), problem)


def check_ca_bundle(settings: Settings) -> None:
    """The bundle exists, is readable and holds at least one certificate OpenSSL parses."""
    # Imported here: ssl costs start-up time, and `healthcheck` (run every few seconds in the
    # container) never checks the bundle.
    from sidecar.trust import load_ca_bundle

    load_ca_bundle(settings.acme.ca_bundle, setting=settings.label("ca_bundle"))


_CHECKS: Final[Mapping[Check, Callable[[Settings], None]]] = MappingProxyType(
    {
        "ca_bundle": check_ca_bundle,
        "directories": check_directories,
        "sockets": check_sockets,
    }
)


def run_startup_checks(command: str, settings: Settings) -> None:
    """Run ``command``'s row of `STARTUP_CHECKS`; the first problem raises ``ConfigError``."""
    for name in STARTUP_CHECKS[command]:
        _CHECKS[name](settings)
