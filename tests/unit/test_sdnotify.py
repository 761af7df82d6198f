"""systemd's notify protocol (`sidecar.sdnotify`): messages on a real AF_UNIX datagram socket
bound by the test (a path and an abstract name), hostile ``NOTIFY_SOCKET`` values, the watchdog
against a stalled event loop, and `cert-sidecar run`'s service in process (on the in-process fake
CA) saying READY only once its files are in place.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme

from ca_client.childenv import SUPERVISOR_NAMES, child_environment
from sidecar import pem, wiring
from sidecar.cli import build_parser
from sidecar.config import load_settings
from sidecar.metrics import CertStatus
from sidecar.sdnotify import (
    STATUS_MAX,
    Notifier,
    NotifySocketError,
    ServiceNotify,
    every_file_in_place,
    format_message,
    notify_environment,
    socket_address,
    status_line,
    status_text,
    watchdog_interval,
)
from sidecar.service import Service
from tests.peers.processes import free_port
from tests.protocol.conftest import RecordingSolver
from tests.protocol.fake_acme import DIRECTORY_URL, FakeAcme

DEADLINE = 60.0  # seconds; an idle machine needs well under one
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


# --- a receiving socket ---


class Receiver:
    """A bound AF_UNIX datagram socket: what systemd's notify socket is."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.received: list[bytes] = []

    def drain(self) -> list[bytes]:
        """Every datagram waiting now (never blocks)."""
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096))
            except BlockingIOError:
                break
        self.received.extend(got)
        return got

    def wait(self, predicate: Callable[[list[bytes]], bool], what: str) -> None:
        """Blocking: for sync tests only."""
        deadline = time.monotonic() + DEADLINE
        while not predicate(self.received):
            self.drain()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.received}")
            time.sleep(0.01)

    async def await_(self, predicate: Callable[[list[bytes]], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not predicate(self.received):
            self.drain()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.received}")
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_receiver() -> Iterator[tuple[str, Receiver]]:
    # Short: sun_path holds 108 bytes, and pytest's tmp_path can be longer than that.
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify.sock")
    receiver = Receiver(path)
    try:
        yield path, receiver
    finally:
        receiver.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[str, Receiver]]:
    name = f"cert-sidecar-test-{uuid.uuid4().hex}"
    receiver = Receiver(b"\0" + name.encode())
    try:
        yield "@" + name, receiver
    finally:
        receiver.close()


def _count(messages: list[bytes], message: bytes) -> int:
    return sum(1 for m in messages if m == message)


# --- the environment ---


def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify/1") == (
        b"\0/org/freedesktop/systemd1/notify/1"
    )
    for bad, why in [
        ("", "empty"),
        ("@", "empty abstract"),
        ("run/notify", "not an absolute path"),
        ("./notify", "not an absolute path"),
        ("vsock:2:1234", "not an absolute path"),
        ("/" + "x" * 107, "too long"),
        ("@" + "x" * 108, "too long"),
    ]:
        with pytest.raises(NotifySocketError, match=why):
            socket_address(bad)
    assert socket_address("/" + "x" * 106) == "/" + "x" * 106  # 107 bytes + NUL fit


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only() -> None:
    assert watchdog_interval({}, 10) == (None, None)
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 10) == (15.0, None)
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, 10) == (
        15.0,
        None,
    )
    # Meant for another process (a parent that kept the variables in our environment).
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, 10) == (
        None,
        None,
    )
    # A busy loop is never the answer to a tiny value.
    assert watchdog_interval({"WATCHDOG_USEC": "1"}, 10) == (0.01, None)
    for bad in ("soon", "0", "-5", ""):
        interval, problem = watchdog_interval({"WATCHDOG_USEC": bad}, 10)
        assert interval is None and problem and "WATCHDOG_USEC" in problem


def test_no_notify_socket_means_no_watchdog_either() -> None:
    found = notify_environment({"WATCHDOG_USEC": "1000000"}, 1)
    assert found.address is None and found.watchdog is None and found.problems == ()
    bad = notify_environment({"NOTIFY_SOCKET": "relative", "WATCHDOG_USEC": "1000000"}, 1)
    assert bad.address is None and bad.watchdog is None and len(bad.problems) == 1


# --- messages and STATUS text ---


def test_format_message_is_one_assignment_per_line() -> None:
    assert format_message(("READY", "1")) == b"READY=1"
    assert format_message(("STATUS", "a\nREADY=1\r\tb")) == b"STATUS=a READY=1 b"
    with pytest.raises(ValueError):
        format_message(("ready\nREADY", "1"))


def test_status_text_cannot_smuggle_an_assignment() -> None:
    # conmon before 2.1.10 searched whole datagrams for READY=1 / WATCHDOG=1.
    text = status_text("a.example: last error: CA says READY=1\nWATCHDOG=1 MAINPID=1")
    assert "READY=" not in text and "WATCHDOG=" not in text and "MAINPID=" not in text
    assert "\n" not in text
    assert text == "a.example: last error: CA says READY:1 WATCHDOG:1 MAINPID:1"
    assert len(status_text("x" * 1000)) == STATUS_MAX
    assert status_text("-----BEGIN EC PRIVATE KEY-----\nMHcC") == "[redacted]"


def _status(name: str, **kwargs: Any) -> CertStatus:
    state = kwargs.pop("state", "valid")
    return CertStatus(name=name, domains=(name,), state=state, **kwargs)


def test_status_line_for_one_certificate() -> None:
    served = _status(
        "demo.openchami.cluster",
        serial="66E6F329",
        deployed_serial="66E6F329",
        next_renewal=datetime(2026, 12, 7, 21, 10, 30, tzinfo=UTC),
    )
    assert status_line([served], NOW) == (
        "1 certificate: demo.openchami.cluster serial 66E6F329 served,"
        " next renewal 2026-12-07 21:10 UTC"
    )
    tomorrow = _status("a.example", serial="0A", next_renewal=NOW + timedelta(days=1, hours=1))
    assert status_line([tomorrow], NOW).endswith("next renewal 2026-12-08 13:00 UTC")
    failing = _status(
        "demo.openchami.cluster",
        serial="66E6F329",
        last_error="urn:ietf:params:acme:error:connection: " + "x" * 200,
        next_retry_at=datetime(2026, 12, 7, 12, 1, tzinfo=UTC),
    )
    line = status_line([failing], NOW)
    assert line.startswith("demo.openchami.cluster: last error: urn:ietf:params:acme:error:")
    assert line.endswith("... (retry 12:01 UTC)")
    assert len(line) < 120
    placeholder = _status("a.example", state="placeholder", serial="01", is_placeholder=True)
    assert "placeholder served" in status_line([placeholder], NOW)
    assert "no certificate yet" in status_line([_status("a.example", state="missing")], NOW)


def test_status_line_for_many_certificates_is_short_and_names_the_first() -> None:
    statuses = [
        _status(
            f"host{i:03d}.openchami.cluster",
            serial=f"{i:02X}",
            next_renewal=NOW + timedelta(hours=i + 1),
        )
        for i in range(200)
    ]
    statuses[5] = _status("host005.openchami.cluster", state="placeholder")
    statuses[7] = _status("host007.openchami.cluster", serial="07", last_error="rate limited")
    line = status_line(statuses, NOW)
    assert len(line) <= STATUS_MAX
    assert line.startswith(
        "200 certificates: 199 served, 1 placeholder, next renewal 2026-12-07 13:00 UTC"
    )
    assert line.endswith(
        "next renewal 2026-12-07 13:00 UTC; 1 failing,"
        " host007.openchami.cluster: last error: rate limited"
    )
    # Without an error, the first to renew is named.
    statuses[7] = _status("host007.openchami.cluster", serial="07", next_renewal=NOW)
    assert "next renewal 2026-12-07 12:00 UTC (host007.openchami.cluster)" in status_line(
        statuses, NOW
    )
    # Short names fit in front.
    few = [_status(f"h{i}.example", serial="0A") for i in range(12)]
    line = status_line(few, NOW)
    assert line.startswith("12 certificates (h0.example, h1.example, "), line
    assert "more): 12 served" in line and len(line) <= STATUS_MAX


def test_every_file_in_place() -> None:
    assert not every_file_in_place([])
    assert every_file_in_place([_status("a", state="placeholder"), _status("b", state="expired")])
    assert not every_file_in_place([_status("a"), _status("b", state="missing")])


# --- the socket ---


@pytest.mark.parametrize("receiver_fixture", ["path_receiver", "abstract_receiver"])
def test_messages_arrive_on_a_path_and_an_abstract_socket(
    receiver_fixture: str, request: pytest.FixtureRequest
) -> None:
    address, receiver = request.getfixturevalue(receiver_fixture)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address}, pid=os.getpid())
    try:
        assert notifier.enabled
        assert notifier.send(("READY", "1"))
        assert notifier.send(("STATUS", "1 certificate: a.example"))
        receiver.wait(lambda got: len(got) >= 2, "two datagrams")
    finally:
        notifier.close()
    assert receiver.received == [b"READY=1", b"STATUS=1 certificate: a.example"]


def test_without_notify_socket_nothing_is_done_at_all() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000"}, pid=os.getpid())
    with structlog.testing.capture_logs() as logs:
        assert not notifier.send(("READY", "1"))
    assert notifier._socket is None  # not even a socket was opened
    assert notifier.watchdog_interval is None
    assert logs == []


@pytest.mark.parametrize("kind", ["nothing", "regular-file", "directory", "too-long", "relative"])
def test_a_hostile_notify_socket_is_one_warning_and_never_an_exception(
    kind: str, tmp_path: Path
) -> None:
    short = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    try:
        value = {
            "nothing": str(short / "absent.sock"),
            "regular-file": str(short / "file"),
            "directory": str(short),
            "too-long": "/" + "a" * 200,
            "relative": "notify.sock",
        }[kind]
        (short / "file").write_text("not a socket")
        with structlog.testing.capture_logs() as logs:
            notifier = Notifier.from_environment({"NOTIFY_SOCKET": value}, pid=os.getpid())
            for _ in range(5):
                assert notifier.send(("READY", "1")) is False
                assert notifier.send(("STATUS", "x")) is False
            notifier.close()
    finally:
        shutil.rmtree(short, ignore_errors=True)
    warnings = [e for e in logs if e["log_level"] in ("warning", "error", "critical")]
    assert len(warnings) == 1, logs
    assert warnings[0]["event"] == "sd_notify_failed"


def test_a_full_socket_drops_messages_and_never_blocks(
    path_receiver: tuple[str, Receiver],
) -> None:
    address, receiver = path_receiver
    notifier = Notifier(address)
    results: list[bool] = []

    def flood() -> None:
        for n in range(5000):  # far beyond the receive queue (net.unix.max_dgram_qlen, 512)
            results.append(notifier.send(("STATUS", f"message {n}")))

    with structlog.testing.capture_logs() as logs:
        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        sender.join(DEADLINE)
    alive = sender.is_alive()
    notifier.close()
    assert not alive, "a send blocked on a full socket"
    assert results.count(True) > 0 and results.count(False) > 0
    assert not [e for e in logs if e["log_level"] == "warning"]  # a drop is not a failure
    assert len(receiver.drain()) == results.count(True)


# --- the watchdog ---


@pytest.mark.anyio
async def test_the_watchdog_pings_stop_while_the_event_loop_is_stalled_and_resume_after(
    path_receiver: tuple[str, Receiver],
) -> None:
    address, receiver = path_receiver
    notifier = Notifier(address, watchdog=0.02)
    task = asyncio.ensure_future(notifier.watchdog())
    try:
        await receiver.await_(lambda got: _count(got, b"WATCHDOG=1") >= 3, "pings")
        # Stall the loop: a synchronous sleep 50 times the interval.
        time.sleep(0.2)
        receiver.drain()  # whatever was sent before the stall began
        stalled_from = len(receiver.received)
        time.sleep(1.0)
        during = receiver.drain()
        assert during == [], f"{len(during)} pings while the event loop was blocked"
        await receiver.await_(
            lambda got: _count(got[stalled_from:], b"WATCHDOG=1") >= 3, "pings after the stall"
        )
    finally:
        task.cancel()
        notifier.close()


@pytest.mark.anyio
async def test_the_watchdog_withholds_pings_while_the_service_is_not_alive(
    path_receiver: tuple[str, Receiver],
) -> None:
    address, receiver = path_receiver
    notifier = Notifier(address, watchdog=0.02)
    alive = True
    task = asyncio.ensure_future(notifier.watchdog(lambda: alive))
    try:
        await receiver.await_(lambda got: _count(got, b"WATCHDOG=1") >= 2, "pings")
        alive = False
        await asyncio.sleep(0.1)
        receiver.drain()
        await asyncio.sleep(0.3)
        assert receiver.drain() == []
    finally:
        task.cancel()
        notifier.close()


# --- ServiceNotify: when READY, STATUS, RELOADING, STOPPING are said ---


@dataclass
class FakeService:
    statuses: list[CertStatus] = field(default_factory=list)
    waiting: Path | None = None
    now: float = 0.0


def _service_notify(address: str, fake: FakeService) -> ServiceNotify:
    return ServiceNotify(
        Notifier(address),
        statuses=lambda: fake.statuses,
        waiting_for=lambda: fake.waiting,
        now=lambda: NOW,
        clock=lambda: fake.now,
    )


@pytest.mark.anyio
async def test_ready_once_when_every_file_is_in_place_and_status_throttled(
    path_receiver: tuple[str, Receiver],
) -> None:
    address, receiver = path_receiver
    fake = FakeService(
        [_status("a.example", state="missing")], waiting=Path("/root_ca/root_ca.crt")
    )
    notify = _service_notify(address, fake)
    notify.started()  # the bundle has not been looked at yet
    assert receiver.drain() == [b"STATUS=1 certificate: a.example: no certificate yet"]
    notify.update()
    assert receiver.drain() == [b"STATUS=waiting for CA bundle /root_ca/root_ca.crt"]
    fake.waiting = None
    fake.statuses = [_status("a.example", serial="0A", next_renewal=NOW + timedelta(hours=1))]
    fake.now = 0.5
    notify.changed()  # within STATUS_MIN_INTERVAL of the last: deferred, not dropped
    notify.changed()  # coalesced with the one above
    await asyncio.sleep(0.1)
    assert receiver.drain() == []
    fake.now = 2.0
    await receiver.await_(lambda got: len(got) >= 4, "READY and STATUS")
    assert receiver.received[2:] == [
        b"READY=1",
        b"STATUS=1 certificate: a.example serial 0A served, next renewal 2026-12-07 13:00 UTC",
    ]
    # Same text again: not sent again; READY never again.
    notify.update()
    assert receiver.drain() == []
    # A reload: RELOADING=1 (with the monotonic time systemd wants), then READY=1.
    notify.reloading()
    notify.reloaded()
    notify.stopping()
    notify.update()  # nothing after STOPPING
    messages = receiver.drain()
    assert messages[0].startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert messages[1:] == [b"READY=1", b"STOPPING=1", b"STATUS=stopping"]
    notify.close()


def test_no_ready_while_a_certificate_has_no_file(path_receiver: tuple[str, Receiver]) -> None:
    address, receiver = path_receiver
    fake = FakeService([_status("a.example"), _status("b.example", state="missing")])
    notify = _service_notify(address, fake)
    notify.started()
    notify.reloading()  # not ready yet: a reload says nothing
    notify.reloaded()
    messages = receiver.drain()
    assert b"READY=1" not in messages and not any(m.startswith(b"RELOADING") for m in messages)
    fake.statuses[1] = _status("b.example", state="placeholder")
    notify.update()
    assert _count(receiver.drain(), b"READY=1") == 1
    notify.close()


# --- the service in process, on the in-process fake CA ---


class RecordingNotifier(Notifier):
    """Sends for real, and notes what the certificate file was at the moment of each send."""

    def __init__(self, address: str, pem_path: Path, watchdog: float | None = None) -> None:
        super().__init__(address, watchdog=watchdog)
        self.pem_path = pem_path
        self.log: list[tuple[bytes, str]] = []

    def send(self, *assignments: tuple[str, str]) -> bool:
        try:
            facts = pem.describe_cert(pem.parse_combined(self.pem_path.read_bytes()).leaf)
            on_disk = "placeholder" if facts.is_placeholder else "real"
        except (OSError, pem.PemError):
            on_disk = "none"
        self.log.append((format_message(*assignments), on_disk))
        return super().send(*assignments)


@asynccontextmanager
async def running_service(
    address: str, *extra: str, watchdog: float | None = None, bundle: bool = True
) -> AsyncIterator[tuple[Service, RecordingNotifier, list[Any]]]:
    ca = FakeAcme(clock=time.time, validate_on_response=True)
    workdir = Path(tempfile.mkdtemp(prefix="sdn-svc-", dir="/tmp"))
    name = "svc.example"
    try:
        bundle_path = workdir / "bundle.pem"
        if bundle:
            bundle_path.write_bytes(trustme.CA().cert_pem.bytes())
        args = build_parser().parse_args(
            [
                "run",
                "--directory",
                DIRECTORY_URL,
                "--ca-bundle",
                str(bundle_path),
                "--certs-dir",
                str(workdir / "certs"),
                "--state-dir",
                str(workdir / "state"),
                "--domain",
                name,
                "--health-listen",
                f"127.0.0.1:{free_port()}",
                *extra,
            ]
        )
        settings = load_settings(args, {})
        solver = RecordingSolver()
        ca.reach(solver)
        parts = wiring.build(
            settings,
            holder="run (test)",
            client_options={"transport": ca.transport()},
            solvers={"http-01": solver},
        )
        notifier = RecordingNotifier(address, workdir / "certs" / f"{name}.pem", watchdog)
        service = Service(settings, parts=parts, notifier=notifier)
        with structlog.testing.capture_logs() as logs:
            task = asyncio.ensure_future(service.run())
            try:
                yield service, notifier, logs
            finally:
                service._on_signal(signal.SIGTERM)
                assert await asyncio.wait_for(task, DEADLINE) == 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _sent(notifier: RecordingNotifier, message: bytes) -> list[str]:
    """What was on disk each time ``message`` was sent."""
    return [on_disk for sent, on_disk in notifier.log if sent == message]


@pytest.mark.anyio
async def test_run_says_ready_once_right_after_the_placeholder_and_stopping_at_the_end(
    path_receiver: tuple[str, Receiver],
) -> None:
    address, receiver = path_receiver
    async with running_service(address) as (_service, notifier, _logs):
        await receiver.await_(
            lambda got: any(m.startswith(b"STATUS=1 certificate: svc.example serial") for m in got),
            "a STATUS naming the issued certificate",
        )
    assert _sent(notifier, b"READY=1") == ["placeholder"]
    assert _sent(notifier, b"STOPPING=1") != []
    assert notifier.log[-2][0] == b"STOPPING=1"
    receiver.drain()
    assert _count(receiver.received, b"READY=1") == 1


@pytest.mark.anyio
async def test_run_says_ready_with_placeholders_while_the_ca_bundle_is_still_missing(
    path_receiver: tuple[str, Receiver],
) -> None:
    # HAProxy waits for READY (After=): it must not wait for the CA as well.
    address, receiver = path_receiver
    async with running_service(address, bundle=False) as (_service, notifier, _logs):
        await receiver.await_(
            lambda got: any(
                m.startswith(b"STATUS=waiting for CA bundle /tmp/sdn-svc-") for m in got
            ),
            "the waiting STATUS",
        )
    assert _sent(notifier, b"READY=1") == ["placeholder"]
    assert receiver.received[:2] == [
        b"READY=1",
        b"STATUS=1 certificate: svc.example: placeholder served, waiting for the first certificate",
    ]


@pytest.mark.anyio
async def test_run_without_placeholders_says_ready_once_the_real_certificate_is_written(
    path_receiver: tuple[str, Receiver],
) -> None:
    address, receiver = path_receiver
    async with running_service(address, "--no-placeholder") as (_service, notifier, _logs):
        await receiver.await_(lambda got: b"READY=1" in got, "READY=1")
    assert _sent(notifier, b"READY=1") == ["real"]


@pytest.mark.anyio
async def test_run_without_placeholders_or_bundle_waits_and_never_says_ready(
    path_receiver: tuple[str, Receiver],
) -> None:
    address, receiver = path_receiver
    async with running_service(address, "--no-placeholder", bundle=False) as (_s, notifier, logs):
        await receiver.await_(
            lambda got: any(m.startswith(b"STATUS=waiting for CA bundle /tmp/") for m in got),
            "the waiting STATUS",
        )
        await receiver.await_(
            lambda _got: any(e["event"] == "ca_bundle_waiting" for e in logs), "log"
        )
        await asyncio.sleep(0.3)
    assert _sent(notifier, b"READY=1") == []


@pytest.mark.anyio
async def test_run_watchdog_stops_while_the_service_loop_is_stalled(
    path_receiver: tuple[str, Receiver],
) -> None:
    address, receiver = path_receiver
    async with running_service(address, watchdog=0.02) as (_service, _notifier, _logs):
        await receiver.await_(lambda got: _count(got, b"WATCHDOG=1") >= 3, "pings")
        time.sleep(0.2)  # the loop is blocked from here ...
        receiver.drain()
        stalled_from = len(receiver.received)
        time.sleep(1.0)
        assert receiver.drain() == []  # ... so no ping can leave
        await receiver.await_(
            lambda got: _count(got[stalled_from:], b"WATCHDOG=1") >= 3, "pings after the stall"
        )


# --- child processes never get the supervisor's variables ---


def test_supervisor_variables_never_reach_a_child_even_when_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in SUPERVISOR_NAMES:
        monkeypatch.setenv(name, "/run/systemd/notify" if name == "NOTIFY_SOCKET" else "1")
    monkeypatch.setenv("PROVIDER_TOKEN", "t")
    env = child_environment({"CERT_NAME": "a"}, passthrough=[*SUPERVISOR_NAMES, "PROVIDER_TOKEN"])
    assert not SUPERVISOR_NAMES & set(env)
    assert env["PROVIDER_TOKEN"] == "t"
    # And a real child, as a hook runs: its whole environment.
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", "import os; print('\\n'.join(os.environ))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not SUPERVISOR_NAMES & set(out)
    assert "PROVIDER_TOKEN" in out
