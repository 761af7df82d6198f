"""The renewal loop's own steps on the in-process fake CA (issue 18 moved them out of service.py):
what a check, a hand-over and a revocation wait for, the backoff when even recording a crash
fails, orphans removed on request, the schedule after a reload, and what /metrics is told.

Found by mutation testing (docs/MUTATION.md, "Re-measured after issue 18"): these paths had no
fast test, or one that did not look at what they pass on. Driven as `service_rig` drives the
loop: check by check, the schedule recorded, one fake clock for the manager and the CA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, Literal, TypeVar

import httpx
import pytest
from structlog.testing import capture_logs

from sidecar import policy, wiring
from sidecar.deploy_result import DeployResult, SocketOutcome
from sidecar.errors import OperationError
from sidecar.manager import ServedCheck
from sidecar.outcome import Action, Outcome
from sidecar.renewal_loop import SCHEDULE_LOG_SLACK, RenewalLoop
from sidecar.service import Service
from tests.protocol.service_rig import rig

pytestmark = pytest.mark.anyio

NAME = "loop.example"
OTHER = "other.example"
GONE = "gone.example"
# Long enough for a step that does not wait to finish on the in-process fake CA; a step that
# waits as it should is never cut short by it (it is only how long the test looks).
SETTLE = 0.3
T = TypeVar("T")


async def _close(service: Service) -> None:
    await wiring.close(service.parts)


async def _waits_for_the_lock(loop: RenewalLoop, name: str, step: Awaitable[T]) -> T:
    """Run ``step`` while a check of ``name`` holds its lock: it must not start before that
    check ends (two steps on one certificate at once could order twice, or revoke the
    certificate the other is deploying)."""
    lock = loop.lock_for(name)
    await lock.acquire()
    task = asyncio.ensure_future(step)
    try:
        await asyncio.sleep(SETTLE)
        assert not task.done(), "the step ran while a check of the same certificate held its lock"
    finally:
        lock.release()
    return await asyncio.wait_for(task, 30)


async def test_a_crash_whose_backoff_cannot_be_stored_still_waits_the_first_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        service = r.service(r.settings())
        manager = service.manager

        async def ensure(*_args: Any, **_kwargs: Any) -> Outcome:
            raise KeyError("a bug")

        def crashed(*_args: Any, **_kwargs: Any) -> Outcome:
            raise OSError("the state directory is gone")

        monkeypatch.setattr(manager, "ensure", ensure)
        monkeypatch.setattr(manager, "crashed", crashed)
        try:
            with capture_logs() as logs:
                outcome = await service.loop.check(NAME)
        finally:
            await _close(service)
    assert outcome is not None
    assert (outcome.name, outcome.action, outcome.ok) == (NAME, Action.FAILED, False)
    assert outcome.error is not None and "a bug" in outcome.error
    # Held in memory only, but never sooner than the first backoff step.
    assert outcome.next_retry_at == r.now() + policy.MIN_RETRY_DELAY
    assert r.scheduled[-1] == (NAME, r.now() + policy.MIN_RETRY_DELAY)
    crashes = [(e["event"], e["cert"]) for e in logs if e["log_level"] == "error"]
    assert crashes == [("cert_check_crashed", NAME), ("cert_backoff_record_failed", NAME)]
    last = service.loop.last_failure(NAME)
    assert last is not None and last[1] == "other"  # no kind of its own


def _record_ensure(
    service: Any, monkeypatch: pytest.MonkeyPatch, action: Action
) -> list[dict[str, Any]]:
    """The manager's `ensure` replaced by one that records each call and returns `action`."""
    seen: list[dict[str, Any]] = []

    async def ensure(spec: Any, **kwargs: Any) -> Outcome:
        seen.append({"name": spec.name, **kwargs})
        return Outcome(spec.name, action, ok=True)

    monkeypatch.setattr(service.manager, "ensure", ensure)
    return seen


async def test_a_handed_over_check_waits_for_the_certificates_lock_and_skips_the_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        service = r.service(r.settings())
        seen = _record_ensure(service, monkeypatch, Action.DRY_RUN)
        try:
            outcome = await _waits_for_the_lock(
                service.loop, NAME, service.loop.check_handed(NAME, force=False, dry_run=True)
            )
            gone = await service.loop.check_handed(GONE, force=True, dry_run=False)
        finally:
            await _close(service)
    assert outcome.action is Action.DRY_RUN
    assert seen == [{"name": NAME, "force": False, "dry_run": True, "respect_backoff": False}]
    assert r.scheduled == []  # a dry run changes nothing, the schedule included
    # A name a reload removed while the request waited: a failure naming it, nothing checked.
    assert (gone.name, gone.action, gone.ok) == (GONE, Action.FAILED, False)
    assert gone.error == "no longer configured (config reloaded)"


async def test_a_revocation_uses_the_certificate_as_configured_now_under_its_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        service = r.service(r.settings())
        loop = service.loop
        configured = service.settings.certificates[0]
        try:
            first = await loop.check(NAME)
            assert first is not None and first.action is Action.ISSUED, first
            issued = len(r.ca.new_order_payloads)
            # The request named the certificate as an older configuration had it.
            stale = replace(configured, domains=("stale.example",))
            outcome = await _waits_for_the_lock(
                loop, NAME, loop.revoke(stale, reason=4, remove=False)
            )
            assert outcome.action is Action.REVOKED_AND_REPLACED, outcome
            # Revoked with the reason asked for, replaced for the domains configured now.
            assert r.ca.revoked[-1][1] == 4
            [replacement] = r.ca.new_order_payloads[issued:]
            assert [i["value"] for i in replacement["identifiers"]] == list(configured.domains)

            # A revocation the CA refuses is the request's failure: the schedule's
            # "last failed" (for /metrics) is about checks, and stays as it was.
            r.ca.fail_times("revoke-cert", 1, _refused)
            refused = await loop.revoke(configured, reason=None, remove=True)
            assert refused.action is Action.FAILED, refused
            assert loop.last_failure(NAME) is None

            removed = await loop.revoke(configured, reason=None, remove=True)
        finally:
            await _close(service)
    assert removed.action is Action.REMOVED, removed
    assert not (r.workdir / "certs" / f"{NAME}.pem").exists()


def _refused() -> httpx.Response:
    return httpx.Response(
        403,
        json={"type": "urn:ietf:params:acme:error:unauthorized", "detail": "not yours"},
        headers={"Content-Type": "application/problem+json"},
    )


async def test_an_orphan_is_removed_on_request_and_counted_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, GONE, OTHER, monkeypatch=monkeypatch) as r:
        before = r.service(r.settings("--no-placeholder"))
        try:
            for name in (NAME, GONE, OTHER):
                outcome = await before.loop.check(name)
                assert outcome is not None and outcome.action is Action.ISSUED, outcome
        finally:
            await _close(before)
        # Configured now: NAME only; GONE and OTHER are files nobody configures.
        service = replace(r, names=(NAME,)).service(
            replace(r, names=(NAME,)).settings("--no-placeholder")
        )
        loop = service.loop
        try:
            assert await loop.remove_orphan(NAME, None) is None  # configured: not an orphan
            assert await loop.remove_orphan("never.example", None) is None  # no file
            with pytest.raises(OperationError, match=r"^--reason: unknown revocation reason"):
                await loop.remove_orphan(GONE, "sometimes")
            assert (r.workdir / "certs" / f"{GONE}.pem").exists()
            outcome = await _waits_for_the_lock(loop, GONE, loop.remove_orphan(GONE, "1"))
        finally:
            await _close(service)
    assert outcome is not None and outcome.action is Action.REMOVED, outcome
    assert not (r.workdir / "certs" / f"{GONE}.pem").exists()
    assert r.ca.revoked[-1][1] == 1
    # /metrics counts what is left not configured: OTHER.
    assert service.metrics.not_configured == 1


async def test_a_reload_stops_the_schedule_of_a_removed_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, GONE, monkeypatch=monkeypatch) as r:
        old = r.settings("--no-placeholder")
        # The real schedule (the rig's service records it instead).
        service = Service(old, parts=r.build(old, holder="run (test)"))
        loop = service.loop
        loop.start()
        scheduler = loop._scheduler
        assert scheduler is not None
        scheduler.pause()  # the checks stay scheduled, none runs
        try:
            assert {job.id for job in scheduler.get_jobs()} == {NAME, GONE}
            gone_spec = old.certificate(GONE)
            assert gone_spec is not None
            waiting = Outcome.failed(GONE, "x", next_retry_at=r.now() + policy.MIN_RETRY_DELAY)
            with capture_logs() as logs:
                loop.next_check(gone_spec, waiting, r.now())
                new = replace(r, names=(NAME,)).settings("--no-placeholder")
                loop.follow(old, new)
                assert {job.id for job in scheduler.get_jobs()} == {NAME}
                loop.unschedule(GONE)  # again: nothing left to stop, no error
                # Configured again later: its schedule is news again, logged once more.
                loop.next_check(gone_spec, waiting, r.now())
            assert {job.id for job in scheduler.get_jobs()} == {NAME}
            scheduled = [e["cert"] for e in logs if e["event"] == "cert_renewal_scheduled"]
            assert scheduled == [GONE, GONE]
            # Moved by exactly the slack (a second): the same schedule, not logged again.
            assert waiting.next_retry_at is not None
            moved = replace(waiting, next_retry_at=waiting.next_retry_at + SCHEDULE_LOG_SLACK)
            with capture_logs() as logs:
                loop.next_check(gone_spec, moved, r.now())
            assert [e for e in logs if e["event"] == "cert_renewal_scheduled"] == []
        finally:
            loop.stop()
            await _close(service)


async def test_deploys_are_counted_under_their_mode_and_sockets_under_the_name_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    socket_written = "/run/haproxy/admin.sock"
    with rig(NAME, monkeypatch=monkeypatch) as r:
        mode: Literal["runtime-api"] = "runtime-api"
        service = r.service(r.settings("--haproxy-socket", socket_written, "--reload", mode))
        try:
            deployed = DeployResult(
                NAME,
                "01",
                "master-reload",
                True,
                sockets=(SocketOutcome(f"unix:{socket_written}", True, "updated"),),
            )
            service.loop.record(Outcome(NAME, Action.ISSUED, ok=True, deploy=deployed))
            # The deployer raised: counted as a failure of the configured mode.
            crashed = DeployResult.crashed(NAME, "02", "lost the socket")
            service.loop.record(Outcome.failed(NAME, "lost the socket", deploy=crashed))
            # A socket no longer configured (a reload meanwhile) keeps its own name.
            elsewhere = DeployResult(
                NAME,
                "03",
                mode,
                False,
                sockets=(SocketOutcome("unix:/elsewhere.sock", False, "failed", reachable=False),),
            )
            service.loop.record(Outcome.failed(NAME, "refused", deploy=elsewhere))
        finally:
            await _close(service)
    metrics = service.metrics
    counted = {key: count for key, count in metrics.deploys.items() if count}
    assert counted == {("success", "master-reload"): 1, ("failure", mode): 2}
    assert dict(metrics.haproxy_up) == {socket_written: True, "unix:/elsewhere.sock": False}


async def test_a_look_at_what_haproxy_serves_is_counted_under_the_socket_as_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    socket_written = "/run/haproxy/admin.sock"
    with rig(NAME, monkeypatch=monkeypatch) as r:
        mode: Literal["runtime-api"] = "runtime-api"
        service = r.service(r.settings("--haproxy-socket", socket_written, "--reload", mode))
        # Nothing changed: HAProxy is asked what it serves; here it did not answer, and the
        # certificate was deployed again.
        redeployed = DeployResult(NAME, "01", mode, True)
        served = ServedCheck(sockets=((f"unix:{socket_written}", False),), deploy=redeployed)

        async def ensure(spec: Any, **_kwargs: Any) -> Outcome:
            return Outcome(spec.name, Action.UNCHANGED, ok=True)

        asked: list[str] = []

        async def ensure_served(spec: Any) -> ServedCheck:
            asked.append(spec.name)
            return served

        monkeypatch.setattr(service.manager, "ensure", ensure)
        monkeypatch.setattr(service.manager, "ensure_served", ensure_served)
        try:
            await service.loop.check(NAME)
        finally:
            await _close(service)
    metrics = service.metrics
    assert {key: count for key, count in metrics.deploys.items() if count} == {("success", mode): 1}
    assert dict(metrics.haproxy_up) == {socket_written: False}
    assert asked == [NAME]


async def test_a_scheduled_check_is_a_real_one_and_a_removed_certificate_is_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        service = r.service(r.settings())
        seen = _record_ensure(service, monkeypatch, Action.ISSUED)
        # A check that waited while a reload removed its certificate.
        [removed] = replace(r, names=(GONE,)).settings().certificates
        try:
            await service.loop.check(NAME, force=True)
            gone = await service.loop.check_locked(removed, force=False, dry_run=False)
        finally:
            await _close(service)
    # Forced, not a dry run (the backoff does not hold a forced check back).
    assert seen == [{"name": NAME, "force": True, "dry_run": False, "respect_backoff": False}]
    assert (gone.name, gone.action, gone.ok) == (GONE, Action.FAILED, False)
    assert gone.error == "no longer configured (config reloaded)"


async def test_the_cas_reachability_and_clock_skew_follow_each_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        service = r.service(r.settings())
        loop, metrics = service.loop, service.metrics
        try:
            loop.record(Outcome.failed(NAME, "refused", ca_error="connection refused"))
            assert metrics.ca_reachable is False
            loop.record(Outcome(NAME, Action.ISSUED, ok=True))
            assert metrics.ca_reachable is True
            with capture_logs() as logs:
                # At the threshold: no warning; above it: one, rounded to a tenth, naming it.
                loop.record(Outcome(NAME, Action.UNCHANGED, ok=True, clock_skew=5.0))
                loop.record(Outcome(NAME, Action.UNCHANGED, ok=True, clock_skew=-42.46))
        finally:
            await _close(service)
    warnings = [(e["seconds"], e["cert"]) for e in logs if e["event"] == "clock_skew"]
    assert warnings == [(-42.5, NAME)]
    assert metrics.clock_skew == -42.46


async def test_the_schedule_checks_every_certificate_at_start_then_when_each_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, OTHER, monkeypatch=monkeypatch) as r:
        settings = r.settings("--no-placeholder")
        # The real schedule (the rig's service records it instead).
        service = Service(settings, parts=r.build(settings, holder="run (test)"))
        loop = service.loop
        checked: list[str] = []
        both = asyncio.Event()

        async def ensure(spec: Any, **_kwargs: Any) -> Outcome:
            checked.append(spec.name)
            if len(checked) == 2:
                both.set()
            return Outcome(spec.name, Action.UNCHANGED, ok=True)

        monkeypatch.setattr(service.manager, "ensure", ensure)
        loop.stop()  # not started: nothing to stop
        loop.start()
        scheduler = loop._scheduler
        assert scheduler is not None
        try:
            await asyncio.wait_for(both.wait(), 10)
            await asyncio.sleep(0.1)  # the steps after each outcome
            assert sorted(checked) == sorted([NAME, OTHER])
            # Each asks for its next look (nothing known: a recheck soon), on the manager's
            # clock; a look that comes late still runs, once, never two at a time.
            job = scheduler.get_job(NAME)
            assert job is not None
            assert job.next_run_time == r.now() + policy.MIN_RETRY_DELAY
            assert (job.name, job.args) == (f"check {NAME}", (NAME,))
            assert (job.misfire_grace_time, job.coalesce, job.max_instances) == (None, True, 1)
            # Shutting down: nothing is scheduled any more.
            service.stopping.set()
            loop.schedule(NAME, r.now() + policy.MAX_RETRY_DELAY)
            job = scheduler.get_job(NAME)
            assert job is not None and job.next_run_time == r.now() + policy.MIN_RETRY_DELAY
        finally:
            loop.stop()
            await asyncio.sleep(0.1)  # apscheduler shuts down on the event loop
            await _close(service)
    assert loop.stalled
