"""Control socket against hostile input: deep JSON, loose booleans, no peer credentials."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from sidecar.control import SOCKET_NAME, ControlServer, make_answer

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(payload)
        return make_answer(True, 0)


async def exchange(path: Path, data: bytes) -> dict[str, Any]:
    """Send ``data``, read to EOF; the answer must be one JSON line (no answer fails here)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(30):
        raw = await reader.read()
    writer.close()
    assert raw.endswith(b"\n"), f"no answer, got {raw!r}"
    answer: dict[str, Any] = json.loads(raw)
    return answer


@pytest.mark.parametrize(
    "data",
    [b"[" * 60_000 + b"\n", b'{"command": "renew", "x": ' + b"{" * 30_000 + b"\n"],
    ids=["brackets", "braces-in-object"],
)
async def test_deeply_nested_json_gets_an_error_answer(tmp_path: Path, data: bytes) -> None:
    handler = Recorder()
    async with ControlServer(tmp_path / SOCKET_NAME, handler):
        answer = await exchange(tmp_path / SOCKET_NAME, data)
        # The server is still serving afterwards.
        ok = await exchange(tmp_path / SOCKET_NAME, b'{"command": "status"}\n')
    assert answer["ok"] is False and answer["exit_code"] == 2
    assert "nested" in answer["error"]
    assert ok["ok"] is True
    assert [r["command"] for r in handler.requests] == ["status"]


async def test_brackets_inside_strings_do_not_count_as_depth(tmp_path: Path) -> None:
    handler = Recorder()
    async with ControlServer(tmp_path / SOCKET_NAME, handler):
        payload = json.dumps({"command": "revoke", "name": "[" * 1000 + '\\"{'}) + "\n"
        answer = await exchange(tmp_path / SOCKET_NAME, payload.encode())
    assert answer["ok"] is True
    assert handler.requests[0]["name"] == "[" * 1000 + '\\"{'


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"force": "false"}, "force"),
        ({"force": 0}, "force"),
        ({"dry_run": "no"}, "dry_run"),
        ({"remove": 1}, "remove"),
        ({"name": ["a"]}, "name"),
        ({"reason": True}, "reason"),
    ],
)
async def test_options_are_strictly_typed(
    tmp_path: Path, options: dict[str, Any], key: str
) -> None:
    handler = Recorder()
    async with ControlServer(tmp_path / SOCKET_NAME, handler):
        data = json.dumps({"command": "renew", **options}).encode() + b"\n"
        answer = await exchange(tmp_path / SOCKET_NAME, data)
    assert answer["ok"] is False and answer["exit_code"] == 2
    assert f"'{key}'" in answer["error"]
    assert handler.requests == []


async def test_well_typed_options_pass(tmp_path: Path) -> None:
    handler = Recorder()
    async with ControlServer(tmp_path / SOCKET_NAME, handler):
        data = b'{"command": "revoke", "force": false, "remove": true, "reason": 4, "name": "a"}\n'
        answer = await exchange(tmp_path / SOCKET_NAME, data)
    assert answer["ok"] is True
    assert handler.requests[0]["force"] is False and handler.requests[0]["reason"] == 4


async def test_without_peer_credentials_every_request_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A platform without SO_PEERCRED: the uid check cannot run, so nobody is let in.
    monkeypatch.delattr(socket, "SO_PEERCRED")
    handler = Recorder()
    async with ControlServer(tmp_path / SOCKET_NAME, handler):
        answer = await exchange(tmp_path / SOCKET_NAME, b'{"command": "status"}\n')
    assert answer["ok"] is False and answer["exit_code"] == 1
    assert "SO_PEERCRED" in answer["error"]
    assert handler.requests == []
