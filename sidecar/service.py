"""`cert-sidecar run`: keep every configured certificate issued, renewed and loaded, forever.

Start-up never needs ordering help from compose:
1. the health endpoints come up first (alive, not ready);
2. a placeholder is written for every certificate that has no file yet, so HAProxy can start;
3. the control socket is opened, so one-shot commands hand their work to this process;
4. the CA bundle is awaited (watched with watchfiles; one log line, not one per second);
5. each certificate gets a scheduler job (apscheduler 3, asyncio) that checks it, renews it
   when the policy says so, and schedules its own next run.

The parts that answer outside events live beside it: `bundle_watch` (the CA bundle),
`handoff` (the control socket), `reload` (the config file); `Service` holds what they share:
the parts built from the settings, the per-certificate locks, the scheduler and the metrics.

The cadence comes from each certificate's lifetime (`policy.check_interval`), so 5-minute and
24-hour certificates are both watched closely enough; a failure reschedules at the backoff
time stored in the state directory, so a restart keeps waiting instead of hammering the CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime, timedelta
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from sidecar import applied, metrics, policy, wiring
from sidecar.bundle_watch import BundleWatch
from sidecar.config import CertificateSpec, Settings
from sidecar.errors import error_text
from sidecar.gate import SwapGate
from sidecar.handoff import Handoff
from sidecar.health import HealthServer, HealthSnapshot
from sidecar.inventory import CertView, cert_status, utc_now
from sidecar.logs import get_logger
from sidecar.manager import Manager, ServedCheck
from sidecar.outcome import Action, DeploySummary, Outcome
from sidecar.reload import ConfigReload
from sidecar.sdnotify import Notifier, ServiceNotify
from sidecar.storage import clean_stale_temp_files

log = get_logger("sidecar.service")

# Shutdown must finish within 5 s (compose's default stop timeout is 10 s).
STOP_GRACE = 4.0
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


class Service:
    """The long-running sidecar; `run()` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        reload_settings: Callable[[], Settings] | None = None,
        parts: wiring.Parts | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.holder = f"run pid {os.getpid()}"
        # Everything made from the settings; replaced as a whole when the config file changes.
        # Tests hand in parts built by `wiring.build` for an in-process CA and a fake clock.
        # Each check borrows them from the gate for its whole length (see `sidecar.gate`).
        self.gate = SwapGate(parts or wiring.build(settings, holder=self.holder), wiring.retire)
        deployer = self.manager.deployer
        self.metrics = metrics.Metrics(deploy_mode=deployer.mode if deployer else None)
        self.stopping = asyncio.Event()
        # When an attempt last failed in this process, and why (for /metrics).
        self._failed: dict[str, tuple[datetime, metrics.ErrorKind]] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._busy: dict[str, asyncio.Lock] = {}
        self._checking = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
        self._tasks: set[asyncio.Task[Any]] = set()
        # The last schedule logged per certificate: (renewal time, why), see next_check.
        self._logged_schedule: dict[str, tuple[datetime, str]] = {}
        # The parts that act on outside events, each holding its own state.
        self.bundle = BundleWatch(self)
        self.handoff = Handoff(self)
        self.reload = ConfigReload(self, reload_settings)
        # systemd's notify protocol (READY, STATUS, watchdog); inert without NOTIFY_SOCKET.
        self.notify = ServiceNotify(
            notifier or Notifier.from_environment(),
            statuses=self.statuses,
            waiting_for=lambda: None if self.bundle.ready.is_set() else self.settings.ca_bundle,
            now=utc_now,
        )

    @property
    def parts(self) -> wiring.Parts:
        """The current configuration's parts (checks already running may hold older ones)."""
        return self.gate.current

    @property
    def manager(self) -> Manager:
        """The current configuration's manager (a reload replaces it)."""
        return self.parts.manager

    async def adopt(self, parts: wiring.Parts) -> wiring.Parts:
        """Take a freshly built set of parts (a reload, with the gate closed); returns the old,
        which is closed once the checks still using it are done."""
        self.settings = parts.settings
        # A reload marks errors of a configuration that changed as stale, before the swap.
        current = self.gate.current
        applied.mark_errors_stale(current.settings, parts.settings, parts.manager.inventory)
        retired = await self.gate.swap(parts)
        self.spawn(applied.settings_applied(parts, self.metrics))
        return retired

    # -- entry --------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        health = HealthServer(*self.settings.health_listen, self._snapshot, liveness=self._liveness)
        self.spawn(self.notify.watchdog(lambda: self._liveness()[0]))
        try:
            await health.start()
            log.info(
                "service_starting",
                certificates=[spec.name for spec in self.settings.certificates],
                health=[f"{h}:{p}" for h, p in health.addresses],
            )
            clean_stale_temp_files(self.settings.certs_dir)
            if self.settings.placeholder is not False:
                for spec in self.settings.certificates:
                    await self.manager.ensure_placeholder(spec)
            # READY=1 now if every certificate has a file (placeholders count), else after the
            # check that gives the last one its file (see `record`).
            self.notify.started()
            await self.handoff.open(self.settings.state_dir)
            self.spawn(self.bundle.watch())
            self.notify.changed()  # after the watch's first look: "waiting for CA bundle"?
            if self.settings.config_file is not None and self.reload.enabled:
                self.spawn(self.reload.watch(self.settings.config_file))
            await self.wait_or_stop(self.bundle.ready.wait())
            self.notify.changed()
            if not self.stopping.is_set():
                self.spawn(applied.settings_applied(self.parts, self.metrics))
                await self._start_scheduler()
                await self.stopping.wait()
        finally:
            self.notify.stopping()
            await self._shutdown(health)
            self.notify.close()
        log.info("service_stopped")
        return 0

    def _on_signal(self, signum: int) -> None:
        log.info("service_stopping", signal=signal.Signals(signum).name)
        self.stopping.set()

    async def wait_or_stop(self, awaitable: Awaitable[Any]) -> None:
        waiter = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (waiter, stopper):
                future.cancel()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("service_task_failed", error=error_text(task.exception()))  # type: ignore[arg-type]

    async def _shutdown(self, health: HealthServer) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        # In-flight orders are abandoned: the lock dies with the cancelled task (or the
        # process), nothing was replaced unless it was complete, and an abandoned ACME order
        # simply expires at the CA.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        closers = [self._close_parts, health.aclose]
        if self.handoff.server is not None:
            closers.insert(0, self.handoff.server.aclose)
        for closer in closers:
            try:
                async with asyncio.timeout(max(0.5, deadline - loop.time())):
                    await closer()
            except TimeoutError:
                log.warning("service_stop_slow", step=getattr(closer, "__qualname__", "?"))
            except Exception as error:
                log.warning("service_stop_failed", error=error_text(error))

    async def _close_parts(self) -> None:
        await wiring.close(self.parts)

    # -- scheduling ---------------------------------------------------------------------------

    async def _start_scheduler(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._scheduler.start()
        now = utc_now()
        for spec in self.settings.certificates:
            self.schedule(spec.name, now)

    def schedule(self, name: str, when: datetime) -> None:
        if self._scheduler is None or self.stopping.is_set():
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

    async def _fire(self, name: str) -> None:
        """The scheduler's job: the check runs as our own task, so shutdown can cancel it."""
        self.spawn(self.check(name))

    def spec(self, name: str) -> CertificateSpec | None:
        return self.settings.certificate(name)

    def lock_for(self, name: str) -> asyncio.Lock:
        return self._busy.setdefault(name, asyncio.Lock())

    async def check(self, name: str, *, force: bool = False) -> Outcome | None:
        """One scheduled look at a certificate: renew when due, make sure HAProxy has it."""
        async with self.lock_for(name):
            # Looked up under the lock: a reload may have changed it while this waited.
            spec = self.spec(name)
            if spec is None:
                return None
            outcome = await self.check_locked(spec, force=force, dry_run=False)
        return outcome

    async def check_locked(
        self, spec: CertificateSpec, *, force: bool, dry_run: bool, respect_backoff: bool = True
    ) -> Outcome:
        """One check of ``spec`` with the parts borrowed for its whole length (a reload
        swapping them meanwhile leaves this one on the old parts; `sidecar.gate`)."""
        async with self.gate.use() as parts:
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
                outcome = self._crashed(manager, spec, error, record=not dry_run)
            self.record(outcome)
            if outcome.action is Action.FAILED and not dry_run:
                self._failed[spec.name] = (utc_now(), outcome.error_kind or "other")
            if outcome.action is Action.UNCHANGED:
                self._record_served(await manager.ensure_served(spec))
            if not dry_run:
                self.schedule(spec.name, self.next_check(spec, outcome))
        return outcome

    @staticmethod
    def _crashed(
        manager: Manager, spec: CertificateSpec, error: Exception, *, record: bool
    ) -> Outcome:
        """The failure an escaped exception stands for, with the backoff stored as for any
        failure; if even that fails, the first backoff step, held in memory."""
        try:
            return manager.crashed(spec, error, record=record)
        except Exception:
            log.exception("cert_backoff_record_failed", cert=spec.name)
            return Outcome.failed(
                spec.name, error_text(error), next_retry_at=manager.now() + policy.MIN_RETRY_DELAY
            )

    def record(self, outcome: Outcome) -> None:
        self.notify.changed()  # STATUS (and READY, the first time every file is in place)
        if outcome.action in (Action.ISSUED, Action.DRY_RUN):
            self.metrics.record_renewal("success")
            self.metrics.set_ca_reachable(True)
        elif outcome.action is Action.FAILED:
            self.metrics.record_renewal("failure")
            if self.manager.last_ca_error:
                self.metrics.set_ca_reachable(False, self.manager.last_ca_error)
        if outcome.deploy is not None:
            self._record_deploy(outcome.deploy)
        skew = self.manager.clock_skew
        if skew is not None:
            self.metrics.set_clock_skew(skew)
            if abs(skew) > CLOCK_SKEW_WARNING:
                log.warning("clock_skew", seconds=round(skew, 1), cert=outcome.name)

    def next_check(self, spec: CertificateSpec, outcome: Outcome) -> datetime:
        # The manager's clock: the one its backoff was computed with (tests inject one).
        now = self.manager.now()
        try:
            view: CertView | None = self.manager.inspect(spec, now)
        except Exception:  # a bug must not leave the certificate without a next check
            log.exception("cert_schedule_inspect_failed", cert=spec.name)
            view = None
        if outcome.action in (Action.FAILED, Action.WAITING) and outcome.next_retry_at is not None:
            target, why = outcome.next_retry_at, "retry"
        elif view is not None and view.next_renewal is not None:
            target, why = view.next_renewal, "renewal"
        else:
            target, why = now + policy.MIN_RETRY_DELAY, "recheck"
        when = target
        if view is not None and view.facts is not None and not view.facts.is_placeholder:
            lifetime = view.facts.not_after - view.facts.not_before
            when = min(when, now + policy.check_interval(lifetime))
        if outcome.action is Action.FAILED and outcome.next_retry_at is None:
            # A failure with no backoff of its own (a lock held elsewhere, nothing recorded)
            # still waits the shortest backoff: nothing may retry faster (issue 17, finding 3).
            when = max(when, now + policy.MIN_RETRY_DELAY)
        when = max(when, now + timedelta(milliseconds=100))
        self._log_schedule(spec.name, target, why, when)
        return when

    def _log_schedule(self, name: str, target: datetime, why: str, when: datetime) -> None:
        """Log the renewal time when it moves, not on every check: the checks in between (every
        few minutes for a day-long certificate) only confirm it."""
        last = self._logged_schedule.get(name)
        if last is not None and last[1] == why and abs(last[0] - target) <= SCHEDULE_LOG_SLACK:
            return
        self._logged_schedule[name] = (target, why)
        log.info(
            "cert_renewal_scheduled",
            cert=name,
            at=target.isoformat(),
            reason=why,
            next_check=when.isoformat(),
        )

    def _record_deploy(self, deploy: DeploySummary) -> None:
        mode = deploy.mode or self.settings.reload
        self.metrics.record_deploy("success" if deploy.ok else "failure", mode)
        self._record_sockets((s.address, s.ok, s.reachable) for s in deploy.sockets)

    def _record_served(self, check: ServedCheck) -> None:
        """A look at what HAProxy serves: each socket that was asked, and any redeploy."""
        for address, answered in check.sockets:
            self.metrics.set_haproxy_up(self._socket_label(address), answered)
        if check.deploy is not None:
            self._record_deploy(check.deploy)

    def _record_sockets(self, sockets: Iterable[tuple[str, bool, bool]]) -> None:
        """A deploy's sockets (address, ok, reachable): one that worked answered, one that could
        not be used did not. Where HAProxy answered but the deploy failed, it is left as it
        was: deploys_total and served_matches report that failure."""
        for address, ok, reachable in sockets:
            if address and (ok or not reachable):
                self.metrics.set_haproxy_up(self._socket_label(str(address)), bool(ok))

    def _socket_label(self, address: str) -> str:
        """The socket as the user wrote it (``address`` is its normalised form)."""
        sockets = self.settings.haproxy_sockets
        written = dict(zip(map(str, sockets), self.settings.haproxy_socket_texts, strict=False))
        return written.get(address, address)

    # -- health -------------------------------------------------------------------------------

    def statuses(self) -> list[metrics.CertStatus]:
        now = utc_now()
        result = []
        for spec in self.settings.certificates:
            view = self.manager.inspect(spec, now)
            served = self.manager.inventory.served(spec.name)
            file_serial = view.facts.serial_hex if view.facts else None
            result.append(
                cert_status(
                    view,
                    now,
                    deployed_serial=served.serial or file_serial,
                    served_matches=served.matches,
                    last_failure=self._failed.get(spec.name),
                )
            )
        return result

    def _liveness(self) -> tuple[bool, str | None]:
        """Cheap: `/healthz` is probed often and must not read every certificate."""
        if self.stopping.is_set():
            return False, "shutting down"
        if self._scheduler is not None and not self._scheduler.running:
            return False, "the scheduler stopped"
        return True, None if self.bundle.ready.is_set() else "waiting for the CA bundle"

    def _snapshot(self) -> HealthSnapshot:
        alive, detail = self._liveness()
        return HealthSnapshot(self.statuses(), self.metrics, alive=alive, detail=detail)


async def cmd_run(
    settings: Settings, *, reload_settings: Callable[[], Settings] | None = None
) -> int:
    # load_settings has refused a configuration without certificates (exit 2) already.
    service = Service(settings, reload_settings=reload_settings)
    return await service.run()


__all__ = ["Service", "cmd_run"]
