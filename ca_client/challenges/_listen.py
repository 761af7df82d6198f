"""Opening the responders' listening sockets: one place for address rules and bind errors.

Both responders accept the same address forms as the sidecar's settings: an IPv4 or IPv6
literal (brackets allowed, ``[::]``), a host name, or ``""`` for every interface. ``::`` gets one
dual-stack socket (``IPV6_V6ONLY`` off) because asyncio turns that option on for every IPv6
socket it creates, and a user who writes ``[::]:80`` expects IPv4 clients to reach it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from ca_client.challenges._limits import ConnectionLimits, Slot
from ca_client.challenges.base import ResponderBindError, format_address
from ca_client.lifecycle import StartStop

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

logger = logging.getLogger(__name__)

_BACKLOG = 128
_CLOSE_TIMEOUT = 2.0  # for the last bytes to leave; an evicted or stalled peer gets an abort


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
            return await asyncio.start_server(handler, sock=dual_stack_socket(port), limit=limit)
        return await asyncio.start_server(
            handler, bind_host or None, port, limit=limit, reuse_address=True, backlog=_BACKLOG
        )
    except OSError as exc:
        # asyncio rewraps bind errors with a message repeating the address: keep the errno's.
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise ResponderBindError(challenge_type, address, reason) from exc


def dual_stack_socket(port: int) -> socket.socket:
    """A listening socket on ``::`` that IPv4 clients reach too (``IPV6_V6ONLY`` off).

    asyncio sets IPV6_V6ONLY on every IPv6 socket it opens; a user who writes ``[::]:80``
    expects IPv4 to reach it as well. Shared with the sidecar's health server.
    """
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


_LINGER_ZERO = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0 s}


def reset(transport: asyncio.WriteTransport) -> None:
    """Close a connection with a TCP reset (``SO_LINGER`` 0), dropping what the kernel holds.

    A plain close of a socket whose peer does not read keeps the unsent bytes in the kernel's
    send queue (FIN_WAIT1) until the peer reads or TCP gives up, minutes later: 320 clients
    that asked for ``/metrics`` and never read held 310 MB that way. A reset frees them at once.
    Used when giving up on a peer (evicted, or stalled past a deadline), never after a
    complete answer, which a reset could destroy before the peer reads it.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


def bound_port(server: asyncio.Server | None) -> int:
    """The port the kernel gave a listener (useful after asking for port 0)."""
    if server is None or not server.sockets:
        raise RuntimeError("responder is not listening; call start() first")
    port: int = server.sockets[0].getsockname()[1]
    return port


class Listener(StartStop):
    """What the responders share: one listening socket, its connections, limits and closing.

    Every accepted connection is admitted through `ConnectionLimits` (a cap per source, room
    kept for newcomers by closing the connection idle the longest), then handed to the
    subclass's `_serve` with its `Slot`; `_serve` reports progress with `_answering` (a whole
    request is in) and `_answered` (the answer is written). Whatever `_serve` leaves, the
    socket is closed here.
    """

    challenge_type: str

    def __init__(self, host: str, port: int, *, max_connections: int, max_per_source: int) -> None:
        self.host = host
        self.port = port
        self._limits = ConnectionLimits(total=max_connections, per_source=max_per_source)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return format_address(normalize_host(self.host) or "*", self.port)

    @property
    def bound_port(self) -> int:
        """The port actually listened on; differs from ``port`` when that was 0."""
        return bound_port(self._server)

    @property
    def evictions(self) -> int:
        """Connections closed so far to make room for newer ones."""
        return self._limits.evictions

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: Slot
    ) -> None:
        raise NotImplementedError

    def _answering(self, slot: Slot) -> None:
        self._limits.answering(slot)

    def _answered(self, slot: Slot) -> None:
        self._limits.answered(slot)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio always runs handlers in a task
            writer.close()
            return
        # Aborting makes this connection's pending read see end-of-stream, so `_serve` returns.
        slot = self._limits.admit(
            writer.get_extra_info("peername"), lambda: reset(writer.transport)
        )
        self._connections.add(task)
        try:
            await self._serve(reader, writer, slot)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            logger.debug("%s connection ended: %s", self.challenge_type, exc)
        except asyncio.CancelledError:
            # aclose() cancels open connections. Nobody awaits this task, and asyncio's stream
            # callback logs an error for a handler task that ends cancelled, so end quietly.
            pass
        finally:
            try:
                if not slot.evicted:
                    writer.close()
                    with contextlib.suppress(OSError, TimeoutError, asyncio.CancelledError):
                        async with asyncio.timeout(_CLOSE_TIMEOUT):
                            await writer.wait_closed()
            finally:
                # A no-op once closed; else the peer stalled the close: reset, so that the
                # kernel does not keep what it would not read.
                reset(writer.transport)
                self._limits.release(slot)
                self._connections.discard(task)

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
