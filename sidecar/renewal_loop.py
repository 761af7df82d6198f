"""The renewal loop of `cert-sidecar run`: each certificate checked on its schedule, one at a time.

As certmagic's ``maintain.go`` holds its maintenance loop, `RenewalLoop` holds everything a
check needs beyond the parts it borrows: the per-certificate locks, the bound on checks at once,
the apscheduler jobs, and the one step that follows any outcome (`RenewalLoop._after`), whoever
asked for the check: the schedule, a one-shot command handed over the control socket (a check
or a revocation), or the bundle watch. That step records the outcome (metrics, the systemd
status), looks at what HAProxy serves when nothing changed, and schedules the next check. It
reads nothing back from the manager: the `Outcome` carries the CA's error and clock skew, and
when the certificate is next due (issue 18, item 4).

The cadence comes from each certificate's lifetime (`policy.check_interval`), so 5-minute and
24-hour certificates are both watched closely enough; a failure reschedules at the backoff time
stored in the state directory, so a restart keeps waiting instead of hammering the CA.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from sidecar import orphans, policy
from sidecar.config import CertificateSpec, Settings
from sidecar.deploy_result import DeployResult
from sidecar.errors import OperationError, error_text
from sidecar.gate import SwapGate
from sidecar.inventory import utc_now
from sidecar.logs import get_logger
from sidecar.manager import Manager, ServedCheck
from sidecar.metrics import ErrorKind, Metrics
from sidecar.outcome import Action, Outcome, revocation_code
from sidecar.wiring import Parts

__all__ = [
    "CLOCK_SKEW_WARNING",
    "MAX_CONCURRENT_CHECKS",
    "NextCheck",
    "RenewalLoop",
    "next_check_time",
]

# The service's logger: these events were always the service's, and stay under its name.
log = get_logger("sidecar.service")

# Clock skew beyond this is worth a warning: with 5-minute certificates a minute of skew
# already makes fresh certificates look not-yet-valid or nearly expired.
CLOCK_SKEW_WARNING = 5.0
# A renewal time that moved by less than this is the same schedule (not logged again).
SCHEDULE_LOG_SLACK = timedelta(seconds=1)
#: Checks that read state and may order at once. A renewal pass starts one check per
#: certificate; beyond this many they wait here, before they open a lock file or read and
#: parse anything, instead of each holding that (and a file descriptor) while it waits for
#: one of the manager's order slots (`manager.MAX_CONCURRENT_ORDERS`, 16).
MAX_CONCURRENT_CHECKS = 32
# The soonest next check: a schedule in the past must not become a tight loop.
_MIN_NEXT_CHECK = timedelta(milliseconds=100)


@dataclass(frozen=True, slots=True)
class NextCheck:
    """When to look again (``when``), and the renewal time it serves (``target``, ``why``:
    ``renewal``, ``retry`` or ``recheck``), which is what the schedule log shows."""

    when: datetime
    target: datetime
    why: str


def next_check_time(outcome: Outcome, now: datetime) -> NextCheck:
    """The next look at a certificate after ``outcome`` (pure: everything is in the outcome).

    A failure or a wait retries at its backoff; otherwise the renewal time, or a recheck soon
    when there is none. A real certificate is looked at again at least every
    `policy.check_interval` of its lifetime (HAProxy may have restarted, the CA's window moved).
    """
    if outcome.action in (Action.FAILED, Action.WAITING) and outcome.next_retry_at is not None:
        target, why = outcome.next_retry_at, "retry"
    elif outcome.next_renewal is not None:
        target, why = outcome.next_renewal, "renewal"
    else:
        target, why = now + policy.MIN_RETRY_DELAY, "recheck"
    when = target
    if outcome.lifetime is not None:
        when = min(when, now + policy.check_interval(outcome.lifetime))
    if outcome.action is Action.FAILED and outcome.next_retry_at is None:
        # A failure with no backoff of its own (a lock held elsewhere, nothing recorded)
        # still waits the shortest backoff: nothing may retry faster (issue 17, finding 3).
        when = max(when, now + policy.MIN_RETRY_DELAY)
    return NextCheck(max(when, now + _MIN_NEXT_CHECK), target, why)


class RenewalLoop:
    """The schedule, the checks and what follows each outcome; see the module docstring.

    It borrows the parts from ``gate`` for each check, records into ``metrics``, calls
    ``changed`` after each outcome (the systemd status), runs its checks as tasks through
    ``spawn`` (so shutdown can cancel them), and schedules nothing once ``stopping`` is set.
    """

    def __init__(
        self,
        gate: SwapGate[Parts],
        metrics: Metrics,
        *,
        changed: Callable[[], None],
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        stopping: asyncio.Event,
    ) -> None:
        self._gate = gate
        self._metrics = metrics
        self._changed = changed
        self._spawn = spawn
        self._stopping = stopping
        self._scheduler: AsyncIOScheduler | None = None
        self._busy: dict[str, asyncio.Lock] = {}
        self._checking = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
        # When an attempt last failed in this process, and why (for /metrics).
        self._failed: dict[str, tuple[datetime, ErrorKind]] = {}
        # The last schedule logged per certificate: (renewal time, why), see next_check.
        self._logged_schedule: dict[str, tuple[datetime, str]] = {}

    @property
    def _settings(self) -> Settings:
        return self._gate.current.settings

    # -- the schedule ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler and check every certificate now."""
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._scheduler.start()
        now = utc_now()
        for spec in self._settings.certificates:
            self.schedule(spec.name, now)

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)

    @property
    def stalled(self) -> bool:
        """Whether the scheduler was started and has stopped (for `/healthz`)."""
        return self._scheduler is not None and not self._scheduler.running

    def schedule(self, name: str, when: datetime) -> None:
        if self._scheduler is None or self._stopping.is_set():
            return
        self._scheduler.add_job(
            self._fire,
            trigger="date",
            run_date=when,
            args=[name],
            id=name,
            name=f"check {name}",
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
            max_instances=1,
        )

    def unschedule(self, name: str) -> None:
        """Stop checking a certificate (no longer configured)."""
        if self._scheduler is not None:
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(name)
        self._logged_schedule.pop(name, None)

    def follow(self, old: Settings, new: Settings) -> None:
        """A reload: stop checking the certificates it removed, check every one now."""
        removed = {spec.name for spec in old.certificates} - {s.name for s in new.certificates}
        for name in sorted(removed):
            # It stays on disk and loaded: `revoke --remove` is how a certificate goes away.
            self.unschedule(name)
        for spec in new.certificates:
            self.schedule(spec.name, utc_now())

    async def _fire(self, name: str) -> None:
        """The scheduler's job: the check runs as our own task, so shutdown can cancel it."""
        self._spawn(self.check(name))

    def last_failure(self, name: str) -> tuple[datetime, ErrorKind] | None:
        """When a check of ``name`` last failed in this process, and why (for `/metrics`)."""
        return self._failed.get(name)

    # -- the checks -----------------------------------------------------------------------------

    def lock_for(self, name: str) -> asyncio.Lock:
        return self._busy.setdefault(name, asyncio.Lock())

    async def check(self, name: str, *, force: bool = False) -> Outcome | None:
        """One scheduled look at a certificate: renew when due, make sure HAProxy has it."""
        async with self.lock_for(name):
            # Looked up under the lock: a reload may have changed it while this waited.
            spec = self._settings.certificate(name)
            if spec is None:
                return None
            outcome = await self.check_locked(spec, force=force, dry_run=False)
        return outcome

    async def check_handed(self, name: str, *, force: bool, dry_run: bool) -> Outcome:
        """A check a one-shot ``issue`` / ``renew`` handed over: not held back by the backoff."""
        async with self.lock_for(name):
            # As configured now: a reload may have changed it while this waited for the lock.
            current = self._settings.certificate(name)
            if current is None:
                return Outcome.failed(name, "no longer configured (config reloaded)")
            return await self.check_locked(
                current, force=force, dry_run=dry_run, respect_backoff=False
            )

    async def check_locked(
        self, spec: CertificateSpec, *, force: bool, dry_run: bool, respect_backoff: bool = True
    ) -> Outcome:
        """One check of ``spec`` with the parts borrowed for its whole length (a reload
        swapping them meanwhile leaves this one on the old parts; `sidecar.gate`)."""
        async with self._gate.use() as parts:
            # As the parts in use configure it: a reload may have changed it while this waited.
            current = parts.settings.certificate(spec.name)
            if current is None:  # removed by that reload: not checked, nor scheduled again
                return Outcome.failed(spec.name, "no longer configured (config reloaded)")
            spec, manager = current, parts.manager
            try:
                async with self._checking:
                    outcome = await manager.ensure(
                        spec,
                        force=force,
                        dry_run=dry_run,
                        respect_backoff=respect_backoff and not force,
                    )
            except Exception as error:  # a bug must not stop this certificate's schedule...
                log.exception("cert_check_crashed", cert=spec.name)
                # ...nor make it retry sooner than any failure would (issue 17, finding 3).
                outcome = _crashed(manager, spec, error, record=not dry_run)
            await self._after(spec, outcome, parts, dry_run=dry_run)
        return outcome

    async def revoke(self, spec: CertificateSpec, *, reason: int | None, remove: bool) -> Outcome:
        """``revoke`` handed over: revoke, then replace (or remove) under the same lock and
        parts as a check, followed by the same step."""
        async with self.lock_for(spec.name), self._gate.use() as parts:
            # The parts borrowed for the whole revocation (a reload may swap them meanwhile).
            spec = parts.settings.certificate(spec.name) or spec
            outcome = await parts.manager.revoke(spec, reason=reason, remove=remove)
            await self._after(spec, outcome, parts, revoking=True)
        return outcome

    async def remove_orphan(self, name: str, reason: str | None) -> Outcome | None:
        """``revoke NAME --remove`` for a name the configuration no longer has; None when it
        is configured or has no file. ``reason`` is the request's, parsed once it is known
        to be an orphan (raises `OperationError` naming ``--reason``)."""
        async with self.lock_for(name):
            parts = self._gate.current
            # Under the lock: a reload may have configured the name again meanwhile.
            orphan = orphans.find(parts.manager.inventory, parts.settings, name)
            if orphan is None:
                return None
            try:
                code = revocation_code(reason)
            except ValueError as error:
                raise OperationError(f"--reason: {error}") from None
            outcome = await orphans.remove(parts.manager, orphan, parts.settings, reason=code)
        parts = self._gate.current
        left = parts.manager.inventory.orphans(s.name for s in parts.settings.certificates)
        self._metrics.set_not_configured(len(left))
        return outcome

    # -- after an outcome -----------------------------------------------------------------------

    async def _after(
        self,
        spec: CertificateSpec,
        outcome: Outcome,
        parts: Parts,
        *,
        dry_run: bool = False,
        revoking: bool = False,
    ) -> None:
        """What follows any outcome, the one owner of it: recorded (metrics, systemd status),
        a failure remembered for `/metrics`, HAProxy looked at when nothing changed, and the
        next check scheduled (not after a dry run, nor for a certificate removed)."""
        self.record(outcome)
        if outcome.action is Action.FAILED and not dry_run and not revoking:
            self._failed[spec.name] = (utc_now(), outcome.error_kind or "other")
        if outcome.action is Action.UNCHANGED:
            self._record_served(await parts.manager.ensure_served(spec))
        if not dry_run and outcome.action is not Action.REMOVED:
            # The manager's clock: the one its backoff was computed with (tests inject one).
            self.schedule(spec.name, self.next_check(spec, outcome, parts.manager.now()))

    def record(self, outcome: Outcome) -> None:
        self._changed()  # STATUS (and READY, the first time every file is in place)
        if outcome.action in (Action.ISSUED, Action.DRY_RUN):
            self._metrics.record_renewal("success")
            self._metrics.set_ca_reachable(True)
        elif outcome.action is Action.FAILED:
            self._metrics.record_renewal("failure")
            if outcome.ca_error:
                self._metrics.set_ca_reachable(False, outcome.ca_error)
        if outcome.deploy is not None:
            self._record_deploy(outcome.deploy)
        skew = outcome.clock_skew
        if skew is not None:
            self._metrics.set_clock_skew(skew)
            if abs(skew) > CLOCK_SKEW_WARNING:
                log.warning("clock_skew", seconds=round(skew, 1), cert=outcome.name)

    def next_check(
        self, spec: CertificateSpec, outcome: Outcome, now: datetime | None = None
    ) -> datetime:
        """`next_check_time`, with the renewal time logged when it moves."""
        planned = next_check_time(outcome, now or utc_now())
        self._log_schedule(spec.name, planned)
        return planned.when

    def _log_schedule(self, name: str, planned: NextCheck) -> None:
        """Log the renewal time when it moves, not on every check: the checks in between (every
        few minutes for a day-long certificate) only confirm it."""
        target, why = planned.target, planned.why
        last = self._logged_schedule.get(name)
        if last is not None and last[1] == why and abs(last[0] - target) <= SCHEDULE_LOG_SLACK:
            return
        self._logged_schedule[name] = (target, why)
        log.info(
            "cert_renewal_scheduled",
            cert=name,
            at=target.isoformat(),
            reason=why,
            next_check=planned.when.isoformat(),
        )

    def _record_deploy(self, deploy: DeployResult) -> None:
        mode = deploy.mode or self._settings.haproxy.reload
        self._metrics.record_deploy("success" if deploy.ok else "failure", mode)
        self._record_sockets((s.address, s.ok, s.reachable) for s in deploy.sockets)

    def _record_served(self, check: ServedCheck) -> None:
        """A look at what HAProxy serves: each socket that was asked, and any redeploy."""
        for address, answered in check.sockets:
            self._metrics.set_haproxy_up(self._socket_label(address), answered)
        if check.deploy is not None:
            self._record_deploy(check.deploy)

    def _record_sockets(self, sockets: Iterable[tuple[str, bool, bool]]) -> None:
        """A deploy's sockets (address, ok, reachable): one that worked answered, one that could
        not be used did not. Where HAProxy answered but the deploy failed, it is left as it
        was: deploys_total and served_matches report that failure."""
        for address, ok, reachable in sockets:
            if address and (ok or not reachable):
                self._metrics.set_haproxy_up(self._socket_label(str(address)), bool(ok))

    def _socket_label(self, address: str) -> str:
        """The socket as the user wrote it (``address`` is its normalised form)."""
        settings = self._settings
        written = dict(
            zip(map(str, settings.haproxy.sockets), settings.haproxy.socket_texts, strict=False)
        )
        return written.get(address, address)


def _crashed(manager: Manager, spec: CertificateSpec, error: Exception, *, record: bool) -> Outcome:
    """The failure an escaped exception stands for, with the backoff stored as for any
    failure; if even that fails, the first backoff step, held in memory."""
    try:
        return manager.crashed(spec, error, record=record)
    except Exception:
        log.exception("cert_backoff_record_failed", cert=spec.name)
        return Outcome.failed(
            spec.name, error_text(error), next_retry_at=manager.now() + policy.MIN_RETRY_DELAY
        )
