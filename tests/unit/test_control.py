"""Control socket: real Unix sockets in temporary state directories."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from sidecar.control import (
    SOCKET_NAME,
    ControlError,
    ControlProtocolError,
    ControlServer,
    ControlSocketBusy,
    ControlTimeout,
    make_answer,
    request,
    socket_path,
)
from sidecar.errors import OperationError

pytestmark = pytest.mark.anyio


class Recorder:
    """A handler that records what it was given and answers with it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(payload)
        return make_answer(True, 0, results=[{"name": "a.example", "seen": payload["command"]}])


def leave_stale_socket(path: Path) -> None:
    """What a killed sidecar leaves behind: a socket file nobody listens on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


async def raw_exchange(path: Path, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)  # bounds a hang only
    writer.close()
    return answer


async def test_round_trip_with_peer_credentials(tmp_path: Path) -> None:
    handler = Recorder()
    path = socket_path(tmp_path)
    assert path == tmp_path / SOCKET_NAME
    async with ControlServer(path, handler):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(path.stat().st_mode)
        # Only the socket: the private bind directory is gone.
        assert sorted(p.name for p in tmp_path.iterdir()) == [SOCKET_NAME]

        answer = await request(
            tmp_path,
            {"command": "renew", "force": True, "dry_run": False, "peer_uid": 12345},
            timeout=10,
        )
    assert answer == {
        "ok": True,
        "exit_code": 0,
        "results": [{"name": "a.example", "seen": "renew"}],
        "error": None,
    }
    (seen,) = handler.requests
    assert seen["force"] is True and seen["dry_run"] is False
    # The kernel's word, not the client's.
    assert seen["peer_uid"] == os.geteuid()
    assert seen["peer_pid"] == os.getpid()
    assert seen["peer_gid"] == os.getegid()
    # Closing removes the socket file.
    assert not path.exists()


async def test_no_sidecar_means_none(tmp_path: Path) -> None:
    assert await request(tmp_path, {"command": "status"}, timeout=5) is None
    leave_stale_socket(tmp_path / SOCKET_NAME)
    assert await request(tmp_path, {"command": "status"}, timeout=5) is None


async def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    leave_stale_socket(path)
    stale_inode = path.stat().st_ino
    async with ControlServer(path, Recorder()):
        assert path.stat().st_ino != stale_inode
        answer = await request(tmp_path, {"command": "status"}, timeout=5)
        assert answer is not None and answer["ok"]


async def test_live_server_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    first = Recorder()
    async with ControlServer(path, first):
        with pytest.raises(ControlSocketBusy, match="another cert-sidecar run is active"):
            async with ControlServer(path, Recorder()):
                pass
        # The probe did not disturb the first server, and its socket is still in place.
        assert await request(tmp_path, {"command": "status"}, timeout=5) is not None
    assert len(first.requests) == 1
    assert issubclass(ControlSocketBusy, OperationError)


async def test_refuses_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    path.write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        async with ControlServer(path, Recorder()):
            pass
    assert path.read_text() == "not a socket"


async def test_refuses_a_path_too_long_for_a_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    with pytest.raises(ControlError, match="shorter --state-dir"):
        async with ControlServer(deep / SOCKET_NAME, Recorder()):
            pass


async def test_close_leaves_a_successors_socket(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    old = ControlServer(path, Recorder())
    await old.start()
    path.unlink()  # e.g. removed by hand; a new sidecar then starts at the same path
    successor = Recorder()
    async with ControlServer(path, successor):
        await old.aclose()
        assert path.exists()
        assert await request(tmp_path, {"command": "status"}, timeout=5) is not None
    assert len(successor.requests) == 1


async def test_client_timeout(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow(payload: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return make_answer(True, 0)

    async with ControlServer(tmp_path / SOCKET_NAME, slow):
        with pytest.raises(ControlTimeout, match=r"did not answer within 0\.05 s"):
            await request(tmp_path, {"command": "renew", "force": True}, timeout=0.05)
        release.set()


async def test_long_operation_is_waited_for(tmp_path: Path) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def long(payload: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await release.wait()
        return make_answer(False, 1, results=[{"name": "a.example", "ok": False}], error="x\ny")

    async with ControlServer(tmp_path / SOCKET_NAME, long):
        pending = asyncio.create_task(request(tmp_path, {"command": "renew"}, timeout=60))
        await started.wait()
        assert not pending.done()
        release.set()
        answer = await pending
    assert answer is not None
    assert (answer["ok"], answer["exit_code"], answer["error"]) == (False, 1, "x y")


async def test_shutdown_answers_requests_in_progress(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def forever(payload: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    server = ControlServer(tmp_path / SOCKET_NAME, forever)
    await server.start()
    pending = asyncio.create_task(request(tmp_path, {"command": "renew"}, timeout=60))
    await started.wait()
    await server.aclose()
    answer = await pending
    assert answer is not None
    assert answer["ok"] is False
    assert "stopped before finishing" in answer["error"]


async def test_handler_errors_become_answers(tmp_path: Path) -> None:
    async def broken(payload: dict[str, Any]) -> dict[str, Any]:
        if payload["command"] == "raise":
            raise RuntimeError("disk full\nsecond line")
        return {"ok": "yes"}

    async with ControlServer(tmp_path / SOCKET_NAME, broken):
        answer = await request(tmp_path, {"command": "raise"}, timeout=5)
        assert answer is not None
        assert (answer["ok"], answer["exit_code"], answer["error"]) == (
            False,
            1,
            "disk full second line",
        )
        answer = await request(tmp_path, {"command": "shape"}, timeout=5)
        assert answer is not None
        assert answer["ok"] is False
        assert "bad answer" in answer["error"]


@pytest.mark.parametrize(
    "data",
    [b"not json\n", b"[1, 2]\n", b'{"force": true}\n', b'{"command": 1}\n', b'{"command": "x"}'],
)
async def test_malformed_requests(tmp_path: Path, data: bytes) -> None:
    handler = Recorder()
    async with ControlServer(tmp_path / SOCKET_NAME, handler):
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / SOCKET_NAME))
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        raw = await asyncio.wait_for(reader.read(), 30)  # bounds a hang only
        writer.close()

    answer = json.loads(raw)
    assert answer["ok"] is False
    assert answer["exit_code"] == 2
    assert handler.requests == []


async def test_oversized_request(tmp_path: Path) -> None:
    async with ControlServer(tmp_path / SOCKET_NAME, Recorder()):
        raw = await raw_exchange(
            tmp_path / SOCKET_NAME, b'{"command": "' + b"x" * 100_000 + b'"}\n'
        )
    assert b"longer than" in raw


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"garbage\n", "not JSON"),
        (b'{"ok": "yes", "exit_code": 0}\n', "'ok'"),
        (b'{"ok": true, "exit_code": true}\n', "'exit_code'"),
        (b'{"ok": true, "exit_code": 0, "results": {}}\n', "'results'"),
        (b'{"ok": true, "exit_code": 0, "error": 3}\n', "'error'"),
        (b"[]\n", "not a JSON object"),
        (b'{"ok": true', "closed the connection before answering"),
        (b"", "closed the connection before answering"),
    ],
)
async def test_client_rejects_malformed_answers(
    tmp_path: Path, answer: bytes, message: str
) -> None:
    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(impostor, str(tmp_path / SOCKET_NAME))
    try:
        with pytest.raises(ControlError, match=message) as caught:
            await request(tmp_path, {"command": "status"}, timeout=5)
        if answer.endswith(b"\n"):
            assert isinstance(caught.value, ControlProtocolError)
    finally:
        server.close()
        await server.wait_closed()


async def test_client_answer_defaults(tmp_path: Path) -> None:
    async def minimal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"ok": true, "exit_code": 0}\n')
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(minimal, str(tmp_path / SOCKET_NAME))
    try:
        answer = await request(tmp_path, {"command": "status"}, timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert answer == {"ok": True, "exit_code": 0, "results": [], "error": None}
