"""No failure of a check, however unexpected, retries sooner than the backoff (issue 17,
finding 3).

A CA answered 429 with ``Retry-After: ²`` (``"²".isdigit()`` is true, ``int("²")`` raises) or
with 21 digits (too large for ``timedelta``). Either way the check was logged as crashed, no
backoff was stored, and the certificate was checked again 100 ms later: 59 orders in 6 s.
Here the service is driven check by check on a fake clock, jumping to each next check it asks
for, and the orders over a simulated span are counted against what the backoff allows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from sidecar import policy
from sidecar.outcome import Action
from sidecar.service import Service
from tests.protocol.service_rig import LowestRandom, Rig, rig

pytestmark = pytest.mark.anyio

NAME = "loop.example"
SPAN = timedelta(minutes=10)
MAX_CHECKS = 400  # far above any backoff's count over SPAN; a 100 ms loop reaches it


def _rate_limited(retry_after: bytes) -> httpx.Response:
    return httpx.Response(
        429,
        json={"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"},
        headers=[(b"Content-Type", b"application/problem+json"), (b"Retry-After", retry_after)],
    )


async def _drive(r: Rig, service: Service, span: timedelta) -> int:
    """Check, jump the clock to the next check asked for, repeat until ``span`` is over;
    returns the number of checks."""
    end = r.now() + span
    checks = 0
    while r.now() < end and checks < MAX_CHECKS:
        await service.loop.check(NAME)
        checks += 1
        (name, when) = r.scheduled[-1]
        assert name == NAME
        r.clock.now = max(r.clock.now, when.timestamp())
    return checks


def _allowed_orders(span: timedelta, retry_after: timedelta | None) -> int:
    """How many attempts the backoff allows in ``span`` (no certificate yet: no time-left
    cap), with the jitter at its lowest."""
    start = datetime(2030, 1, 1)
    at, attempts = start, 0
    while at < start + span:
        attempts += 1
        at += policy.next_retry_delay(attempts, at, None, LowestRandom(), retry_after=retry_after)
    return attempts


@pytest.mark.parametrize(
    ("retry_after", "honoured"),
    [
        # "²" as the byte 0xB2 on the wire (read as Latin-1): no delay-seconds, so no hint.
        (b"\xb2", None),
        (b"9" * 21, policy.MAX_RETRY_DELAY),  # past timedelta: clamped, then the hour cap
    ],
    ids=["superscript-two", "21-digits"],
)
async def test_a_429_with_an_odd_retry_after_is_retried_at_the_backoff(
    monkeypatch: pytest.MonkeyPatch, retry_after: bytes, honoured: timedelta | None
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        r.ca.fail_times("new-order", 10**6, lambda: _rate_limited(retry_after))
        service = r.service(r.settings())
        try:
            await _drive(r, service, SPAN)
            meta = service.manager.inventory.load_meta(NAME)
        finally:
            await service.manager.aclose()
    allowed = _allowed_orders(SPAN, honoured)
    assert r.orders() == allowed, (r.orders(), allowed)
    assert allowed <= 8  # 5, 5, 10, 20, ... s apart; one order an hour for the clamped value
    # Each failure went through the one path that stores the backoff.
    assert meta.failures == allowed
    assert meta.next_retry_at is not None and meta.next_retry_at > r.now() - SPAN
    assert meta.last_error is not None and "slow down" in meta.last_error


@pytest.mark.parametrize(
    "where",
    [
        "issuer.obtain",  # inside the order: the step that expects only CA and disk errors
        "manager.inspect",  # before the order, and again where the failure is recorded
        "manager.ensure",  # escaping the manager altogether, caught by the service
    ],
)
async def test_an_unexpected_exception_backs_off_and_is_persisted(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        service = r.service(r.settings())
        manager = service.manager
        owner, attribute = where.split(".")
        target = manager if owner == "manager" else manager.issuer
        real = getattr(target, attribute)
        broken = [True]

        def bug(*args: Any, **kwargs: Any) -> Any:
            if broken[0]:
                raise KeyError("a bug")
            return real(*args, **kwargs)

        monkeypatch.setattr(target, attribute, bug)
        try:
            started = r.now()
            with capture_logs() as logs:
                outcome = await service.loop.check(NAME)
            assert outcome is not None
            # The traceback is logged once, for the certificate, by whoever caught it.
            (crash,) = [entry for entry in logs if entry["event"] == "cert_check_crashed"]
            assert crash["cert"] == NAME and crash["log_level"] == "error"
            assert "exc_info" in crash
            if where == "issuer.obtain":  # inside the order: it says why it was ordered
                assert outcome.reason == "missing", outcome
            assert outcome.action is Action.FAILED, outcome
            (_, when) = r.scheduled[-1]
            first = policy.next_retry_delay(1, started, None, LowestRandom())
            # Not 100 ms later: at least the normal first backoff.
            assert when - started >= first, (when, started)
            assert outcome.next_retry_at == when
            # Stored in the state directory, as any failure's backoff is: a restart waits too.
            stored = manager.store.load_meta(NAME)
            assert stored is not None
            assert stored.failures == 1
            assert stored.next_retry_at == outcome.next_retry_at
            assert "a bug" in (stored.last_error or "")
            if where != "manager.ensure":
                # The next check before that time orders nothing: it waits.
                broken[0] = False
                again = await service.loop.check(NAME)
                assert again is not None and again.action is Action.WAITING, again
                assert r.orders() == 0
        finally:
            await manager.aclose()


@asynccontextmanager
async def _service(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Rig, Service]]:
    """A service on the rig, its ACME client closed at the end."""
    with rig(NAME, monkeypatch=monkeypatch) as r:
        service = r.service(r.settings())
        try:
            yield r, service
        finally:
            await service.manager.aclose()


async def test_a_crash_with_a_certificate_deployed_keeps_its_expiry_and_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The crashed check's outcome says what the renewal loop needs, as every other outcome
    # does: the deployed certificate's expiry (which caps the backoff), its lifetime and its
    # next renewal.
    async with _service(monkeypatch) as (_, service):
        manager = service.manager
        issued = await service.loop.check(NAME)
        assert issued is not None and issued.action is Action.ISSUED, issued
        (spec,) = service.settings.certificates
        view = manager.inspect(spec)

        def bug(*args: Any, **kwargs: Any) -> Any:
            raise KeyError("a bug")

        monkeypatch.setattr(manager, "ensure", bug)
        with capture_logs() as logs:
            outcome = await service.loop.check(NAME)
    assert outcome is not None and outcome.action is Action.FAILED, outcome
    facts = view.facts
    assert facts is not None and view.is_real
    assert outcome.not_after == facts.not_after
    assert outcome.lifetime == facts.not_after - facts.not_before
    assert outcome.next_renewal is not None and outcome.next_renewal == view.next_renewal
    (failed,) = [entry for entry in logs if entry["event"] == "cert_renewal_failed"]
    assert failed["cert"] == NAME and "a bug" in failed["error"]


async def test_a_crash_over_a_placeholder_has_no_expiry_to_protect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A placeholder's expiry is not a deployed certificate's: nothing for the backoff to keep.
    async with _service(monkeypatch) as (r, service):
        (spec,) = service.settings.certificates
        assert await service.manager.ensure_placeholder(spec)
        outcome = service.manager.crashed(spec, KeyError("a bug"), record=True)
    assert outcome.action is Action.FAILED
    assert outcome.not_after is None and outcome.lifetime is None
    first = policy.next_retry_delay(1, r.now(), None, LowestRandom())
    assert outcome.next_retry_at == r.now() + first
