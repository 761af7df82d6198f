"""A real HAProxy (Debian's 2.6) for tests: fixture ``haproxy_factory`` and TLS helpers.

``haproxy_factory(certs_dir, ...)`` writes a configuration with an admin stats socket and one
TLS frontend on ``127.0.0.1:<free port>`` loading ``crt <certs_dir>`` (``strict-sni`` by
default, so an empty directory is fine and an unknown name fails the handshake), answering every
request with a small ``http-request return``. It starts ``haproxy -W -db`` (master-worker, with
a master CLI socket) or plain ``haproxy -db``, waits until the sockets answer, and stops it at
teardown. Sockets live in a short directory under /tmp: a unix socket path is limited to 107
bytes and pytest's tmp_path can be longer.

``handshake(host, port, sni, ca_pem=None)`` returns the leaf the server presents (verifying it
against ``ca_pem`` when given).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.peers.processes import PeerProcess, free_port

__all__ = [
    "HAPROXY_BINARY",
    "HAProxyInstance",
    "TestPKI",
    "cli",
    "combined_pem",
    "handshake",
    "haproxy_check_config",
    "haproxy_factory",
    "haproxy_pki",
    "served_serial",
]

HAPROXY_BINARY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def cli(path: str | Path, command: str, timeout: float = 5.0) -> str:
    """One command on a unix CLI socket, non-interactive; returns the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(command.encode() + (b"" if command.endswith("\n") else b"\n"))
        # The master CLI waits for end-of-input before it answers and closes.
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def handshake(
    host: str, port: int, sni: str | None, ca_pem: bytes | None = None, timeout: float = 5.0
) -> x509.Certificate:
    """The leaf presented for ``sni``; with ``ca_pem`` the chain and name are verified too."""
    if ca_pem is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def served_serial(host: str, port: int, sni: str) -> int:
    return handshake(host, port, sni).serial_number


def haproxy_check_config(config: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``haproxy -c`` on a configuration text (written to ``workdir``)."""
    path = workdir / "check.cfg"
    path.write_text(config)
    return subprocess.run(
        [HAPROXY_BINARY, "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class HAProxyInstance:
    """One running HAProxy. ``pid`` is the process we started (the master with -W)."""

    def __init__(
        self,
        certs_dir: Path,
        workdir: Path,
        *,
        strict_sni: bool = True,
        master_worker: bool = True,
        extra_frontend: Sequence[str] = (),
        extra_global: Sequence[str] = (),
        socket_level: str = "admin",
        crt: str | None = None,
    ) -> None:
        self.certs_dir = certs_dir
        self.workdir = workdir
        self.master_worker = master_worker
        self.socket_path = workdir / "admin.sock"
        self.master_socket_path: Path | None = workdir / "master.sock" if master_worker else None
        self.config_path = workdir / "haproxy.cfg"
        self.pid_file = workdir / "haproxy.pid"
        self.log_path = workdir / "haproxy.log"
        self.port = free_port()
        crt_spec = crt if crt is not None else str(certs_dir)
        lines = [
            "global",
            f"  stats socket {self.socket_path} level {socket_level}",
            "  stats timeout 30s",
            *(f"  {line}" for line in extra_global),
            "defaults",
            "  mode http",
            "  timeout client 5s",
            "  timeout server 5s",
            "  timeout connect 5s",
            "frontend tls",
            f"  bind 127.0.0.1:{self.port} ssl crt {crt_spec}"
            + (" strict-sni" if strict_sni else ""),
            *(f"  {line}" for line in extra_frontend),
            '  http-request return status 200 content-type text/plain string "ok\\n"',
            "",
        ]
        self.config_path.write_text("\n".join(lines))
        argv = [HAPROXY_BINARY, "-db", "-f", str(self.config_path)]
        if master_worker:
            argv[1:1] = ["-W", "-S", str(self.master_socket_path)]
        self.process = PeerProcess("haproxy", argv, self.log_path)

    # -- life cycle

    def start(self) -> None:
        self.process.start()
        assert self.process.pid is not None
        # Written by us: HAProxy only writes -p files when it daemonizes. Same content (the
        # master's pid in master-worker mode), which is what --reload-pid-file expects.
        self.pid_file.write_text(f"{self.process.pid}\n")
        self.process.wait_ready(self._ready, "its sockets answer", timeout=60)

    def _ready(self) -> bool:
        try:
            if "Pid:" not in cli(self.socket_path, "show info"):
                return False
            return self.master_socket_path is None or bool(self.worker_pids())
        except OSError:
            return False

    def stop(self) -> None:
        self.process.stop(grace=5)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process.running()

    # -- inspection

    def cli(self, command: str) -> str:
        return cli(self.socket_path, command)

    def master_cli(self, command: str) -> str:
        assert self.master_socket_path is not None, "not started in master-worker mode"
        return cli(self.master_socket_path, command)

    def worker_pid(self) -> int:
        """The pid answering the stats socket (the current worker with -W)."""
        for line in self.cli("show info").splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        raise AssertionError("show info has no Pid")

    def worker_pids(self) -> list[int]:
        text = self.master_cli("show proc")
        pids, section = [], ""
        for line in text.splitlines():
            if line.startswith("#"):
                section = line
                continue
            parts = line.split()
            if len(parts) > 1 and parts[1] == "worker" and "workers" in section:
                pids.append(int(parts[0]))
        return pids

    def restart_count(self) -> int:
        """Reloads the master counted (0 without master-worker: such a process never reloads)."""
        if self.master_socket_path is None:
            return 0
        for line in self.master_cli("show proc").splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[1] == "master":
                return int(parts[2])
        raise AssertionError("show proc has no master line")

    def reload(self) -> None:
        """SIGUSR2 to the master, as ``--reload signal`` does."""
        os.kill(self.pid, signal.SIGUSR2)

    def wait_for_worker_change(self, old_worker: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = self.worker_pid()
            except OSError:
                pid = old_worker
            if pid != old_worker:
                return pid
            time.sleep(0.05)
        raise AssertionError(f"worker {old_worker} still answers after {timeout} s")

    def serial(self, sni: str) -> int:
        return served_serial("127.0.0.1", self.port, sni)

    def log_tail(self) -> str:
        return self.process.log_tail()


HAProxyFactory = Callable[..., HAProxyInstance]


@pytest.fixture
def haproxy_factory() -> Iterator[HAProxyFactory]:
    """``haproxy_factory(certs_dir, strict_sni=True, master_worker=True, extra_frontend=(),
    extra_global=(), socket_level="admin", crt=None) -> HAProxyInstance`` (started)."""
    if not Path(HAPROXY_BINARY).exists():
        pytest.fail("haproxy is not installed: run scripts/install-deps.sh", pytrace=False)
    started: list[HAProxyInstance] = []
    workdirs: list[Path] = []

    def factory(certs_dir: Path, **options: object) -> HAProxyInstance:
        workdir = Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))
        workdirs.append(workdir)
        instance = HAProxyInstance(certs_dir, workdir, **options)  # type: ignore[arg-type]
        started.append(instance)
        instance.start()
        return instance

    try:
        yield factory
    finally:
        for instance in started:
            instance.stop()
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)


def combined_pem(leaf: trustme.LeafCert) -> bytes:
    """HAProxy's combined layout from a trustme leaf: leaf, intermediates, key; no blank lines."""
    return b"".join(blob.bytes() for blob in leaf.cert_chain_pems) + leaf.private_key_pem.bytes()


class TestPKI:
    """A root and an intermediate (so chains are real) issuing combined PEMs."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.root = trustme.CA()
        self.intermediate = self.root.create_child_ca()

    @property
    def root_pem(self) -> bytes:
        return self.root.cert_pem.bytes()

    def issue(self, *names: str) -> tuple[bytes, int]:
        """A combined PEM for ``names`` and its serial number."""
        leaf = self.intermediate.issue_cert(*names)
        data = combined_pem(leaf)
        serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
        return data, serial


@pytest.fixture
def haproxy_pki() -> TestPKI:
    return TestPKI()
