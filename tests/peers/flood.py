"""A hostile client for flood tests and ``bench/flood.py``: run as its own process.

``python -m tests.peers.flood MODE --target HOST:PORT --source ADDRESS --connections N``

Every connection is bound to ``--source``, a loopback address other than 127.0.0.1 (with
``--sources N``, connection i to ``--source`` + i mod N: one connection from each of many
sources, as an attacker holding an IPv6 /48 can): step-ca's
validation connections to 127.0.1.N leave from 127.0.0.1 (the kernel's choice for the ``lo``
route, ``ip route get 127.0.1.N`` says ``src 127.0.0.1``), so the responder sees the attacker
and the CA as two different sources, as it would on a real network.

Modes:
- ``http-half``: each connection sends the start of an HTTP request head and never finishes it.
- ``tls-half``: each connection sends the first bytes of a ClientHello record and stops.
- ``tls-slow``: each connection sends a ClientHello announcing 65,000 bytes as 1-byte TLS
  records, one every ``--interval`` seconds.

Whenever the server closes a connection, the attacker opens a new one (after ``--interval``, so
that it holds its connections rather than burning CPU on a reconnect loop). It prints one JSON
line ``{"ready": true}`` once every connection has been opened once, and on SIGTERM/SIGINT (or
after ``--duration``) a JSON line of counts and its own CPU time, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import resource
import signal
import socket
import sys
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MODES", "FloodStats", "main", "payload_chunks"]

MODES = ("http-half", "tls-half", "tls-slow")
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass
class FloodStats:
    connects: int = 0
    connect_failures: int = 0
    closed_by_server: int = 0
    bytes_sent: int = 0
    cpu_seconds: float = 0.0


def payload_chunks(mode: str) -> tuple[bytes, int]:
    """What one connection writes: (first write, number of further 1-record writes)."""
    if mode == "http-half":
        return b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: a\r\nX-Slow: ", 0
    if mode == "tls-half":
        return b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 0
    # A handshake header announcing a 65,000-byte ClientHello, then one body byte per record.
    header = b"\x01" + (65000).to_bytes(3, "big")
    first = b"".join(b"\x16\x03\x01\x00\x01" + bytes([byte]) for byte in header)
    return first, 65000


async def _connect(host: str, port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Let connect() pick the source port per destination: thousands of reconnects from one
        # bound address would otherwise exhaust the ephemeral ports that bind() hands out.
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _one_connection(
    mode: str,
    host: str,
    port: int,
    source: str,
    interval: float,
    stats: FloodStats,
    opened: asyncio.Event,
) -> None:
    first, slow_records = payload_chunks(mode)
    while True:
        try:
            async with asyncio.timeout(10):
                sock = await _connect(host, port, source)
            reader, writer = await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError):
            stats.connect_failures += 1
            await asyncio.sleep(max(interval, 0.05))
            continue
        stats.connects += 1
        opened.set()
        try:
            writer.write(first)
            stats.bytes_sent += len(first)
            read = asyncio.ensure_future(reader.read(65536))
            for index in range(slow_records):
                done, _ = await asyncio.wait({read}, timeout=interval)
                if done:
                    break
                writer.write(b"\x16\x03\x01\x00\x01" + bytes([index & 0xFF]))
                stats.bytes_sent += 6
            # Hold the connection until the server ends it (alert, 408, reset or close).
            while await read:
                read = asyncio.ensure_future(reader.read(65536))
        except OSError:
            pass
        finally:
            stats.closed_by_server += 1
            writer.transport.abort()
        await asyncio.sleep(interval)


async def flood(
    mode: str,
    target: tuple[str, int],
    source: str,
    connections: int,
    interval: float,
    duration: float | None,
    sources: int = 1,
) -> FloodStats:
    stats = FloodStats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    events = [asyncio.Event() for _ in range(connections)]
    first = ipaddress.ip_address(source)
    tasks = [
        asyncio.create_task(
            _one_connection(
                mode, *target, str(first + index % sources), interval, stats, events[index]
            )
        )
        for index in range(connections)
    ]
    try:
        ready: asyncio.Future[Any] = asyncio.gather(*(event.wait() for event in events))
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ready, stopped}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        print(json.dumps({"ready": ready.done()}), flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats.cpu_seconds = usage.ru_utime + usage.ru_stime
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.peers.flood")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--source", required=True, help="address to connect from")
    parser.add_argument("--connections", type=int, default=520)
    parser.add_argument("--sources", type=int, default=1, help="spread over this many addresses")
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--duration", type=float, default=None)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.connections + 64)), hard)
    )
    stats = asyncio.run(
        flood(
            args.mode,
            (host, int(port)),
            args.source,
            args.connections,
            args.interval,
            args.duration,
            args.sources,
        )
    )
    print(json.dumps(asdict(stats)), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
