"""The renewal loop in its own module (issue 18, items 1 and 4): what follows any outcome is the
loop's, it reads nothing back from the manager, and the hand-off needs only what it is given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sidecar import policy
from sidecar.cli import build_parser
from sidecar.config import CertificateSpec, load_settings
from sidecar.handoff import Handoff
from sidecar.outcome import Action, Outcome
from sidecar.renewal_loop import CLOCK_SKEW_WARNING, next_check_time
from sidecar.service import Service

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
# An hour-long certificate is looked at every 36 s (1/100 of its lifetime).
INTERVAL = policy.check_interval(HOUR)


def _service(tmp_path: Path) -> Service:
    flags = [
        "check-config",
        "--directory",
        "https://ca.example/acme/directory",
        "--ca-bundle",
        str(tmp_path / "root.pem"),
        "--certs-dir",
        str(tmp_path / "certs"),
        "--state-dir",
        str(tmp_path / "state"),
        "--domain",
        "a.example",
    ]
    return Service(load_settings(build_parser().parse_args(flags), {}))


def test_the_loop_records_the_cas_error_and_skew_the_outcome_carries(tmp_path: Path) -> None:
    service = _service(tmp_path)
    # What the issuer says now is not what this step saw: the outcome is the one source.
    service.manager.issuer.last_error = "an older error"
    service.manager.issuer.clock_skew = 0.0
    failed = Outcome.failed("a.example", "refused", ca_error="connection refused", clock_skew=42.0)
    with capture_logs() as logs:
        service.loop.record(failed)
    assert service.metrics.ca_error == "connection refused"
    assert service.metrics.clock_skew == 42.0
    assert [e["seconds"] for e in logs if e["event"] == "clock_skew"] == [42.0]
    assert CLOCK_SKEW_WARNING < 42.0

    # A failure that did not come from the CA leaves its reachability as it was.
    service.loop.record(Outcome("a.example", Action.ISSUED, ok=True))
    service.loop.record(Outcome.failed("a.example", "disk full"))
    assert service.metrics.ca_error is None


@pytest.mark.parametrize(
    ("outcome", "when", "target", "why"),
    [
        # A real certificate: the renewal time, looked at every 1/100 of the lifetime before.
        (
            Outcome("a", Action.UNCHANGED, True, next_renewal=NOW + HOUR / 2, lifetime=HOUR),
            NOW + INTERVAL,
            NOW + HOUR / 2,
            "renewal",
        ),
        # A failure waits its backoff (here sooner than the next look).
        (
            Outcome.failed("a", "x", next_retry_at=NOW + INTERVAL / 2, lifetime=HOUR),
            NOW + INTERVAL / 2,
            NOW + INTERVAL / 2,
            "retry",
        ),
        # A failure without a backoff of its own still waits the shortest one.
        (
            Outcome.failed("a", "lock held", next_renewal=NOW),
            NOW + policy.MIN_RETRY_DELAY,
            NOW,
            "renewal",
        ),
        # Nothing known (a placeholder, no view): a recheck.
        (
            Outcome("a", Action.ISSUED, True),
            NOW + policy.MIN_RETRY_DELAY,
            NOW + policy.MIN_RETRY_DELAY,
            "recheck",
        ),
        # A time in the past never becomes a tight loop.
        (
            Outcome("a", Action.UNCHANGED, True, next_renewal=NOW - HOUR),
            NOW + timedelta(milliseconds=100),
            NOW - HOUR,
            "renewal",
        ),
    ],
)
def test_the_next_check_follows_from_the_outcome_alone(
    outcome: Outcome, when: datetime, target: datetime, why: str
) -> None:
    planned = next_check_time(outcome, NOW)
    assert (planned.when, planned.target, planned.why) == (when, target, why)


@pytest.mark.anyio
async def test_a_revocation_is_followed_by_the_loop_as_any_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path)
    spec = service.settings.certificates[0]
    outcomes = iter(
        [
            Outcome(
                spec.name,
                Action.REVOKED_AND_REPLACED,
                ok=True,
                next_renewal=datetime.now(UTC) + HOUR / 2,
                lifetime=HOUR,
                clock_skew=-30.0,
            ),
            Outcome(spec.name, Action.REMOVED, ok=True),
        ]
    )

    async def revoke(*_args: Any, **_kwargs: Any) -> Outcome:
        return next(outcomes)

    scheduled: list[str] = []
    monkeypatch.setattr(service.manager, "revoke", revoke)
    monkeypatch.setattr(service.loop, "schedule", lambda name, _when: scheduled.append(name))
    with capture_logs() as logs:
        await service.loop.revoke(spec, reason=None, remove=False)
        await service.loop.revoke(spec, reason=None, remove=True)
    # Recorded as any outcome (the skew warning, the renewal counter) and scheduled, except
    # the certificate removed.
    assert [e["event"] for e in logs] == ["clock_skew", "cert_renewal_scheduled"]
    assert scheduled == [spec.name]
    assert service.metrics.clock_skew == -30.0


class _Renewals:
    """A stand-in for the renewal loop: the hand-off needs nothing else to do its work."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def check_handed(self, name: str, *, force: bool, dry_run: bool) -> Outcome:
        self.calls.append(("check", (name, force, dry_run)))
        return Outcome(name, Action.UNCHANGED, ok=True)

    async def revoke(self, spec: CertificateSpec, *, reason: int | None, remove: bool) -> Outcome:
        self.calls.append(("revoke", (spec.name, reason, remove)))
        return Outcome(spec.name, Action.REVOKED_AND_REPLACED, ok=True)

    async def remove_orphan(self, name: str, reason: str | None) -> Outcome | None:
        self.calls.append(("orphan", (name, reason)))
        return None


@pytest.mark.anyio
async def test_the_handoff_works_from_what_its_constructor_names(tmp_path: Path) -> None:
    service = _service(tmp_path)
    renewals = _Renewals()
    ready = service.bundle.ready
    handoff = Handoff(
        renewals,
        parts=lambda: service.parts,
        ready=ready,
        statuses=list,
        spawn=service.spawn,
    )
    waiting = await handoff.handle({"command": "renew"})
    assert waiting["error"] == "the running sidecar is waiting for the CA bundle"
    ready.set()
    assert (await handoff.handle({"command": "renew", "force": True}))["ok"]
    revoked = await handoff.handle({"command": "revoke", "name": "a.example", "reason": "4"})
    assert revoked["ok"]
    orphan = await handoff.handle({"command": "remove-orphan", "name": "b", "reason": "x"})
    assert not orphan["ok"] and "is configured, or has no file" in orphan["error"]
    assert renewals.calls == [
        ("check", ("a.example", True, False)),
        ("revoke", ("a.example", 4, False)),
        ("orphan", ("b", "x")),
    ]
