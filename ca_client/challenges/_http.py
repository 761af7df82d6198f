"""Reading one HTTP/1.1 request head from a stranger, with two deadlines.

Shared by the http-01 responder and the sidecar's health server. A connection that sends
nothing is closed after ``first_byte_timeout`` (a real client, the CA's validator or a probe,
writes its request as soon as it connects), and a head that has started must be complete within
``head_timeout`` of the accept, so a client dribbling one byte a second holds its slot for a few
seconds at most. The size limit is the ``StreamReader``'s own ``limit``.
"""

from __future__ import annotations

import asyncio

__all__ = ["HeadNotRead", "read_request_head"]


class HeadNotRead(Exception):
    """No whole request head. ``status`` is what to answer (None: close without answering)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_request_head(
    reader: asyncio.StreamReader, *, first_byte_timeout: float, head_timeout: float
) -> bytes:
    """The bytes up to and including the first CRLF CRLF; raises `HeadNotRead` otherwise."""
    deadline = asyncio.get_running_loop().time() + head_timeout
    try:
        async with asyncio.timeout(min(first_byte_timeout, head_timeout)):
            first = await reader.read(1)
    except TimeoutError:
        raise HeadNotRead(None, "nothing received") from None
    if not first:
        raise HeadNotRead(None, "closed before sending anything")
    try:
        async with asyncio.timeout_at(deadline):
            head = first + await reader.readuntil(b"\r\n\r\n")
    except TimeoutError:
        raise HeadNotRead(408, "request timeout") from None
    except asyncio.LimitOverrunError:
        raise HeadNotRead(431, "request head too large") from None
    except asyncio.IncompleteReadError as exc:
        # A connection opened and closed with only blank lines is a probe: answer nothing.
        if not (first + exc.partial).strip():
            raise HeadNotRead(None, "closed before a request") from None
        raise HeadNotRead(400, "incomplete request") from None
    # The first byte was taken apart from the search: a "\r" followed by "\n\r\n" ended the
    # head already (the bytes after it belong to no request this server answers).
    return head[: head.find(b"\r\n\r\n") + 4]
