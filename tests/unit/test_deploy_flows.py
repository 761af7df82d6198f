"""Deployer flows in the fast tier: hot updates and their retries, the fallback reload, each
reload mode, the TLS check, the hook, with the HAProxy stand-in (fake_haproxy), a local TLS
server and small child processes; time and sleeps are injected.

Written where mutation testing (docs/MUTATION.md) showed sidecar/deploy.py was exercised only
by the integration tests against a real HAProxy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from sidecar.deploy import (
    DeployConfig,
    Deployer,
    DeployResult,
    HookOutcome,
    NameCheck,
    SocketOutcome,
    VerifyOutcome,
    _describe,
    _iso_utc,
    deployer_from_settings,
    fetch_served_certificate,
)
from sidecar.haproxy import HAProxyAddress, HAProxySocketMissing
from tests.unit.fake_haproxy import FakeHAProxy, serve

pytestmark = pytest.mark.anyio

CA = trustme.CA()
NOT_AFTER = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def issue(*names: str) -> tuple[bytes, str, trustme.LeafCert]:
    leaf = CA.issue_cert(*names)
    data = leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes()
    serial = x509.load_pem_x509_certificate(data).serial_number
    return data, format(serial, "X"), leaf


OLD, OLD_SERIAL, _ = issue("a.example")
NEW, NEW_SERIAL, NEW_LEAF = issue("a.example")


class Time:
    """The deployer's clock and sleep: sleeping moves the clock, instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def norm(serial: str) -> str:
    return serial if len(serial) % 2 == 0 else "0" + serial


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    path = tmp_path / "certs"
    path.mkdir()
    return path


def deployer(certs: Path, time: Time, **options: object) -> Deployer:
    config = DeployConfig.build(certs_dir=certs, **options)  # type: ignore[arg-type]
    return Deployer(config, sleep=time.sleep, clock=time.clock)


def fake_with(certs: Path, *names: str, payload: bytes = OLD, master: bool = False) -> FakeHAProxy:
    fake = FakeHAProxy(crt_lists={str(certs): []}, master=master)
    for name in names:
        fake.load(str(certs / name), payload.decode(), str(certs))
    return fake


def show_answer(path: str, serial: str, status: str = "Used") -> str:
    return f"Filename: {path}\nStatus: {status}\nSerial: {serial}\n\n"


# -- runtime API -----------------------------------------------------------------------------


async def test_a_hot_update_is_reported_per_socket(certs: Path, tmp_path: Path) -> None:
    time = Time()
    fake = fake_with(certs, "a.pem")
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(certs, time, sockets=[address])
        assert deploy.mode == "runtime-api"
        result = await deploy.deploy(
            "a", certs / "a.pem", NEW, NEW_SERIAL.lower(), not_after=NOT_AFTER
        )
        added = await deploy.deploy("b", certs / "b.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result == DeployResult(
        name="a",
        serial=norm(NEW_SERIAL),
        mode="runtime-api",
        ok=True,
        sockets=(SocketOutcome(address, True, "updated", norm(NEW_SERIAL), 1),),
        duration=0.0,
    )
    assert added.sockets == (SocketOutcome(address, True, "added", norm(NEW_SERIAL), 1),)
    assert fake.serial(str(certs / "a.pem")) == norm(NEW_SERIAL)
    assert result.summary() == f"runtime-api: serial {norm(NEW_SERIAL)} deployed"
    assert time.sleeps == []


async def test_a_failed_hot_update_is_retried_with_doubling_delays(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    fake = fake_with(certs, "a.pem")
    fake.answers["commit ssl cert"] = ["Can't commit!\n\n", "Can't commit!\n\n"]
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(certs, time, sockets=[address], retry_delay=0.25)
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.ok and result.sockets[0].attempts == 3
    assert time.sleeps == [0.25, 0.5]


async def test_a_socket_that_keeps_failing_is_reported_with_its_last_error(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    fake = fake_with(certs, "a.pem")
    fake.answers["commit ssl cert"] = ["Can't commit!\n\n"] * 5
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(certs, time, sockets=[address], attempts=2)
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    failed = SocketOutcome(address, False, "failed", None, 2, "commit ssl cert: Can't commit!")
    assert result.sockets == (failed,) and not result.ok
    assert result.errors == (f"{address}: commit ssl cert: Can't commit!",)
    assert result.summary() == f"runtime-api: {address}: commit ssl cert: Can't commit!"
    assert result.to_json()["error"] == result.errors[0]
    assert result.to_json()["verified"] is None
    assert time.sleeps == [0.2]


async def test_a_socket_that_reports_another_serial_has_not_taken_it(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    fake = fake_with(certs, "a.pem")
    path = str(certs / "a.pem")
    fake.answers["show ssl cert /"] = [show_answer(path, "0BAD")] * 3
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(certs, time, sockets=[address])
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    (socket,) = result.sockets
    assert (socket.ok, socket.error, socket.reachable) == (
        False,
        "show ssl cert reports serial 0BAD (Used)",
        True,
    )


async def test_an_unreachable_socket_is_marked_so(certs: Path, tmp_path: Path) -> None:
    time = Time()
    address = f"unix:{tmp_path}/missing.sock"
    deploy = deployer(certs, time, sockets=[address], attempts=1)
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.sockets == (
        SocketOutcome(address, False, "failed", None, 1, "socket does not exist", False),
    )


async def test_a_pem_the_cli_cannot_carry_is_not_sent(certs: Path, tmp_path: Path) -> None:
    time = Time()
    fake = fake_with(certs, "a.pem")
    blank = NEW.replace(b"-----END CERTIFICATE-----\n", b"-----END CERTIFICATE-----\n\n")
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(certs, time, sockets=[address])
        result = await deploy.deploy("a", certs / "a.pem", blank, NEW_SERIAL, not_after=NOT_AFTER)
    (socket,) = result.sockets
    assert (socket.ok, socket.action) == (False, "failed")
    assert socket.error is not None and socket.error.startswith("PEM payload has a blank line")
    assert result.errors == (f"{address}: {socket.error}",)
    assert fake.received == []


# -- the fallback reload ---------------------------------------------------------------------


async def test_a_failed_hot_update_falls_back_to_the_reload_command(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    fake = fake_with(certs, "a.pem")
    path = str(certs / "a.pem")
    fake.answers["commit ssl cert"] = ["Can't commit!\n\n"]
    # After the reload the (new) worker serves the file from disk: the new serial.
    fake.answers["show ssl cert /"] = [show_answer(path, norm(NEW_SERIAL))]
    marker = tmp_path / "reloaded"
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(
            certs, time, sockets=[address], attempts=1, reload_command=["touch", str(marker)]
        )
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert marker.exists()
    assert (result.ok, result.fallback, result.fallback_ok) == (True, "command", True)
    assert result.sockets == (SocketOutcome(address, True, "confirmed", norm(NEW_SERIAL), 1),)
    assert result.errors == (f"{address}: commit ssl cert: Can't commit!",)
    assert result.summary().endswith("deployed (after falling back to command)")


async def test_an_unreachable_socket_does_not_veto_a_reload_that_worked(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    address = f"unix:{tmp_path}/missing.sock"
    deploy = deployer(certs, time, sockets=[address], attempts=1, reload_command="true")
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert (result.ok, result.fallback_ok) == (True, True)
    assert result.sockets[0].ok is False and result.sockets[0].reachable is False


async def test_a_failing_fallback_is_reported(certs: Path, tmp_path: Path) -> None:
    time = Time()
    address = f"unix:{tmp_path}/missing.sock"
    deploy = deployer(certs, time, sockets=[address], attempts=1, reload_command="false")
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert (result.ok, result.fallback, result.fallback_ok) == (False, "command", False)
    assert result.errors[-1] == "fallback command: reload command false: exit status 1"


async def test_the_signal_fallback_needs_both_signal_and_pid_file(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    address = f"unix:{tmp_path}/missing.sock"
    pid_file = tmp_path / "haproxy.pid"
    only_signal = deployer(certs, time, sockets=[address], attempts=1, reload_signal="USR2")
    result = await only_signal.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.fallback is None and not result.ok
    both = deployer(
        certs,
        time,
        sockets=[address],
        attempts=1,
        reload_signal="USR2",
        reload_pid_file=pid_file,
    )
    result = await both.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.fallback == "signal"
    assert result.errors[-1] == f"fallback signal: pid file {pid_file}: No such file or directory"


# -- reload modes ----------------------------------------------------------------------------


async def test_command_mode_reloads_then_polls_until_the_new_serial_is_served(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    fake = fake_with(certs, "a.pem")
    path = str(certs / "a.pem")
    old = show_answer(path, norm(OLD_SERIAL))
    fake.answers["show ssl cert /"] = [old, "", show_answer(path, norm(NEW_SERIAL))]
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(certs, time, sockets=[address], reload="command", reload_command="true")
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.ok and result.mode == "command"
    assert result.sockets == (SocketOutcome(address, True, "confirmed", norm(NEW_SERIAL), 3),)
    assert time.sleeps == [0.02, 0.04]


async def test_polling_after_a_reload_gives_up_at_the_settle_timeout(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    fake = fake_with(certs, "a.pem")
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(
            certs,
            time,
            sockets=[address],
            reload="command",
            reload_command="true",
            settle_timeout=2.0,
        )
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
        missing = await deploy.deploy("z", certs / "z.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    (socket,) = result.sockets
    assert (socket.ok, socket.serial, socket.error) == (
        False,
        norm(OLD_SERIAL),
        f"serves serial {norm(OLD_SERIAL)}",
    )
    assert time.sleeps[:7] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5]
    # Gave up at the first look after the deadline (each deploy polled on its own clock).
    first = time.sleeps[: len(time.sleeps) // 2]
    assert sum(first) >= 2.0 > sum(first[:-1])
    assert missing.sockets[0].error == f"{certs}/z.pem is not loaded"
    assert result.errors == (f"{address}: serves serial {norm(OLD_SERIAL)}",)


async def test_a_failed_reload_command_is_the_error(certs: Path, tmp_path: Path) -> None:
    time = Time()
    script = tmp_path / "reload.sh"
    script.write_text("#!/bin/sh\necho starting >&2\necho 'config: bad line 3' >&2\nexit 2\n")
    script.chmod(0o755)
    deploy = deployer(certs, time, reload="command", reload_command=[str(script)])
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert not result.ok and result.sockets == ()
    assert result.errors == (f"reload command {script}: exit status 2: config: bad line 3",)


async def test_none_mode_does_nothing_and_succeeds(certs: Path) -> None:
    result = await deployer(certs, Time()).deploy(
        "a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER
    )
    assert (result.mode, result.ok, result.sockets, result.errors) == ("none", True, (), ())


async def test_master_reload_mode_reloads_each_master_then_confirms(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    fake = fake_with(certs, "a.pem", payload=NEW, master=True)
    async with serve(fake, tmp_path / "m.sock") as address:
        deploy = deployer(certs, time, sockets=[address], reload="master-reload")
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
        fake.fail_reloads = True
        failed = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.ok and fake.reloads == 2
    assert result.sockets == (SocketOutcome(address, True, "confirmed", norm(NEW_SERIAL), 1),)
    assert failed.errors == (f"haproxy {address}: reload: the new configuration did not load",)


async def test_master_reload_mode_needs_a_master_socket(certs: Path, tmp_path: Path) -> None:
    deploy = deployer(certs, Time(), sockets=[f"unix:{tmp_path}/s.sock"], reload="master-reload")
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.errors == ("master-reload needs a master:unix:/path socket",)


async def test_signal_mode_signals_the_pid_in_the_pid_file(certs: Path, tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / "haproxy.pid"
        pid_file.write_text(f"{child.pid}\n4242\n")
        deploy = deployer(
            certs, Time(), reload="signal", reload_signal="SIGTERM", reload_pid_file=pid_file
        )
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
        assert result.ok
        assert child.wait(timeout=30) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "no pid in it"),
        ("1\n", "no pid in it"),
        ("haproxy\n", "no pid in it"),
    ],
)
async def test_a_pid_file_without_a_usable_pid_is_refused(
    certs: Path, tmp_path: Path, content: str, problem: str
) -> None:
    pid_file = tmp_path / "haproxy.pid"
    pid_file.write_text(content)
    deploy = deployer(certs, Time(), reload="signal", reload_pid_file=pid_file)
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.errors == (f"pid file {pid_file}: {problem}",)


async def test_signalling_a_pid_that_is_gone_is_named(certs: Path, tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid is free (and not reused this soon)
    pid_file = tmp_path / "haproxy.pid"
    pid_file.write_text(f"{child.pid}\n")
    deploy = deployer(certs, Time(), reload="signal", reload_pid_file=pid_file)
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.errors == (f"SIGUSR2 to pid {child.pid} (from {pid_file}): no such process",)
    no_file = deployer(certs, Time(), reload="signal")
    result = await no_file.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.errors == ("no pid file configured",)


# -- the TLS check ---------------------------------------------------------------------------


@pytest.fixture
async def tls_server() -> AsyncIterator[tuple[str, int, list[str | None]]]:
    """A TLS server presenting NEW_LEAF; records the SNI of each handshake."""
    seen: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    NEW_LEAF.configure_cert(context)

    def remember(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen.append(name)

    context.sni_callback = remember  # type: ignore[assignment]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port, seen
    finally:
        server.close()


async def test_the_served_certificate_is_checked_per_name(
    certs: Path, tls_server: tuple[str, int, list[str | None]]
) -> None:
    host, port, seen = tls_server
    deploy = deployer(certs, Time(), verify_address=f"{host}:{port}")
    names = ("a.example", "*.w.example", "192.0.2.1")
    result = await deploy.deploy(
        "a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER, names=names
    )
    serial = norm(NEW_SERIAL)
    assert result.verification == VerifyOutcome(
        f"{host}:{port}",
        True,
        (
            NameCheck("a.example", "a.example", True, serial),
            NameCheck("*.w.example", "cert-sidecar-verify.w.example", True, serial),
        ),
        ("192.0.2.1",),
    )
    assert result.ok and result.verified is True
    assert seen == ["a.example", "cert-sidecar-verify.w.example"]


async def test_a_wrong_served_certificate_fails_the_deploy_after_the_retries(
    certs: Path, tls_server: tuple[str, int, list[str | None]]
) -> None:
    host, port, seen = tls_server
    time = Time()
    deploy = deployer(certs, time, verify_address=(host, port), retry_delay=0.1)
    result = await deploy.deploy(
        "a", certs / "a.pem", OLD, OLD_SERIAL, not_after=NOT_AFTER, names=["a.example"]
    )
    check = NameCheck(
        "a.example",
        "a.example",
        False,
        norm(NEW_SERIAL),
        f"serves serial {norm(NEW_SERIAL)}, expected {norm(OLD_SERIAL)}",
    )
    assert result.verification == VerifyOutcome(f"{host}:{port}", False, (check,))
    assert not result.ok and result.verified is False
    assert result.errors == (f"verify {host}:{port}: a.example: {check.error}",)
    assert time.sleeps == [0.1, 0.2] and len(seen) == 3


async def test_after_a_reload_the_check_waits_for_the_settle_timeout(
    certs: Path, tls_server: tuple[str, int, list[str | None]]
) -> None:
    host, port, seen = tls_server
    time = Time()
    deploy = deployer(
        certs,
        time,
        reload="command",
        reload_command="true",
        verify_address=(host, port),
        settle_timeout=3.0,
    )
    result = await deploy.deploy(
        "a", certs / "a.pem", OLD, OLD_SERIAL, not_after=NOT_AFTER, names=["a.example"]
    )
    assert not result.ok
    assert time.sleeps == [0.2, 0.4, 0.8, 1.0, 1.0] and len(seen) == 6


async def test_a_failed_handshake_is_described(certs: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        deploy = deployer(certs, Time(), verify_address=("127.0.0.1", port), attempts=1)
        result = await deploy.deploy(
            "a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER, names=["a.example"]
        )
    assert result.verification is not None
    (check,) = result.verification.checks
    assert check.error is not None and check.error.startswith("handshake failed: ")
    assert "Connect call failed" in check.error or "refused" in check.error


async def test_fetch_served_certificate_returns_the_leaf(
    tls_server: tuple[str, int, list[str | None]],
) -> None:
    host, port, seen = tls_server
    cert = await fetch_served_certificate(host, port, None)
    assert format(cert.serial_number, "X") == NEW_SERIAL
    assert seen == [None]


# -- the hook --------------------------------------------------------------------------------


async def test_the_hook_gets_the_certificate_in_its_environment(
    certs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "env"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nenv > {out}\n")
    hook.chmod(0o755)
    os.environ["CERT_SIDECAR_EAB_HMAC_KEY"] = "secret"
    try:
        deploy = deployer(certs, Time(), deploy_hook=str(hook))
        result = await deploy.deploy(
            "a",
            certs / "a.pem",
            NEW,
            NEW_SERIAL,
            not_after=dt.datetime(2030, 1, 2, 4, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            names=["a.example", "b.example"],
        )
    finally:
        del os.environ["CERT_SIDECAR_EAB_HMAC_KEY"]
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert result.hook == HookOutcome(True, 0, None) and result.ok
    assert env["CERT_NAME"] == "a" and env["CERT_PEM"] == str(certs / "a.pem")
    assert env["CERT_SERIAL"] == norm(NEW_SERIAL)
    assert env["CERT_NOT_AFTER"] == "2030-01-02T03:04:05Z"
    assert env["CERT_DOMAINS"] == "a.example,b.example"
    assert "CERT_SIDECAR_EAB_HMAC_KEY" not in env


async def test_a_failing_hook_is_reported_without_undoing_the_deploy(
    certs: Path, tmp_path: Path
) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text(
        "#!/bin/sh\necho first >&2\necho second >&2\necho '  ' >&2\necho "
        + "x" * 300
        + " >&2\nexit 3\n"
    )
    hook.chmod(0o755)
    deploy = deployer(certs, Time(), deploy_hook=[str(hook)])
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.ok
    assert result.hook == HookOutcome(False, 3, "exit status 3: " + "x" * 200)
    assert result.errors == ("deploy hook: exit status 3: " + "x" * 200,)
    quiet = tmp_path / "quiet.sh"
    quiet.write_text("#!/bin/sh\nexit 4\n")
    quiet.chmod(0o755)
    result = await deployer(certs, Time(), deploy_hook=[str(quiet)]).deploy(
        "a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER
    )
    assert result.hook == HookOutcome(False, 4, "exit status 4")


async def test_a_hook_that_hangs_is_killed_with_its_children(certs: Path, tmp_path: Path) -> None:
    hook = tmp_path / "hook.sh"
    pid_file = tmp_path / "child.pid"
    hook.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pid_file}\nwait\n")
    hook.chmod(0o755)
    deploy = deployer(certs, Time(), deploy_hook=[str(hook)], hook_timeout=0.5)
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.hook == HookOutcome(False, None, f"{hook} timed out after 0.5 s")
    child = int(pid_file.read_text())
    for _ in range(1000):  # killed with the group: dead (or a zombie) within moments
        if not _running(child):
            break
        await asyncio.sleep(0.01)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def test_a_hook_that_cannot_run_says_so(certs: Path, tmp_path: Path) -> None:
    deploy = deployer(certs, Time(), deploy_hook=[str(tmp_path / "missing")])
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.hook == HookOutcome(
        False, None, f"cannot run {tmp_path}/missing: No such file or directory"
    )


async def test_no_hook_after_a_failed_deploy(certs: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    deploy = deployer(
        certs, Time(), reload="command", reload_command="false", deploy_hook=["touch", str(marker)]
    )
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert not result.ok and result.hook is None and not marker.exists()


# -- queries and removal ---------------------------------------------------------------------


async def test_deployed_serial_is_the_common_answer_of_the_sockets(
    certs: Path, tmp_path: Path
) -> None:
    one = fake_with(certs, "a.pem")
    two = fake_with(certs, "a.pem")
    async with (
        serve(one, tmp_path / "1.sock") as first,
        serve(two, tmp_path / "2.sock") as second,
    ):
        missing = f"unix:{tmp_path}/missing.sock"
        deploy = deployer(certs, Time(), sockets=[missing, first, second])
        assert await deploy.deployed_serial("a") == norm(OLD_SERIAL)
        assert await deploy.deployed_serial(certs / "a.pem") == norm(OLD_SERIAL)
        assert await deploy.deployed_serial("b") is None
        two.certs[str(certs / "a.pem")].payload = NEW.decode().rstrip("\n")
        assert await deploy.deployed_serial("a") is None  # they disagree
        two.crt_lists[str(certs)].remove(str(certs / "a.pem"))  # loaded but unused
        one.certs[str(certs / "a.pem")].payload = NEW.decode().rstrip("\n")
        assert await deploy.deployed_serial("a") is None
    assert await deployer(certs, Time()).deployed_serial("a") is None
    nobody = deployer(certs, Time(), sockets=[f"unix:{tmp_path}/missing.sock"])
    with pytest.raises(HAProxySocketMissing):
        await nobody.deployed_serial("a")


async def test_remove_unloads_from_every_socket_then_reports_the_first_error(
    certs: Path, tmp_path: Path
) -> None:
    one = fake_with(certs, "a.pem")
    two = fake_with(certs)
    async with (
        serve(one, tmp_path / "1.sock") as first,
        serve(two, tmp_path / "2.sock") as second,
    ):
        assert await deployer(certs, Time(), sockets=[first, second]).remove("a") == [first]
        one.load(str(certs / "a.pem"), OLD.decode(), str(certs))
        missing = f"unix:{tmp_path}/missing.sock"
        deploy = deployer(certs, Time(), sockets=[missing, first])
        with pytest.raises(HAProxySocketMissing):
            await deploy.remove(certs / "a.pem")
    assert str(certs / "a.pem") not in one.certs


# -- configuration and small helpers ---------------------------------------------------------


def test_from_settings_carries_every_deploy_setting(tmp_path: Path) -> None:
    # deployer_from_settings takes the values config.py parsed (issue 10): build real Settings.
    from sidecar.cli import build_parser
    from sidecar.config import load_settings

    flags = [
        *("check-config", "--domain", "a.example", "--haproxy-socket", "unix:/s"),
        *("--certs-dir", str(tmp_path / "certs"), "--haproxy-certs-dir", str(tmp_path / "seen")),
        *("--reload", "signal", "--reload-command", "true reload haproxy"),
        *("--reload-signal", "HUP", "--reload-pid-file", str(tmp_path / "pid")),
        *("--verify-address", "[::1]:8443", "--deploy-hook", "true --x", "--hook-env", "TOKEN"),
    ]
    settings = load_settings(build_parser().parse_args(flags), {})
    config = deployer_from_settings(settings).config
    assert config == DeployConfig(
        sockets=(HAProxyAddress("unix", path="/s"),),
        certs_dir=tmp_path / "certs",
        haproxy_certs_dir=tmp_path / "seen",
        reload="signal",
        reload_command=("true", "reload", "haproxy"),
        reload_signal=signal.SIGHUP,
        reload_pid_file=tmp_path / "pid",
        verify_address=("::1", 8443),
        deploy_hook=("true", "--x"),
        hook_env=("TOKEN",),
    )


def test_signal_and_address_spellings() -> None:
    assert DeployConfig.build(reload_signal=" usr1 ").reload_signal is signal.SIGUSR1
    assert DeployConfig.build(reload_signal="10").reload_signal is signal.SIGUSR1
    assert DeployConfig.build(reload_signal=signal.SIGHUP).reload_signal is signal.SIGHUP
    assert DeployConfig.build(verify_address=("h", 1)).verify_address == ("h", 1)
    assert DeployConfig.build(verify_address="h:443").verify_address == ("h", 443)
    with pytest.raises(ValueError, match="port 'x' in 'h:x' is not a number from 1 to 65535"):
        DeployConfig.build(verify_address="h:x")
    assert DeployConfig.build(reload_command=["a", "b"]).reload_command == ("a", "b")
    with pytest.raises(ValueError, match="empty command"):
        DeployConfig.build(deploy_hook=[])


def test_hook_times_are_utc_with_a_z() -> None:
    assert _iso_utc(dt.datetime(2030, 1, 2, 3, 4, 5)) == "2030-01-02T03:04:05Z"
    eastern = dt.timezone(dt.timedelta(hours=-5))
    assert _iso_utc(dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=eastern)) == "2030-01-02T08:04:05Z"


def test_errors_are_described_in_one_line() -> None:
    assert _describe(TimeoutError("ignored")) == "timed out"
    assert _describe(OSError("a\n  b")) == "a b"
    assert _describe(ValueError()) == "ValueError"


def test_a_failed_deploy_without_errors_still_says_failed() -> None:
    result = DeployResult(name="a", serial="0A", mode="command", ok=False)
    assert result.summary() == "command: failed"
    assert result.to_json()["error"] is None


# -- second round: what the first mutation run still let through ------------------------------


@pytest.fixture
async def tls_at_127_0_0_2() -> AsyncIterator[tuple[str, int, list[str | None]]]:
    """The TLS server on 127.0.0.2, so that a check sent anywhere else fails."""
    seen: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    NEW_LEAF.configure_cert(context)
    context.sni_callback = lambda sock, name, ctx: seen.append(name)  # type: ignore[assignment,func-returns-value]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.2", 0, ssl=context)
    try:
        yield "127.0.0.2", server.sockets[0].getsockname()[1], seen
    finally:
        server.close()


async def test_a_hot_update_is_then_checked_over_tls(
    certs: Path, tmp_path: Path, tls_at_127_0_0_2: tuple[str, int, list[str | None]]
) -> None:
    host, port, seen = tls_at_127_0_0_2
    fake = fake_with(certs, "a.pem")
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(certs, Time(), sockets=[address], verify_address=(host, port))
        result = await deploy.deploy(
            "a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER, names=["a.example"]
        )
    assert result.ok and result.verified is True and seen == ["a.example"]
    assert result.verification == VerifyOutcome(
        f"{host}:{port}", True, (NameCheck("a.example", "a.example", True, norm(NEW_SERIAL)),)
    )


async def test_a_hot_update_the_check_contradicts_falls_back_then_checks_until_settled(
    certs: Path, tmp_path: Path, tls_at_127_0_0_2: tuple[str, int, list[str | None]]
) -> None:
    # HAProxy took the update but clients still get another certificate: reload, then check
    # again for as long as a new worker may take to start.
    host, port, seen = tls_at_127_0_0_2
    time = Time()
    fake = fake_with(certs, "a.pem")
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(
            certs,
            time,
            sockets=[address],
            verify_address=(host, port),
            attempts=1,
            reload_command="true",
            settle_timeout=1.0,
        )
        result = await deploy.deploy(
            "a", certs / "a.pem", OLD, OLD_SERIAL, not_after=NOT_AFTER, names=["a.example"]
        )
    wrong = f"serves serial {norm(NEW_SERIAL)}, expected {norm(OLD_SERIAL)}"
    assert (result.ok, result.fallback, result.fallback_ok) == (False, "command", False)
    assert result.errors == (
        f"verify {host}:{port}: a.example: {wrong}",
        f"verify {host}:{port}: a.example: {wrong}",
    )
    assert result.verification is not None and result.verification.checks[0].error == wrong
    assert time.sleeps == [0.2, 0.4, 0.8]  # after the reload: until the settle timeout
    assert len(seen) == 1 + 4


async def test_a_check_with_one_attempt_makes_one_handshake(
    certs: Path, tls_at_127_0_0_2: tuple[str, int, list[str | None]]
) -> None:
    host, port, seen = tls_at_127_0_0_2
    time = Time()
    deploy = deployer(certs, time, verify_address=(host, port), attempts=1)
    names = ["192.0.2.7", "a.example"]  # an IP is skipped, and the next name still checked
    result = await deploy.deploy(
        "a", certs / "a.pem", OLD, OLD_SERIAL, not_after=NOT_AFTER, names=names
    )
    assert seen == ["a.example"] and time.sleeps == []
    assert result.verification is not None and result.verification.skipped == ("192.0.2.7",)
    assert result.ok is False and result.summary().startswith("none: verify 127.0.0.2:")


async def test_a_handshake_that_never_completes_is_cut_short(certs: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        deploy = deployer(
            certs, Time(), verify_address=("127.0.0.1", port), attempts=1, handshake_timeout=0.2
        )
        # The configured 0.2 s, not the 5 s default of fetch_served_certificate.
        async with asyncio.timeout(4):
            result = await deploy.deploy(
                "a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER, names=["a.example"]
            )
    finally:
        server.close()
    assert result.verification is not None
    assert result.verification.checks == (
        NameCheck("a.example", "a.example", False, None, "handshake failed: timed out"),
    )


async def test_none_mode_touches_no_socket(certs: Path, tmp_path: Path) -> None:
    fake = fake_with(certs, "a.pem")
    async with serve(fake, tmp_path / "s.sock") as address:
        deploy = deployer(certs, Time(), sockets=[address], reload="none")
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.ok and result.sockets == () and fake.received == []


async def test_after_a_reload_an_unreachable_socket_is_polled_to_the_deadline(
    certs: Path, tmp_path: Path
) -> None:
    time = Time()
    address = f"unix:{tmp_path}/missing.sock"
    deploy = deployer(
        certs,
        time,
        sockets=[address],
        reload="command",
        reload_command="true",
        settle_timeout=0.1,
        socket_timeout=1.5,
    )
    assert deploy.runtimes[0].timeout == 1.5
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.ok is False
    assert result.sockets == (
        SocketOutcome(address, False, "failed", None, 4, "socket does not exist"),
    )
    assert result.duration == pytest.approx(0.02 + 0.04 + 0.08)


async def test_a_failed_reload_is_a_plain_false(certs: Path) -> None:
    deploy = deployer(certs, Time(), reload="command", reload_command="false")
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.ok is False and result.to_json()["ok"] is False
    no_command = deployer(certs, Time(), reload="command")
    result = await no_command.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.errors == ("no reload command configured",)


async def test_a_reload_command_that_hangs_is_stopped(certs: Path) -> None:
    deploy = deployer(
        certs, Time(), reload="command", reload_command="sleep 30", command_timeout=0.2
    )
    async with asyncio.timeout(20):
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.errors == ("reload command sleep: sleep timed out after 0.2 s",)


async def test_every_failing_master_is_reported(certs: Path, tmp_path: Path) -> None:
    one = fake_with(certs, master=True)
    two = fake_with(certs, master=True)
    one.fail_reloads = two.fail_reloads = True
    async with (
        serve(one, tmp_path / "1.sock") as first,
        serve(two, tmp_path / "2.sock") as second,
    ):
        deploy = deployer(certs, Time(), sockets=[first, second], reload="master-reload")
        result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    message = "reload: the new configuration did not load"
    assert result.errors == (f"haproxy {first}: {message}; haproxy {second}: {message}",)


async def test_two_failed_sockets_are_both_in_the_summary(certs: Path, tmp_path: Path) -> None:
    one, two = f"unix:{tmp_path}/1.sock", f"unix:{tmp_path}/2.sock"
    deploy = deployer(certs, Time(), sockets=[one, two], attempts=1)
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    joined = f"{one}: socket does not exist; {two}: socket does not exist"
    assert result.summary() == f"runtime-api: {joined}"
    assert result.to_json()["error"] == joined


async def test_a_pid_file_that_is_not_text_has_no_pid(certs: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "haproxy.pid"
    pid_file.write_bytes(b"\xff\xfe12\n")
    deploy = deployer(certs, Time(), reload="signal", reload_pid_file=pid_file)
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.errors == (f"pid file {pid_file}: no pid in it",)


async def test_only_pid_1_is_refused_as_a_pid(
    certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    pid_file = tmp_path / "haproxy.pid"
    pid_file.write_text("2\n")
    deploy = deployer(certs, Time(), reload="signal", reload_pid_file=pid_file)
    result = await deploy.deploy("a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER)
    assert result.ok and sent == [(2, signal.SIGUSR2)]


async def test_deployed_serial_with_one_socket(certs: Path, tmp_path: Path) -> None:
    fake = fake_with(certs, "a.pem")
    async with serve(fake, tmp_path / "s.sock") as address:
        assert await deployer(certs, Time(), sockets=[address]).deployed_serial("a") == norm(
            OLD_SERIAL
        )


async def test_hooks_run_detached_from_our_terminal(
    certs: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "stdin"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nreadlink /proc/self/fd/0 > {out}\necho hook-says-hello\n")
    hook.chmod(0o755)
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)  # our stdin is a pipe: the hook must not get it
    try:
        result = await deployer(certs, Time(), deploy_hook=[str(hook)]).deploy(
            "a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER
        )
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert result.hook == HookOutcome(True, 0, None)
    assert out.read_text().strip() == "/dev/null"
    assert "hook-says-hello" not in capfd.readouterr().out


async def test_a_hooks_last_error_line_is_kept_even_if_not_utf8(
    certs: Path, tmp_path: Path
) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text(
        "#!/bin/sh\necho first >&2\necho second >&2\nprintf 'caf\\377\\n' >&2\nexit 1\n"
    )
    hook.chmod(0o755)
    result = await deployer(certs, Time(), deploy_hook=[str(hook)]).deploy(
        "a", certs / "a.pem", NEW, NEW_SERIAL, not_after=NOT_AFTER
    )
    assert result.hook == HookOutcome(False, 1, "exit status 1: caf\ufffd")


async def test_hook_times_are_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert _iso_utc(dt.datetime(2030, 1, 2, 3, 4, 5)) == "2030-01-02T03:04:05Z"
        plus_one = dt.timezone(dt.timedelta(hours=1))
        moment = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=plus_one)
        assert _iso_utc(moment) == "2030-01-02T02:04:05Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_an_empty_command_is_named_exactly() -> None:
    with pytest.raises(ValueError) as caught:
        DeployConfig.build(reload_command=" ")
    assert str(caught.value) == "empty command"


async def test_every_name_that_fails_the_check_is_in_the_error(
    certs: Path, tls_at_127_0_0_2: tuple[str, int, list[str | None]]
) -> None:
    host, port, _ = tls_at_127_0_0_2
    deploy = deployer(certs, Time(), verify_address=(host, port), attempts=1)
    result = await deploy.deploy(
        "a", certs / "a.pem", OLD, OLD_SERIAL, not_after=NOT_AFTER, names=["a.example", "b.example"]
    )
    wrong = f"serves serial {norm(NEW_SERIAL)}, expected {norm(OLD_SERIAL)}"
    assert result.errors == (f"verify {host}:{port}: a.example: {wrong}; b.example: {wrong}",)


def test_a_verify_host_is_kept_as_written_apart_from_ipv6_brackets() -> None:
    assert DeployConfig.build(verify_address="HAPROX:443").verify_address == ("HAPROX", 443)
    assert DeployConfig.build(verify_address="[fe80::1]:443").verify_address == ("fe80::1", 443)
