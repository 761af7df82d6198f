"""A `Service` on the in-process fake CA, driven check by check without its scheduler.

For the tests of the renewal loop under faults (issue 17, findings 3, 4, 7, 8): one fake clock
for the manager, the ACME client and the CA's ``Date``; the schedule the service asks for is
recorded instead of handed to apscheduler, so a test can jump the clock to each next check and
count what the CA saw over a simulated span. `HeldTransport` is the fake CA behind a transport
that, like every real one, refuses requests once closed, and that can hold an order's finalize
until the test releases it (an order in flight, on demand).
"""

from __future__ import annotations

import asyncio
import functools
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from ca_client.client import AcmeClient
from sidecar import issuer, wiring
from sidecar.cli import build_parser
from sidecar.config import Settings, load_settings
from sidecar.service import Service
from tests.protocol.conftest import FakeClock, RecordingSolver
from tests.protocol.fake_acme import DIRECTORY_URL, FakeAcme

EVENT_DEADLINE = 30.0  # seconds; only a defect (a wait that never ends) comes near it


class LowestRandom(random.Random):
    """The backoff's jitter at its lowest: the most attempts the policy can allow."""

    def random(self) -> float:
        return 0.0


class HeldTransport(httpx.AsyncBaseTransport):
    """The fake CA, refusing requests after ``aclose`` (as `ca_client.http11` and httpcore do),
    and holding the finalize of any order for a name in ``hold`` until ``release``."""

    def __init__(self, ca: FakeAcme) -> None:
        self._ca = ca
        self.closed = False
        self.requests_after_close: list[str] = []
        self.hold: set[str] = set()
        self.at_finalize = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.closed:
            self.requests_after_close.append(str(request.url))
            raise RuntimeError("the transport is closed")
        if request.url.path.startswith("/finalize/") and self._held(request):
            self.at_finalize.set()
            await self.release.wait()
            if self.closed:
                self.requests_after_close.append(str(request.url))
                raise RuntimeError("the transport is closed")
        return await self._ca.async_handler(request)

    def _held(self, request: httpx.Request) -> bool:
        order_id = int(request.url.path.rsplit("/", 1)[1])
        order = self._ca.orders.get(order_id)
        return order is not None and any(i["value"] in self.hold for i in order.identifiers)

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Rig:
    ca: FakeAcme
    clock: FakeClock
    solver: RecordingSolver
    workdir: Path
    names: tuple[str, ...]
    scheduled: list[tuple[str, datetime]] = field(default_factory=list)
    transports: list[HeldTransport] = field(default_factory=list)
    #: names whose orders wait at finalize until ``release`` is set
    hold: set[str] = field(default_factory=set)
    at_finalize: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now, UTC)

    def settings(self, *flags: str) -> Settings:
        bundle = self.workdir / "bundle.pem"
        if not bundle.exists():
            bundle.write_bytes(trustme.CA().cert_pem.bytes())
        domains = [arg for name in self.names for arg in ("--domain", name)]
        args = build_parser().parse_args(
            [
                "run",
                "--directory",
                DIRECTORY_URL,
                "--ca-bundle",
                str(bundle),
                "--certs-dir",
                str(self.workdir / "certs"),
                "--state-dir",
                str(self.workdir / "state"),
                *domains,
                *flags,
            ]
        )
        return load_settings(args, {})

    def transport(self) -> HeldTransport:
        """A fresh transport per ACME client (each client closes its own)."""
        transport = HeldTransport(self.ca)
        transport.hold = self.hold
        transport.at_finalize = self.at_finalize
        transport.release = self.release
        self.transports.append(transport)
        return transport

    def build(self, settings: Settings, **kwargs: Any) -> wiring.Parts:
        """`wiring.build` wired to the fake CA and clock (also what a reload builds)."""
        return _REAL_BUILD(
            settings,
            **kwargs,
            now=self.now,
            rng=LowestRandom(),
            client_options={"clock": self.clock, "sleep": self.clock.sleep},
            solvers={"http-01": self.solver},
        )

    def service(self, settings: Settings) -> Service:
        service = Service(settings, parts=self.build(settings, holder="run (test)"))
        service.loop.schedule = self._record  # type: ignore[method-assign]
        return service

    def _record(self, name: str, when: datetime) -> None:
        self.scheduled.append((name, when))

    def orders(self, name: str | None = None) -> int:
        if name is None:
            return sum(1 for _, route in self.ca.requests if route == "new-order")
        return sum(
            1
            for payload in self.ca.new_order_payloads
            if any(i["value"] == name for i in payload["identifiers"])
        )


_REAL_BUILD = wiring.build


@contextmanager
def rig(*names: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """A rig for ``names``; a reload's `wiring.rebuild` builds on the same fake CA."""
    workdir = Path(tempfile.mkdtemp(prefix="loop-", dir="/tmp"))  # short: control socket path
    clock = FakeClock(now=datetime.now(UTC).timestamp())
    ca = FakeAcme(clock=clock, validate_on_response=True)
    solver = RecordingSolver()
    ca.reach(solver)
    made = Rig(ca, clock, solver, workdir, names)
    monkeypatch.setattr(wiring, "build", functools.partial(_build_for_reload, made))
    # Each ACME client the issuer opens gets a transport of its own, which it closes.
    real_client = issuer.AcmeClient

    def client(*args: Any, **kwargs: Any) -> AcmeClient:
        return real_client(*args, **{**kwargs, "transport": made.transport()})

    monkeypatch.setattr(issuer, "AcmeClient", client)
    try:
        yield made
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _build_for_reload(rig: Rig, settings: Settings, **kwargs: Any) -> wiring.Parts:
    kwargs.pop("now", None)
    kwargs.pop("rng", None)
    kwargs.pop("client_options", None)
    kwargs.pop("solvers", None)
    return rig.build(settings, **kwargs)
