"""Loopback address leases, so that tests binding ports 80/443 can run side by side.

ACME CAs validate http-01 on port 80 and tls-alpn-01 on port 443 of the identifier's address.
Two test processes on one machine (several engineers, or pytest-xdist) cannot both bind
``127.0.0.1:80``, but Linux routes all of 127.0.0.0/8 to ``lo``, so each test takes its own
address ``127.0.1.N`` (N in 1..60) and DNS names that resolve to it through ``/etc/hosts``:
``hN.cert-sidecar.test`` and ``a.``/``b.``/``c.hN.cert-sidecar.test``.

A lease is an exclusive ``flock`` on ``/tmp/cert-sidecar-loopback/N.lock``. flock locks belong
to the open file description, so they exclude other processes *and* a second lease taken by the
same process; the kernel drops them when the holder dies, so a crashed run never leaks a lease.

``/etc/hosts`` gets one managed block (between BEGIN/END marker lines) holding every lease's
names plus the bench names (``bN.bench.cert-sidecar.test`` on 127.0.0.1); it is written once,
under a lock, atomically, leaving the rest of the file untouched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "BENCH_NAME_COUNT",
    "HOSTS_BLOCK_BEGIN",
    "HOSTS_BLOCK_END",
    "LEASE_COUNT",
    "LoopbackLease",
    "ensure_hosts_block",
    "hosts_block_names",
    "lease_loopback",
    "lease_names",
    "loopback",
    "loopback_factory",
    "loopback_hosts",
    "render_hosts_block",
    "replace_hosts_block",
]

LEASE_COUNT = 60
BENCH_NAME_COUNT = 200
DOMAIN = "cert-sidecar.test"
BENCH_DOMAIN = f"bench.{DOMAIN}"

HOSTS_BLOCK_BEGIN = "# BEGIN cert-sidecar test names (managed by tests/peers/loopback.py)"
HOSTS_BLOCK_END = "# END cert-sidecar test names"

LOCK_DIR = Path(os.environ.get("CERT_SIDECAR_LEASE_DIR", "/tmp/cert-sidecar-loopback"))
HOSTS_PATH = Path(os.environ.get("CERT_SIDECAR_HOSTS_FILE", "/etc/hosts"))


@dataclass(frozen=True)
class LoopbackLease:
    """One leased loopback address and the four names that resolve to it."""

    index: int
    address: str
    names: tuple[str, str, str, str]

    @property
    def name(self) -> str:
        return self.names[0]


# ---------------------------------------------------------------------------------------------
# Pure: names and the hosts block


def lease_address(index: int) -> str:
    return f"127.0.1.{index}"


def lease_names(index: int) -> tuple[str, str, str, str]:
    host = f"h{index}.{DOMAIN}"
    return (host, f"a.{host}", f"b.{host}", f"c.{host}")


def bench_names(count: int = BENCH_NAME_COUNT) -> tuple[str, ...]:
    return tuple(f"b{i}.{BENCH_DOMAIN}" for i in range(1, count + 1))


def render_hosts_block() -> str:
    """The managed block, marker lines included, ending in a newline."""
    lines = [HOSTS_BLOCK_BEGIN]
    lines += [f"{lease_address(i)} {' '.join(lease_names(i))}" for i in range(1, LEASE_COUNT + 1)]
    # One bench name per line: some resolvers cap the number of aliases on a line.
    lines += [f"127.0.0.1 {name}" for name in bench_names()]
    lines.append(HOSTS_BLOCK_END)
    return "\n".join(lines) + "\n"


def replace_hosts_block(text: str, block: str) -> str:
    """Return ``text`` with its managed block replaced by ``block`` (appended if absent).

    Lines outside the markers are kept byte for byte; an unterminated block (BEGIN without END,
    e.g. from a hand edit) is replaced up to the end of the file rather than duplicated.
    """
    lines = text.splitlines(keepends=True)
    kept_before: list[str] = []
    kept_after: list[str] = []
    state = "before"
    for line in lines:
        stripped = line.rstrip("\r\n")
        if state == "before":
            if stripped == HOSTS_BLOCK_BEGIN:
                state = "inside"
            else:
                kept_before.append(line)
        elif state == "inside":
            if stripped == HOSTS_BLOCK_END:
                state = "after"
        else:
            kept_after.append(line)
    head = "".join(kept_before)
    if head and not head.endswith("\n"):
        head += "\n"
    return head + block + "".join(kept_after)


# ---------------------------------------------------------------------------------------------
# I/O: /etc/hosts and leases

_hosts_checked = False


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        try:
            os.replace(tmp_name, path)
        except OSError as exc:
            # Docker/podman bind-mount /etc/hosts into containers, and a mount point cannot be
            # renamed over (EBUSY). The lock still serialises writers; readers may see a short
            # window, which is the best that can be done there.
            if exc.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            path.write_text(text, encoding="utf-8")
            os.unlink(tmp_name)
            return
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def ensure_hosts_block() -> None:
    """Make /etc/hosts hold the managed block (idempotent; a no-op once done in a process)."""
    global _hosts_checked  # noqa: PLW0603 - a per-process memo of a machine-wide fact
    if _hosts_checked:
        return
    block = render_hosts_block()
    with _flock(LOCK_DIR / "hosts.lock"):
        current = HOSTS_PATH.read_text(encoding="utf-8") if HOSTS_PATH.exists() else ""
        wanted = replace_hosts_block(current, block)
        if wanted != current:
            try:
                _write_atomically(HOSTS_PATH, wanted)
            except PermissionError as exc:
                raise RuntimeError(
                    f"cannot update {HOSTS_PATH} with the test names (run the tests as root): {exc}"
                ) from exc
    _hosts_checked = True


def hosts_block_names(count: int = BENCH_NAME_COUNT) -> tuple[str, ...]:
    """Up to 200 names resolving to 127.0.0.1 (``bN.bench.cert-sidecar.test``), for benches."""
    if not 0 <= count <= BENCH_NAME_COUNT:
        raise ValueError(f"count must be within 0..{BENCH_NAME_COUNT}, got {count}")
    ensure_hosts_block()
    return bench_names(count)


def _port_usable(address: str, port: int) -> bool:
    """False only when ``address:port`` is taken (by a stray process from an earlier run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except PermissionError:
            return True  # not root: ports below 1024 are not ours to test anyway
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


@contextlib.contextmanager
def lease_loopback() -> Iterator[LoopbackLease]:
    """Hold an exclusive lease on a free 127.0.1.N for the duration of the ``with`` block."""
    ensure_hosts_block()
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for index in range(1, LEASE_COUNT + 1):
        fd = os.open(LOCK_DIR / f"{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            address = lease_address(index)
            # Port 0 proves the address is routable here; 80/443 that nothing stale holds them.
            if not all(_port_usable(address, port) for port in (0, 80, 443)):
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield LoopbackLease(index=index, address=address, names=lease_names(index))
            return
        finally:
            os.close(fd)  # releases the flock
    raise RuntimeError(
        f"no free loopback lease among 127.0.1.1..{LEASE_COUNT} (locks in {LOCK_DIR}); "
        "too many concurrent test runs, or stray processes holding ports 80/443"
    )


@pytest.fixture(scope="session")
def loopback_hosts() -> None:
    """Once per session: /etc/hosts holds the managed block (lease and bench names)."""
    ensure_hosts_block()


@pytest.fixture
def loopback(loopback_hosts: None) -> Iterator[LoopbackLease]:
    """A leased 127.0.1.N with ``.address``, ``.names`` (4 names) and ``.name`` (names[0])."""
    with lease_loopback() as lease:
        yield lease


@pytest.fixture
def loopback_factory(loopback_hosts: None) -> Iterator[Callable[[], LoopbackLease]]:
    """Call it for each extra lease a test needs; all are released when the test ends."""
    with contextlib.ExitStack() as stack:

        def take() -> LoopbackLease:
            return stack.enter_context(lease_loopback())

        yield take
