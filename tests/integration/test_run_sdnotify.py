"""`cert-sidecar run` under a stand-in for systemd's notify socket: a real subprocess, with
``NOTIFY_SOCKET`` naming an AF_UNIX datagram socket this test binds, against the real step-ca
0.19 and HAProxy 2.6 (docs/commands.md, "Under systemd").

What systemd relies on: READY=1 once, and only when HAProxy has a file to load; STATUS lines
naming the certificate and the serial served; WATCHDOG=1 pings while the process runs, none while
it is stopped; STOPPING=1 at SIGTERM. A hostile NOTIFY_SOCKET never stops the service.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar import pem
from tests.integration.cli import (
    Wait,
    free_port,
    logged,
    running_sidecar,
    stepca_run_args,
    waiting_run_args,
)
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCAFactory

DEADLINE = 120.0  # seconds; generous, only a defect needs this long


@dataclass(frozen=True)
class Received:
    at: float
    message: bytes
    on_disk: str  # the certificate file when the message arrived: none, placeholder, real


class NotifySocket:
    """The test's notify socket: a thread receives every datagram and notes, as it arrives,
    what the certificate file is (so "READY only once the file exists" is checked at once)."""

    def __init__(self, pem_path: Path | None = None) -> None:
        self.directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")  # sun_path: 108 bytes
        self.path = os.path.join(self.directory, "notify.sock")
        self.pem_path = pem_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_disk(self) -> str:
        if self.pem_path is None:
            return "none"
        try:
            facts = pem.describe_cert(pem.parse_combined(self.pem_path.read_bytes()).leaf)
        except (OSError, pem.PemError):
            return "none"
        return "placeholder" if facts.is_placeholder else "real"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            item = Received(time.monotonic(), data, self._on_disk())
            with self._lock:
                self.received.append(item)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def where(self, predicate: Callable[[bytes], bool]) -> list[Received]:
        return [item for item in self.messages() if predicate(item.message)]

    def count(self, message: bytes) -> int:
        return len(self.where(lambda m: m == message))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def notify_socket_factory() -> Iterator[Callable[[Path | None], NotifySocket]]:
    made: list[NotifySocket] = []

    def make(pem_path: Path | None = None) -> NotifySocket:
        made.append(NotifySocket(pem_path))
        return made[-1]

    try:
        yield make
    finally:
        for item in made:
            item.close()


def _dump_env_hook(path: Path) -> str:
    """A deploy hook (a command line, split like a shell would) that writes its environment."""
    script = f"import os; open({str(path)!r}, 'w').write(chr(10).join(os.environ))"
    return f'{sys.executable} -c "{script}"'


def _ready_sent(notify: NotifySocket) -> Wait:
    return Wait("READY=1", lambda _: notify.count(b"READY=1") >= 1, timeout=DEADLINE)


def _serial_hex(path: Path) -> str | None:
    try:
        facts = pem.describe_cert(pem.parse_combined(path.read_bytes()).leaf)
    except (OSError, pem.PemError):
        return None
    return None if facts.is_placeholder else facts.serial_hex


@pytest.mark.stepca
@pytest.mark.haproxy
def test_run_under_a_notify_socket_says_ready_status_watchdog_and_stopping(
    step_ca_factory: StepCAFactory,
    haproxy_factory: object,
    loopback: LoopbackLease,
    tmp_path: Path,
    notify_socket_factory: Callable[[Path | None], NotifySocket],
) -> None:
    ca = step_ca_factory()
    certs = tmp_path / "certs"
    certs.mkdir()
    haproxy = haproxy_factory(certs)  # type: ignore[operator]
    pem_path = certs / f"{loopback.name}.pem"
    notify = notify_socket_factory(pem_path)
    hook_env = tmp_path / "hook.env"
    args = stepca_run_args(
        ca,
        tmp_path,
        loopback,
        "--haproxy-socket",
        f"unix:{haproxy.socket_path}",
        "--deploy-hook",
        _dump_env_hook(hook_env),
        # Named on purpose: the supervisor's variables stay with the sidecar all the same.
        "--hook-env",
        "NOTIFY_SOCKET",
        "--hook-env",
        "WATCHDOG_USEC",
    )
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"}  # a ping every 0.1 s
    with running_sidecar(args, tmp_path / "run.log", env=env, until=_ready_sent(notify)) as sidecar:
        sidecar.wait_for(lambda: _serial_hex(pem_path) is not None, "the first certificate")
        serial = _serial_hex(pem_path)
        assert serial is not None
        expected = f"STATUS=1 certificate: {loopback.name} serial {serial} served".encode()
        sidecar.wait_for(
            lambda: bool(notify.where(lambda m: m.startswith(expected))),
            f"a STATUS line with serial {serial}",
            timeout=DEADLINE,
        )
        sidecar.wait_for(hook_env.exists, "the deploy hook")
        sidecar.wait_for(lambda: notify.count(b"WATCHDOG=1") >= 5, "watchdog pings")
    assert sidecar.exit_code == 0
    messages = notify.messages()
    (ready,) = [item for item in messages if item.message == b"READY=1"]
    assert ready.on_disk == "placeholder"  # there was a file for HAProxy when READY came
    assert b"STOPPING=1" in [item.message for item in messages]
    stopping_at = next(item.at for item in messages if item.message == b"STOPPING=1")
    assert not [item for item in messages if item.message == b"READY=1" and item.at > stopping_at]
    # STATUS lines are one line each and hold nothing secret.
    for item in messages:
        assert b"\n" not in item.message or item.message.startswith(b"RELOADING=1\n")
        assert b"PRIVATE KEY" not in item.message
    hook_names = set(hook_env.read_text().split("\n"))
    assert {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}.isdisjoint(hook_names)
    assert "CERT_NAME" in hook_names


@pytest.mark.stepca
def test_run_without_placeholders_says_ready_only_once_the_real_certificate_is_on_disk(
    step_ca_factory: StepCAFactory,
    loopback: LoopbackLease,
    tmp_path: Path,
    notify_socket_factory: Callable[[Path | None], NotifySocket],
) -> None:
    ca = step_ca_factory()
    certs = tmp_path / "certs"
    pem_path = certs / f"{loopback.name}.pem"
    notify = notify_socket_factory(pem_path)
    args = stepca_run_args(ca, tmp_path, loopback, "--no-placeholder")
    with running_sidecar(
        args, tmp_path / "run.log", env={"NOTIFY_SOCKET": notify.path}, until=_ready_sent(notify)
    ) as sidecar:
        pass  # READY=1 came: what matters is what was on disk then
    assert sidecar.exit_code == 0
    (ready,) = notify.where(lambda m: m == b"READY=1")
    assert ready.on_disk == "real"
    assert "cert_placeholder_written" not in sidecar.event_names()
    assert notify.count(b"WATCHDOG=1") == 0  # no WATCHDOG_USEC, no pings


def _process_state(pid: int) -> str:
    """The state letter from /proc (T: stopped)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def test_a_stopped_process_sends_no_watchdog_pings(
    tmp_path: Path, notify_socket_factory: Callable[[Path | None], NotifySocket]
) -> None:
    notify = notify_socket_factory(None)
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "100000"}  # a ping every 0.05 s
    pings = Wait("watchdog pings", lambda _: notify.count(b"WATCHDOG=1") >= 3)
    with running_sidecar(
        waiting_run_args(tmp_path), tmp_path / "run.log", env=env, until=pings
    ) as sidecar:
        pid = sidecar.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + DEADLINE
            while _process_state(pid) != "T":
                assert time.monotonic() < deadline, "the process did not stop"
                time.sleep(0.01)
            time.sleep(0.2)  # a ping already in the socket reaches the receiving thread
            before = notify.count(b"WATCHDOG=1")
            time.sleep(1.5)  # 30 intervals
            assert notify.count(b"WATCHDOG=1") == before, "pings from a stopped process"
        finally:
            os.kill(pid, signal.SIGCONT)
        sidecar.wait_for(lambda: notify.count(b"WATCHDOG=1") >= before + 3, "pings after SIGCONT")
    assert sidecar.exit_code == 0


@pytest.mark.parametrize(
    "kind", ["nothing", "regular-file", "directory", "too-long", "relative", "abstract-nobody"]
)
def test_a_hostile_notify_socket_is_one_warning_and_the_sidecar_runs_on(
    kind: str, tmp_path: Path
) -> None:
    short = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    try:
        (short / "file").write_text("not a socket")
        value = {
            "nothing": str(short / "absent.sock"),
            "regular-file": str(short / "file"),
            "directory": str(short),
            "too-long": "/" + "a" * 300,
            "relative": "notify.sock",
            "abstract-nobody": f"@cert-sidecar-nobody-{os.getpid()}-{time.monotonic_ns()}",
        }[kind]
        # The watchdog sends every 0.05 s: a warning per failed send would show.
        env = {"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "100000"}
        with running_sidecar(
            waiting_run_args(tmp_path),
            tmp_path / "run.log",
            env=env,
            until=logged("ca_bundle_waiting"),
        ) as sidecar:
            time.sleep(0.5)  # ten watchdog rounds
            assert sidecar.get("/healthz")[0] == 200
        assert sidecar.exit_code == 0
        events = sidecar.events()
        warnings = [e for e in events if e.get("level") in ("warning", "error", "critical")]
        notify_warnings = [e for e in warnings if e.get("event") == "sd_notify_failed"]
        # Each of these fails at once, so the one warning is there (and only one).
        assert len(notify_warnings) == 1, notify_warnings
        assert [e for e in warnings if e.get("event") != "sd_notify_failed"] == [
            e for e in warnings if e.get("event") == "ca_bundle_waiting"
        ]
        assert "Traceback" not in sidecar.log_path.read_text()
        assert not stat.S_ISSOCK((short / "file").stat().st_mode)  # nothing was created there
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_a_config_reload_is_reloading_then_ready(
    tmp_path: Path, notify_socket_factory: Callable[[Path | None], NotifySocket]
) -> None:
    notify = notify_socket_factory(None)
    config = tmp_path / "conf" / "cert-sidecar.toml"
    config.parent.mkdir()

    def write(names: list[str]) -> None:
        lines = [
            "[acme]",
            'directory = "https://127.0.0.1:9/acme/acme/directory"',
            f'ca_bundle = "{tmp_path / "absent" / "root_ca.crt"}"',
            f'http_listen = "127.0.0.1:{http_port}"',
            "[files]",
            f'certs_dir = "{tmp_path / "certs"}"',
            f'state_dir = "{tmp_path / "state"}"',
        ]
        for name in names:
            lines += ["[[certificates]]", f'name = "{name}"', f'domains = ["{name}"]']
        temp = config.with_name(".new.toml")
        temp.write_text("\n".join(lines) + "\n")
        temp.rename(config)

    http_port = free_port()
    write(["a.cert-sidecar.test"])
    with running_sidecar(
        ["--config", str(config)],
        tmp_path / "run.log",
        env={"NOTIFY_SOCKET": notify.path},
        until=Wait("READY=1", lambda _: notify.count(b"READY=1") == 1),
    ) as sidecar:
        sidecar.wait_for(lambda: "ca_bundle_waiting" in sidecar.event_names(), "the bundle wait")
        # The file watch starts shortly after the bundle wait, with no event of its own: the
        # new file is written again each second until the reload shows.
        last_write = 0.0

        def reloaded() -> bool:
            nonlocal last_write
            if notify.count(b"READY=1") == 2:
                return True
            if time.monotonic() - last_write > 1.0:
                write(["a.cert-sidecar.test", "b.cert-sidecar.test"])
                last_write = time.monotonic()
            return False

        sidecar.wait_for(reloaded, "READY=1 after the reload")
    assert sidecar.exit_code == 0
    assert "config_reloaded" in sidecar.event_names()
    sequence = [
        item.message.split(b"\n")[0]
        for item in notify.messages()
        if item.message.startswith((b"READY=", b"RELOADING=", b"STOPPING="))
    ]
    assert sequence == [b"READY=1", b"RELOADING=1", b"READY=1", b"STOPPING=1"]
    (reloading,) = notify.where(lambda m: m.startswith(b"RELOADING=1"))
    assert reloading.message.split(b"\n")[1].startswith(b"MONOTONIC_USEC=")
