"""Opening the responders' listening sockets: one place for address rules and bind errors.

Both responders accept the same address forms as the sidecar's settings: an IPv4 or IPv6
literal (brackets allowed, ``[::]``), a host name, or ``""`` for every interface. ``::`` gets one
dual-stack socket (``IPV6_V6ONLY`` off) because asyncio turns that option on for every IPv6
socket it creates, and a user who writes ``[::]:80`` expects IPv4 clients to reach it too.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable

from ca_client.challenges.base import ResponderBindError, format_address
from ca_client.lifecycle import StartStop

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_BACKLOG = 128


def normalize_host(host: str) -> str:
    """``[::1]`` -> ``::1``: sockets want the bare literal."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


async def start_listener(
    challenge_type: str,
    host: str,
    port: int,
    handler: ConnectionHandler,
    *,
    limit: int = 2**16,
) -> asyncio.Server:
    """Listen on ``host:port``; a failure becomes `ResponderBindError` naming the address."""
    bind_host = normalize_host(host)
    address = format_address(bind_host or "*", port)
    try:
        if bind_host == "::":
            return await asyncio.start_server(handler, sock=_dual_stack_socket(port), limit=limit)
        return await asyncio.start_server(
            handler, bind_host or None, port, limit=limit, reuse_address=True, backlog=_BACKLOG
        )
    except OSError as exc:
        # asyncio rewraps bind errors with a message repeating the address: keep the errno's.
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise ResponderBindError(challenge_type, address, reason) from exc


def _dual_stack_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_port(server: asyncio.Server | None) -> int:
    """The port the kernel gave a listener (useful after asking for port 0)."""
    if server is None or not server.sockets:
        raise RuntimeError("responder is not listening; call start() first")
    port: int = server.sockets[0].getsockname()[1]
    return port


class Listener(StartStop):
    """What the responders share: one listening socket, its connection tasks, and closing."""

    challenge_type: str

    def __init__(self, host: str, port: int, *, max_connections: int) -> None:
        self.host = host
        self.port = port
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return format_address(normalize_host(self.host) or "*", self.port)

    @property
    def bound_port(self) -> int:
        """The port actually listened on; differs from ``port`` when that was 0."""
        return bound_port(self._server)

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's Server.close() leaves accepted connections open: end them here.
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
