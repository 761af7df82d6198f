"""Validation under a flood, and what each attacker connection costs the responders.

The responders run in this process on 127.0.0.1:80 and :443 (the bench names resolve there),
a private step-ca validates through them, and the attacker (``tests/peers/flood.py``, its own
process) connects from 127.0.3.1, a different source, as on a real network. Phases, for
http-01 and tls-alpn-01:

1. ``--validations`` certificates, one after another, no flood: wall time of each ``obtain``
   (new order, validation, finalize, download);
2. the attacker holds 520 half-sent requests (reconnecting 250 ms after each close) for
   ``--seconds``: this process's CPU (user+sys) and the loop's worst lag, divided by the
   attacker's connections;
3. the same flood, and ``--validations`` certificates again: how many succeed, how long each
   took;
4. tls-alpn-01 only: 24 connections sending a ClientHello as 1-byte TLS records, one every
   5 ms, for ``--seconds``: CPU, CPU per attacker connection, worst loop lag.

To measure the code before the fix, run the same script from a checkout of that code (copy
``bench/flood.py`` and ``tests/peers/flood.py`` into it): the responders are imported from the
tree the script lives in.

Usage: .venv/bin/python bench/flood.py [--validations 5] [--seconds 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from _common import (
    OUT_DIR,
    REPO_ROOT,
    bench_lock,
    bench_names,
    machine_summary,
    step_ca,
)

import ca_client
from ca_client.challenges import Http01Responder, TlsAlpn01Responder
from ca_client.client import AcmeClient
from ca_client.errors import AcmeError
from ca_client.keys import KeyType, generate_private_key
from ca_client.models import Identifier

ATTACKER = "127.0.3.1"
HELD = 520


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoopLag:
    """How late a 10 ms sleeper wakes: the worst and the mean delay."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.total = 0.0
        self.samples = 0

    def reset(self) -> None:
        self.worst, self.total, self.samples = 0.0, 0.0, 0

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


@asynccontextmanager
async def attacker(
    mode: str, port: int, connections: int, interval: float, log: Path
) -> AsyncIterator[dict[str, Any]]:
    stats: dict[str, Any] = {}
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.peers.flood",
            mode,
            "--target",
            f"127.0.0.1:{port}",
            "--source",
            ATTACKER,
            "--connections",
            str(connections),
            "--interval",
            str(interval),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(120):
            ready = json.loads((await process.stdout.readline()) or b"{}")
        if not ready.get("ready"):
            raise RuntimeError(f"attacker not ready; see {log}")
        yield stats
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(60):
            stats.update(json.loads((await process.stdout.readline()) or b"{}"))
            await process.wait()


async def validations(
    client: AcmeClient, solver: object, challenge: str, names: list[str]
) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    failures: list[str] = []
    for name in names:
        started = time.monotonic()
        try:
            await client.obtain(
                [Identifier.dns(name)],
                generate_private_key(KeyType.EC_P256),
                solvers={challenge: solver},  # type: ignore[dict-item]
                timeout=60.0,
            )
        except AcmeError as exc:
            failures.append(str(exc).splitlines()[0][:160])
            continue
        latencies.append(time.monotonic() - started)
    return latencies, failures


def summary(latencies: list[float], failures: list[str], total: int) -> dict[str, Any]:
    return {
        "succeeded": f"{len(latencies)}/{total}",
        "median_s": round(statistics.median(latencies), 3) if latencies else None,
        "max_s": round(max(latencies), 3) if latencies else None,
        "first_failure": failures[0] if failures else None,
    }


async def flood_cost(
    mode: str, port: int, connections: int, interval: float, seconds: float, log: Path
) -> dict[str, Any]:
    lag = LoopLag()
    monitor = asyncio.create_task(lag.run())
    # CPU over the attacker's whole life (all its connections); loop lag only while it holds
    # them (not its start, nor its exit, when hundreds of sockets close at once).
    cpu_before = cpu_seconds()
    try:
        async with attacker(mode, port, connections, interval, log) as stats:
            lag.reset()
            await asyncio.sleep(seconds)
            monitor.cancel()
    finally:
        monitor.cancel()
    cpu = cpu_seconds() - cpu_before
    connects = int(stats.get("connects", 0))
    return {
        "mode": mode,
        "attacker_connections": connects,
        "cpu_s": round(cpu, 3),
        "cpu_per_attacker_connection_ms": round(1000 * cpu / connects, 3) if connects else None,
        "worst_loop_lag_ms": round(lag.worst * 1000, 1),
        "mean_loop_lag_ms": round(lag.mean * 1000, 1),
        "attacker_cpu_s": stats.get("cpu_seconds"),
        "attacker_kib_sent": round(int(stats.get("bytes_sent", 0)) / 1024, 1),
        "cpu_per_attacker_kib_ms": (
            round(1000 * cpu * 1024 / stats["bytes_sent"], 3) if stats.get("bytes_sent") else None
        ),
    }


async def run(ca_url: str, ssl_context: Any, args: argparse.Namespace) -> dict[str, Any]:
    names = list(bench_names(4 * args.validations))
    results: dict[str, Any] = {}
    out = OUT_DIR / "flood"
    out.mkdir(parents=True, exist_ok=True)
    async with AcmeClient(
        ca_url, generate_private_key(KeyType.EC_P256), ssl_context=ssl_context
    ) as client:
        await client.ensure_account()
        for challenge, port, mode in (
            ("http-01", 80, "http-half"),
            ("tls-alpn-01", 443, "tls-half"),
        ):
            responder: Http01Responder | TlsAlpn01Responder = (
                Http01Responder("127.0.0.1", 80)
                if challenge == "http-01"
                else TlsAlpn01Responder("127.0.0.1", 443)
            )
            result: dict[str, Any] = {}
            async with responder:
                batch, names = names[: args.validations], names[args.validations :]
                result["no_flood"] = summary(
                    *await validations(client, responder, challenge, batch), len(batch)
                )
                result["hold_flood_cost"] = await flood_cost(
                    mode, port, HELD, 0.25, args.seconds, out / f"{mode}-cost.log"
                )
                batch, names = names[: args.validations], names[args.validations :]
                async with attacker(mode, port, HELD, 0.25, out / f"{mode}.log") as stats:
                    await asyncio.sleep(1.0)  # the attacker holds what it can
                    measured = await validations(client, responder, challenge, batch)
                result["under_hold_flood"] = summary(*measured, len(batch))
                result["under_hold_flood"]["attacker_connections"] = stats.get("connects")
                if challenge == "tls-alpn-01":
                    result["slow_records_cost"] = await flood_cost(
                        "tls-slow", port, 24, 0.005, args.seconds, out / "tls-slow.log"
                    )
            results[challenge] = result
            print(challenge, json.dumps(result, indent=2), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validations", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    print(machine_summary())
    print(f"responders from {Path(ca_client.__file__).parent.parent}")
    with bench_lock(), step_ca("flood") as ca:
        results = asyncio.run(run(ca.directory_url, ca.ssl_context(), args))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
