"""Clients that ask for ``/metrics`` and never read: given up on, they leave nothing behind.

The finding: after the write deadline the slot was freed but the socket closed, not reset, so the
unsent answer stayed queued (in the transport and the kernel) until TCP gave up; 320 such
clients held 310 MB. The server's side of each connection is read from ``/proc/net/tcp``: a
reset removes it at once, a close leaves it there with its send queue.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from sidecar import health
from tests.unit.test_health import Snapshots, serving

pytestmark = pytest.mark.anyio

CLIENTS = 16
ANSWER = 4 * 1024 * 1024  # more than the kernel's send queue takes for a client that never reads
LISTEN = "0A"  # /proc/net/tcp state of a listening socket
DEADLINE = 30.0  # the server gives up after 0.5 s; this only turns a hang into a failure


def server_side(port: int) -> list[tuple[str, int]]:
    """(state, bytes queued to send) of every connection whose local end is ``port``."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] != LISTEN:
            found.append((fields[3], int(fields[4].split(":")[0], 16)))
    return found


async def _ask_and_never_read(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: a tiny window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    await asyncio.get_running_loop().sock_sendall(
        sock, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    return sock


async def test_clients_that_never_read_metrics_are_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[None] = []

    def render(*_: object) -> str:
        rendered.append(None)
        return "#" * (ANSWER - 1) + "\n"

    monkeypatch.setattr(health, "WRITE_TIMEOUT", 1.0)
    monkeypatch.setattr(health, "render", render)
    async with serving(Snapshots()) as server:
        clients = [await _ask_and_never_read(server.port) for _ in range(CLIENTS)]
        try:
            queued = 0
            async with asyncio.timeout(DEADLINE):
                # Every answer is being written, and most of it queued (the most seen is kept)...
                while len(rendered) < CLIENTS or server._connections:
                    queued = max(queued, sum(size for _, size in server_side(server.port)))
                    await asyncio.sleep(0.01)
                # ...and once the server has given up, its side of every connection is gone.
                while server_side(server.port):
                    await asyncio.sleep(0.05)
            assert queued > ANSWER  # there was something to drop
        except TimeoutError:
            left = server_side(server.port)
            pytest.fail(
                f"{len(left)} server-side connections left, {sum(s for _, s in left)} bytes "
                f"queued, {len(server._connections)} handlers running"
            )
        finally:
            for client in clients:
                client.close()


async def test_a_client_that_reads_gets_the_whole_large_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The reset is for clients given up on: one that reads in time gets every byte and a close.
    monkeypatch.setattr(health, "render", lambda *_: "#" * (ANSWER - 1) + "\n")
    async with serving(Snapshots()) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(DEADLINE):
            answer = await reader.read()
            writer.close()
            while server._connections:
                await asyncio.sleep(0.01)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"#" * 1000 + b"\n")
        assert len(answer.partition(b"\r\n\r\n")[2]) == ANSWER
