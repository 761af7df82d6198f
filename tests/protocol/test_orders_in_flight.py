"""Orders in flight across a CA-bundle change and a config reload (issue 17, findings 4 and 7).

Finding 4: a bundle change closed the ACME client with no lock taken; the next request of an
order in flight raised ``RuntimeError('the transport is closed')`` and the order was abandoned,
possibly after finalize. Here an order waits at finalize (the transport holds it) while the
bundle rotates, or a reload points ``ca_bundle`` at a new file; then it must complete on the
client it started with, the certificate be written, and that client be closed after it.

Finding 7: a reload took every certificate's lock, one at a time, so a check that came due
while it waited for an unrelated slow order waited for that order too. Here the reload (and a
check that comes due during it) must finish while the slow order is still held.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trustme

from sidecar import wiring
from sidecar.outcome import Action
from tests.protocol.service_rig import EVENT_DEADLINE, Rig, rig

pytestmark = pytest.mark.anyio

SLOW = "slow.example"
OTHER = "other.example"


def _pem(r: Rig, name: str) -> bytes:
    return (r.workdir / "certs" / f"{name}.pem").read_bytes()


@pytest.mark.parametrize("change", ["rotated", "reload"])
async def test_an_order_in_flight_completes_across_a_ca_bundle_change(
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    with rig(SLOW, monkeypatch=monkeypatch) as r:
        settings = r.settings("--no-placeholder")
        service = r.service(settings)
        await service.bundle.look()  # the bundle is ready: the watch's first look
        assert service.bundle.ready.is_set()
        r.hold.add(SLOW)
        check = asyncio.ensure_future(service.loop.check(SLOW))
        try:
            await asyncio.wait_for(r.at_finalize.wait(), EVENT_DEADLINE)
            (in_flight,) = r.transports
            if change == "rotated":
                # The CA rotated its roots: same file, new content.
                settings.acme.ca_bundle.write_bytes(trustme.CA().cert_pem.bytes())
                await asyncio.wait_for(service.bundle.look(), EVENT_DEADLINE)
            else:
                moved = r.workdir / "bundle2.pem"
                moved.write_bytes(trustme.CA().cert_pem.bytes())
                new = r.settings("--no-placeholder", "--ca-bundle", str(moved))
                assert await asyncio.wait_for(service.reload.apply(new), EVENT_DEADLINE)
            assert not check.done()
            r.release.set()
            outcome = await asyncio.wait_for(check, EVENT_DEADLINE)
            written = _pem(r, SLOW)
        finally:
            r.release.set()
            await wiring.close(service.parts)
    assert outcome is not None and outcome.action is Action.ISSUED, outcome
    assert b"BEGIN CERTIFICATE" in written
    assert in_flight.requests_after_close == []
    # The client the order used was closed after it (not leaked).
    assert in_flight.closed


async def test_a_check_due_during_a_reload_does_not_wait_for_an_unrelated_slow_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OTHER sorts before SLOW: the old reload held OTHER's lock while it waited for SLOW's.
    assert OTHER < SLOW
    with rig(OTHER, SLOW, monkeypatch=monkeypatch) as r:
        settings = r.settings("--no-placeholder")
        service = r.service(settings)
        await service.bundle.look()
        first = await service.loop.check(OTHER)
        assert first is not None and first.action is Action.ISSUED, first
        r.hold.add(SLOW)
        slow = asyncio.ensure_future(service.loop.check(SLOW))
        events: list[str] = []
        # The reload pauses while it builds, so that OTHER's check comes due during it.
        building, go_on = asyncio.Event(), asyncio.Event()
        real_rebuild = wiring.rebuild

        async def rebuild(*args: Any, **kwargs: Any) -> wiring.Parts:
            building.set()
            await go_on.wait()
            parts = await real_rebuild(*args, **kwargs)
            events.append("swap")
            return parts

        monkeypatch.setattr(wiring, "rebuild", rebuild)
        try:
            await asyncio.wait_for(r.at_finalize.wait(), EVENT_DEADLINE)
            new = r.settings("--no-placeholder", "--renew-at", "0.5")
            reload = asyncio.ensure_future(service.reload.apply(new))
            due = asyncio.ensure_future(service.loop.check(OTHER))  # comes due during the reload
            try:
                await asyncio.wait_for(building.wait(), EVENT_DEADLINE)
            finally:
                go_on.set()
            other = await asyncio.wait_for(due, EVENT_DEADLINE)
            events.append("other checked")
            assert await asyncio.wait_for(reload, EVENT_DEADLINE)
            assert not slow.done()  # the slow order is still held at finalize
            events.append("slow released")
            r.release.set()
            slow_outcome = await asyncio.wait_for(slow, EVENT_DEADLINE)
            written = _pem(r, SLOW)
        finally:
            r.release.set()
            go_on.set()
            await wiring.close(service.parts)
    assert events == ["swap", "other checked", "slow released"]
    assert other is not None and other.action is Action.UNCHANGED, other
    # The check that came due ran on the new parts; the slow order finished on the old ones.
    assert service.settings is new
    assert slow_outcome is not None and slow_outcome.action is Action.ISSUED, slow_outcome
    assert b"BEGIN CERTIFICATE" in written
    assert all(t.requests_after_close == [] for t in r.transports)
