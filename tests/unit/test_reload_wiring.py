"""`sidecar.wiring` and `run`'s config reload: a new set of parts replaces the old one whole,
the responders stay bound unless their address changes, and a set that cannot be built leaves
the running one in place. (The end-to-end reload against step-ca and HAProxy is
tests/integration/test_reload_stepca.py.)"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import trustme
from structlog.testing import capture_logs

from ca_client.challenges.base import ResponderBindError
from sidecar import wiring
from sidecar.cli import build_parser
from sidecar.config import Settings, load_settings
from sidecar.service import Service

pytestmark = pytest.mark.anyio

HOLDER = "test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(tmp_path: Path, *extra: str, certs: Path | None = None) -> Settings:
    bundle = tmp_path / "root.pem"
    if not bundle.exists():
        trustme.CA().cert_pem.write_to_path(str(bundle))
    flags = [
        "run",
        "--directory",
        "https://ca.example/acme/directory",
        "--ca-bundle",
        str(bundle),
        "--certs-dir",
        str(certs or tmp_path / "certs"),
        "--state-dir",
        str(tmp_path / "state"),
        "--domain",
        "a.example",
        *extra,
    ]
    return load_settings(build_parser().parse_args(flags), {})


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# -- the responders ----------------------------------------------------------------------------


async def test_a_responder_starts_on_first_use_and_stays_bound_while_its_address_stays(
    tmp_path: Path,
) -> None:
    port = _free_port()
    responders = wiring.Responders(_settings(tmp_path, "--http-listen", f"127.0.0.1:{port}"))
    try:
        assert responders.running == {}
        assert not _answers(port)  # nothing is bound until an order needs it
        http = await responders.get("http-01")
        assert await responders.get("http-01") is http
        # Other settings change, the address does not: the same socket, never closed.
        await responders.update(
            _settings(tmp_path, "--http-listen", f"127.0.0.1:{port}", "--renew-at", "0.5")
        )
        assert responders.running == {"http-01": http}
        assert _answers(port)
    finally:
        await responders.aclose()
    assert not _answers(port)


async def test_a_responder_whose_address_changed_is_closed_then_bound_again(
    tmp_path: Path,
) -> None:
    port = _free_port()
    responders = wiring.Responders(_settings(tmp_path, "--http-listen", f"127.0.0.1:{port}"))
    try:
        old = await responders.get("http-01")
        # The same port on every interface: binding it while 127.0.0.1 still holds it fails,
        # so this passes only when the old socket is closed first.
        await responders.update(_settings(tmp_path, "--http-listen", f"0.0.0.0:{port}"))
        new = responders.running["http-01"]
        assert new is not old
        assert (new.host, new.port) == ("0.0.0.0", port)  # type: ignore[attr-defined]
        assert _answers(port)
        assert await responders.get("http-01") is new
    finally:
        await responders.aclose()


async def test_a_responder_that_cannot_bind_its_new_address_is_logged_and_retried_later(
    tmp_path: Path,
) -> None:
    first, second = _free_port(), _free_port()
    responders = wiring.Responders(_settings(tmp_path, "--http-listen", f"127.0.0.1:{first}"))
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", second))
    blocker.listen()
    try:
        await responders.get("http-01")
        with capture_logs() as logs:
            await responders.update(_settings(tmp_path, "--http-listen", f"127.0.0.1:{second}"))
        assert [(e["event"], e["log_level"]) for e in logs] == [
            ("responder_restart_failed", "error")
        ]
        assert responders.running == {}
        assert not _answers(first)  # the old address is given up either way
        with pytest.raises(ResponderBindError):
            await responders.get("http-01")  # the next order fails the usual way
        blocker.close()
        await responders.get("http-01")
        assert _answers(second)
    finally:
        blocker.close()
        await responders.aclose()


# -- the reload in `run` -----------------------------------------------------------------------


async def test_a_reload_replaces_the_manager_and_shares_the_responders(tmp_path: Path) -> None:
    service = Service(_settings(tmp_path))
    old_manager, responders = service.manager, service.parts.responders
    new = _settings(tmp_path, "--directory", "https://other.example/acme/directory")
    try:
        with capture_logs() as logs:
            assert await service.reload.apply(new)
        assert service.settings is new
        assert service.manager is not old_manager
        assert service.parts.settings is new
        assert service.parts.responders is responders
        assert [e["event"] for e in logs if e["log_level"] != "debug"] == ["config_reloaded"]
    finally:
        await wiring.close(service.parts)


async def test_a_reload_that_cannot_be_built_keeps_the_running_parts(tmp_path: Path) -> None:
    service = Service(_settings(tmp_path))
    old_settings, old_manager = service.settings, service.manager
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    new = _settings(tmp_path, certs=blocker / "certs")
    try:
        with capture_logs() as logs:
            assert not await service.reload.apply(new)
        assert [(e["event"], e["log_level"]) for e in logs] == [("config_reload_failed", "error")]
        assert str(blocker) in logs[0]["error"]
        assert service.settings is old_settings
        assert service.manager is old_manager
    finally:
        await wiring.close(service.parts)


async def test_a_check_in_progress_keeps_its_parts_which_close_after_it(tmp_path: Path) -> None:
    # Issue 17, finding 7: the reload no longer waits for checks in progress (it used to take
    # every certificate's lock, so a due check waited behind an unrelated order). The check
    # keeps the parts it started with; they are closed when it is done, not under it.
    service = Service(_settings(tmp_path))
    old_manager = service.manager
    closed: list[object] = []
    real_aclose = old_manager.aclose

    async def aclose() -> None:
        closed.append(old_manager)
        await real_aclose()

    old_manager.aclose = aclose  # type: ignore[method-assign]
    new = _settings(tmp_path, "--renew-at", "0.5")
    try:
        async with service.gate.use() as parts:  # a check or an order in progress
            assert await asyncio.wait_for(service.reload.apply(new), timeout=30)
            assert service.manager is not old_manager
            assert parts.manager is old_manager
            assert closed == []
        assert closed == [old_manager]
    finally:
        await wiring.close(service.parts)


async def test_a_reload_that_moves_a_responder_waits_for_the_checks_already_running(
    tmp_path: Path,
) -> None:
    # An order in flight may be answering a challenge on the responder that moves.
    service = Service(_settings(tmp_path, "--http-listen", f"127.0.0.1:{_free_port()}"))
    old_manager = service.manager
    new = _settings(tmp_path, "--http-listen", f"127.0.0.1:{_free_port()}")
    try:
        async with service.gate.use():
            reload = asyncio.ensure_future(service.reload.apply(new))
            for _ in range(20):
                await asyncio.sleep(0)
            assert not reload.done()
            assert service.manager is old_manager
        assert await asyncio.wait_for(reload, timeout=30)
        assert service.manager is not old_manager
    finally:
        await wiring.close(service.parts)


async def test_the_control_socket_follows_the_state_directory(tmp_path: Path) -> None:
    from sidecar.control import socket_path

    service = Service(_settings(tmp_path))
    await service.handoff.open(tmp_path / "state")
    new = load_settings(
        build_parser().parse_args(
            [
                "run",
                "--ca-bundle",
                str(tmp_path / "root.pem"),
                "--certs-dir",
                str(tmp_path / "certs"),
                "--state-dir",
                str(tmp_path / "state2"),
                "--domain",
                "a.example",
                "--health-listen",
                "127.0.0.1:9",
            ]
        ),
        {},
    )
    try:
        with capture_logs() as logs:
            assert await service.reload.apply(new)
        assert socket_path(tmp_path / "state2").is_socket()
        assert not socket_path(tmp_path / "state").exists()
        # What only a restart changes is said, not silently ignored.
        [warning] = [e for e in logs if e["event"] == "config_needs_restart"]
        assert warning["settings"] == ["health_listen"]
    finally:
        await service.handoff.aclose()
        await wiring.close(service.parts)
