"""Floods against the responders while the real step-ca 0.19 validates through them.

The attacker is its own process (``tests/peers/flood.py``) bound to 127.0.3.N; step-ca's
validation connections to the leased 127.0.1.N leave from 127.0.0.1 (the kernel's source for
the ``lo`` route), so the responder sees two sources, as on a real network. Before the fix, the
responders had one global cap of 512 that refused newcomers and let each connection live 10 s:
520 half-sent requests kept step-ca out, and these tests failed with the CA's connection error.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ca_client.challenges import Http01Responder, TlsAlpn01Responder
from ca_client.models import Identifier
from tests.integration.test_challenges_stepca import _obtain, _san_names
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA

pytestmark = [pytest.mark.anyio, pytest.mark.stepca]

REPO_ROOT = Path(__file__).resolve().parents[2]
HELD = 520  # more than the old global cap of 512
# Enough for the attacker to be holding its connections when step-ca arrives: the new code keeps
# 128 per source (the old one 512 in all).
HOLDING = 120


def attacker_source(lease: LoopbackLease) -> str:
    return f"127.0.3.{lease.index}"


@asynccontextmanager
async def flooding(
    mode: str,
    target: str,
    source: str,
    connections: int,
    interval: float,
    log: Path,
    sources: int = 1,
) -> AsyncIterator[dict[str, Any]]:
    """Run the attacker until the block ends; yields a dict that gets its final counts."""
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.peers.flood",
            mode,
            "--target",
            target,
            "--source",
            source,
            "--connections",
            str(connections),
            "--interval",
            str(interval),
            "--sources",
            str(sources),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdout is not None
    stats: dict[str, Any] = {}
    try:
        async with asyncio.timeout(90):
            line = await process.stdout.readline()
        assert json.loads(line or b"{}").get("ready"), f"attacker not ready: {log.read_text()}"
        yield stats
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            async with asyncio.timeout(30):
                stats.update(json.loads((await process.stdout.readline()) or b"{}"))
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def _wait_for_connections(
    responder: Http01Responder | TlsAlpn01Responder, count: int
) -> None:
    async with asyncio.timeout(60):
        while len(responder._connections) < count:
            await asyncio.sleep(0.02)


class LoopLag:
    """How late the event loop wakes a 10 ms sleeper: worst and mean, while running."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.total = 0.0
        self.samples = 0

    @property
    def mean(self) -> float:
        return self.total / self.samples if self.samples else 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(0.01)
            late = loop.time() - started - 0.01
            self.worst = max(self.worst, late)
            self.total += late
            self.samples += 1


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
async def test_validation_succeeds_while_one_address_holds_hundreds_of_requests(
    step_ca: StepCA, loopback: LoopbackLease, challenge: str, tmp_path: Path
) -> None:
    responder: Http01Responder | TlsAlpn01Responder
    if challenge == "http-01":
        responder, port, mode = Http01Responder(loopback.address, 80), 80, "http-half"
    else:
        responder, port, mode = TlsAlpn01Responder(loopback.address, 443), 443, "tls-half"
    name = loopback.names[0]
    async with responder:
        async with flooding(
            mode,
            f"{loopback.address}:{port}",
            attacker_source(loopback),
            HELD,
            0.25,  # reconnect 250 ms after each close: holding, not a CPU-burning connect loop
            tmp_path / "attacker.log",
        ) as stats:
            await _wait_for_connections(responder, HOLDING)
            started = time.monotonic()
            issued = await _obtain(step_ca, [Identifier.dns(name)], {challenge: responder})
            elapsed = time.monotonic() - started
            # The flood was on throughout: the attacker still holds its share.
            assert len(responder._connections) >= HOLDING
        assert _san_names(issued) == {name}
    print(f"{challenge}: issued under flood in {elapsed:.2f} s; attacker {stats}")
    assert stats["connects"] >= HELD


async def test_slow_one_byte_records_do_not_take_the_event_loop(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    # Each attacker connection sends a ClientHello announcing 65,000 bytes as 1-byte records,
    # one every 5 ms. Re-parsing everything on each read made 24 of them delay the loop by
    # ~0.8 s and take a whole core; parsed once with a record cap, they cost little.
    name = loopback.names[1]
    lag = LoopLag()
    async with (
        TlsAlpn01Responder(loopback.address, 443) as responder,
        flooding(
            "tls-slow",
            f"{loopback.address}:443",
            attacker_source(loopback),
            24,
            0.005,
            tmp_path / "attacker.log",
        ) as stats,
    ):
        monitor = asyncio.create_task(lag.run())
        try:
            cpu_before, wall_before = time.process_time(), time.monotonic()
            await asyncio.sleep(3.0)  # the flood alone, for the loop-lag measurement
            issued = await _obtain(step_ca, [Identifier.dns(name)], {"tls-alpn-01": responder})
            await asyncio.sleep(1.0)
            cpu = time.process_time() - cpu_before
            wall = time.monotonic() - wall_before
        finally:
            monitor.cancel()
    assert _san_names(issued) == {name}
    print(
        f"slow records: loop lag worst {lag.worst * 1000:.0f} ms, mean {lag.mean * 1000:.1f} ms "
        f"over {lag.samples} samples; this process used {cpu:.2f} s CPU in {wall:.2f} s; "
        f"attacker {stats}"
    )
    # Generous bounds, for a loaded 2-core machine where any wake-up can be tens of ms late.
    # Before the fix (re-parsing on every read): worst 0.69-0.89 s, mean ~0.1 s (96 samples in
    # 11.6 s); after: worst ~0.05 s, mean a few ms.
    assert lag.samples > 50
    assert lag.mean < 0.04
    assert lag.worst < 0.5
