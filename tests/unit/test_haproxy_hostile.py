"""The runtime API client against answers a real HAProxy gives only by chance or never:
a store locked by another process, an endless answer. A small Unix-socket server plays them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sidecar.haproxy import (
    MAX_ANSWER_BYTES,
    HAProxyCommandError,
    HAProxyProtocolError,
    HAProxyRuntime,
)

pytestmark = pytest.mark.anyio

LOCKED = b"Can't show!\nOperations on certificates are currently locked!\n\n"
SHOW = (
    b"Filename: /c/a.pem\nStatus: Used\nSerial: 0A\n"
    b"notBefore: Jan  1 00:00:00 2020 GMT\nnotAfter: Jan  1 00:00:00 2030 GMT\n"
)

Answer = Callable[[int], AsyncIterator[bytes]]


@pytest.fixture
async def fake_cli(tmp_path: Path) -> AsyncIterator[tuple[str, list[bytes], list[Answer]]]:
    """A socket whose n-th connection is answered by ``answers[min(n, last)]``."""
    path = tmp_path / "admin.sock"
    received: list[bytes] = []
    answers: list[Answer] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(received)
        received.append(await reader.read())  # the client half-closes after its command
        try:
            async for chunk in answers[min(n, len(answers) - 1)](n):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        yield f"unix:{path}", received, answers
    finally:
        server.close()


def fixed(data: bytes) -> Answer:
    async def answer(_n: int) -> AsyncIterator[bytes]:
        yield data

    return answer


async def test_a_locked_store_is_retried_until_it_answers(
    fake_cli: tuple[str, list[bytes], list[Answer]],
) -> None:
    address, received, answers = fake_cli
    answers += [fixed(LOCKED), fixed(LOCKED), fixed(SHOW)]
    info = await HAProxyRuntime(address, timeout=10).show_ssl_cert("/c/a.pem")
    assert info is not None and info.serial == "0A"
    assert len(received) == 3


async def test_a_store_locked_for_good_is_one_clear_error(
    fake_cli: tuple[str, list[bytes], list[Answer]],
) -> None:
    address, received, answers = fake_cli
    answers.append(fixed(LOCKED))
    with pytest.raises(HAProxyCommandError, match=r"stayed locked by another command for 0\.5 s"):
        await HAProxyRuntime(address, timeout=0.5).show_ssl_cert("/c/a.pem")
    assert len(received) > 1


async def test_an_endless_answer_is_refused(
    fake_cli: tuple[str, list[bytes], list[Answer]],
) -> None:
    address, _, answers = fake_cli
    sent = 0

    async def endless(_n: int) -> AsyncIterator[bytes]:
        nonlocal sent
        line = b"/etc/haproxy/certs/a-certificate-name.pem\n" * 1000
        while sent < 16 * MAX_ANSWER_BYTES:
            sent += len(line)
            yield line

    answers.append(endless)
    with pytest.raises(HAProxyProtocolError, match="larger than"):
        await HAProxyRuntime(address, timeout=30).show_ssl_certs()
    assert sent < 4 * MAX_ANSWER_BYTES  # stopped reading, did not take it all


async def test_a_subject_quoting_the_lock_message_is_not_a_lock(
    fake_cli: tuple[str, list[bytes], list[Answer]],
) -> None:
    address, received, answers = fake_cli
    answers.append(fixed(SHOW + b"Subject: /CN=Operations on certificates are currently locked!\n"))
    info = await HAProxyRuntime(address, timeout=5).show_ssl_cert("/c/a.pem")
    assert info is not None and len(received) == 1
