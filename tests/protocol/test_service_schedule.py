"""`cert-sidecar run`'s service loop, in process, on the in-process fake CA: how often it looks
at a certificate, and the clock-skew warning (docs/commands.md "How renewal works").

The Service gets parts wired to the fake CA (``Service(parts=...)``); everything else is
the real loop: health server, control socket, CA bundle watch, apscheduler jobs. Waits are tied
to log events with generous deadlines.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme

from sidecar import pem, policy, wiring
from sidecar.cli import build_parser
from sidecar.config import load_settings
from sidecar.outcome import Action, Outcome
from sidecar.service import CLOCK_SKEW_WARNING, MAX_CONCURRENT_CHECKS, Service
from tests.peers.processes import free_port
from tests.protocol.conftest import RecordingSolver
from tests.protocol.fake_acme import DIRECTORY_URL, FakeAcme

pytestmark = pytest.mark.anyio

NAME = "svc.example"
EVENT_DEADLINE = 60.0  # seconds; an idle machine needs well under one


@dataclass
class Running:
    service: Service
    logs: list[MutableMapping[str, Any]]
    certs: Path
    health_port: int

    def events(self, name: str) -> list[MutableMapping[str, Any]]:
        return [entry for entry in self.logs if entry.get("event") == name]

    async def wait_for(self, what: str, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + EVENT_DEADLINE
        while not predicate():
            if time.monotonic() > deadline:
                names = [entry.get("event") for entry in self.logs]
                raise AssertionError(f"timed out waiting for {what}; events: {names}")
            await asyncio.sleep(0.02)

    def metrics(self) -> str:
        """Blocking: call through asyncio.to_thread (the health server runs on this loop)."""
        url = f"http://127.0.0.1:{self.health_port}/metrics"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=10) as response:
            return str(response.read().decode())


@asynccontextmanager
async def running_service(ca: FakeAcme) -> AsyncIterator[Running]:
    # Short: the control socket's path must fit in 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="svc-", dir="/tmp"))
    try:
        bundle = workdir / "bundle.pem"
        bundle.write_bytes(trustme.CA().cert_pem.bytes())
        health_port = free_port()
        args = build_parser().parse_args(
            [
                "run",
                "--directory",
                DIRECTORY_URL,
                "--ca-bundle",
                str(bundle),
                "--certs-dir",
                str(workdir / "certs"),
                "--state-dir",
                str(workdir / "state"),
                "--domain",
                NAME,
                "--health-listen",
                f"127.0.0.1:{health_port}",
            ]
        )
        settings = load_settings(args, {})
        solver = RecordingSolver()
        ca.reach(solver)
        parts = wiring.build(
            settings,
            holder="run (test)",
            client_options={"transport": ca.transport()},
            solvers={"http-01": solver},
        )
        service = Service(settings, parts=parts)
        with structlog.testing.capture_logs() as logs:
            task = asyncio.ensure_future(service.run())
            running = Running(service, logs, workdir / "certs", health_port)
            try:
                await running.wait_for(
                    "the service to start",
                    lambda: bool(running.events("service_starting")) or task.done(),
                )
                yield running
            finally:
                service._on_signal(signal.SIGTERM)
                assert await asyncio.wait_for(task, EVENT_DEADLINE) == 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _issued_then_scheduled(running: Running) -> bool:
    names = [entry.get("event") for entry in running.logs]
    return (
        "cert_issued" in names and "cert_renewal_scheduled" in names[names.index("cert_issued") :]
    )


async def test_run_looks_at_a_certificate_every_hundredth_of_its_lifetime() -> None:
    ca = FakeAcme(clock=time.time, validate_on_response=True)
    started = datetime.now(UTC)
    async with running_service(ca) as running:
        await running.wait_for(
            "the first certificate and its next check", lambda: _issued_then_scheduled(running)
        )
        observed = datetime.now(UTC)
        names = [entry.get("event") for entry in running.logs]
        scheduled = running.logs[names.index("cert_renewal_scheduled", names.index("cert_issued"))]
        facts = pem.describe_cert(
            pem.parse_combined((running.certs / f"{NAME}.pem").read_bytes()).leaf
        )
    at = datetime.fromisoformat(scheduled["next_check"])
    interval = policy.check_interval(facts.not_after - facts.not_before)  # 36 s for an hour
    renewal = policy.facts_renewal_time(facts, policy.DEFAULT_RENEW_AT)
    # The renewal itself is over half an hour away; the next look is one interval away.
    assert renewal - observed > 10 * interval
    assert started + interval <= at <= observed + interval, (at, started, observed)


@pytest.mark.parametrize("offset", [30.0, -30.0, 2.0])
async def test_run_warns_when_the_ca_clock_disagrees_by_more_than_5_s(offset: float) -> None:
    ca = FakeAcme(clock=time.time, validate_on_response=True, date_offset=offset)
    async with running_service(ca) as running:
        # The outcome is recorded (skew included) before the next check is scheduled.
        await running.wait_for(
            "the first certificate and its next check", lambda: _issued_then_scheduled(running)
        )
        metrics = await asyncio.to_thread(running.metrics)
        warnings = running.events("clock_skew")
    (line,) = [
        line for line in metrics.splitlines() if line.startswith("cert_sidecar_clock_skew_seconds")
    ]
    skew = float(line.split()[-1])
    # The Date header has whole seconds: the skew seen is within a second of the offset.
    assert abs(skew - offset) <= 1.0, line
    if abs(offset) > CLOCK_SKEW_WARNING:
        assert warnings, "no clock_skew warning"
        assert all(entry["log_level"] == "warning" for entry in warnings)
        assert abs(warnings[0]["seconds"] - offset) <= 1.0
    else:
        assert warnings == []


async def test_a_pass_over_many_certificates_reads_at_most_max_concurrent_checks_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each check holds a lock file open and parsed state while it waits for an order slot;
    # a pass over 1,000 certificates must not hold 1,000 of them (file descriptors, memory).
    ca = FakeAcme(clock=time.time, validate_on_response=True)
    async with running_service(ca) as running:
        service = running.service
        spec = service.settings.certificates[0]
        in_flight = most = 0
        release = asyncio.Event()

        async def ensure(*_args: Any, **_kwargs: Any) -> Outcome:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await release.wait()
            in_flight -= 1
            return Outcome(spec.name, Action.UNCHANGED, ok=True)

        monkeypatch.setattr(service.manager, "ensure", ensure)
        monkeypatch.setattr(service.loop, "schedule", lambda *_args: None)
        checks = [
            asyncio.ensure_future(service.loop.check_locked(spec, force=False, dry_run=True))
            for _ in range(MAX_CONCURRENT_CHECKS * 3)
        ]
        await running.wait_for("the checks to start", lambda: most >= MAX_CONCURRENT_CHECKS)
        for _ in range(20):
            await asyncio.sleep(0)  # let any check that is not bounded start too
        assert most == MAX_CONCURRENT_CHECKS
        release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*checks), EVENT_DEADLINE)
    assert len(outcomes) == MAX_CONCURRENT_CHECKS * 3
