"""`cert-sidecar run`: keep every configured certificate issued, renewed and loaded, forever.

Start-up never needs ordering help from compose:
1. the health endpoints come up first (alive, not ready);
2. a placeholder is written for every certificate that has no file yet, so HAProxy can start;
3. the control socket is opened, so one-shot commands hand their work to this process;
4. the CA bundle is awaited (watched with watchfiles; one log line, not one per second);
5. each certificate gets a scheduler job (apscheduler 3, asyncio) that checks it, renews it
   when the policy says so, and schedules its own next run.

The cadence comes from each certificate's lifetime (`policy.check_interval`), so 5-minute and
24-hour certificates are both watched closely enough; a failure reschedules at the backoff
time stored in the state directory, so a restart keeps waiting instead of hammering the CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import watchfiles
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from sidecar import metrics, pem, policy, preflight, wiring
from sidecar.config import CertificateSpec, Settings
from sidecar.control import ControlServer, make_answer, socket_path
from sidecar.errors import ConfigError, OperationError, SidecarError, error_text
from sidecar.health import HealthServer, HealthSnapshot
from sidecar.inventory import cert_status, utc_now
from sidecar.logs import get_logger
from sidecar.manager import Manager, ServedCheck
from sidecar.outcome import Action, DeploySummary, Outcome, revocation_code
from sidecar.storage import clean_stale_temp_files
from sidecar.trust import load_ca_bundle

log = get_logger("sidecar.service")

# Shutdown must finish within 5 s (compose's default stop timeout is 10 s).
STOP_GRACE = 4.0
# Clock skew beyond this is worth a warning: with 5-minute certificates a minute of skew
# already makes fresh certificates look not-yet-valid or nearly expired.
CLOCK_SKEW_WARNING = 5.0
# How long to wait before retrying when the CA bundle exists but does not parse yet (it may be
# in the middle of being written by a CA that does not write atomically).
BUNDLE_RECHECK = 2.0
# A renewal time that moved by less than this is the same schedule (not logged again).
SCHEDULE_LOG_SLACK = timedelta(seconds=1)


class Service:
    """The long-running sidecar; `run()` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        reload_settings: Callable[[], Settings] | None = None,
        manager: Manager | None = None,
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings
        self._holder = f"run pid {os.getpid()}"
        # Everything made from the settings; replaced as a whole when the config file changes.
        # Tests may hand in a Manager (on an in-process CA, with a fake clock and its own
        # solvers); the set around it is then that manager with unused responders.
        self._parts = (
            wiring.Parts(settings, manager, wiring.Responders(settings))
            if manager is not None
            else wiring.build(settings, holder=self._holder)
        )
        deployer = self.manager.deployer
        self.metrics = metrics.Metrics(deploy_mode=deployer.mode if deployer else None)
        self._stop = asyncio.Event()
        # When an attempt last failed in this process, and why (for /metrics).
        self._failed: dict[str, tuple[datetime, metrics.ErrorKind]] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._busy: dict[str, asyncio.Lock] = {}
        self._bundle_ready = asyncio.Event()
        self._bundle_seen: bytes | None = None
        self._bundle_announced = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._control: ControlServer | None = None
        # The last schedule logged per certificate: (renewal time, why), see _next_check.
        self._logged_schedule: dict[str, tuple[datetime, str]] = {}

    @property
    def manager(self) -> Manager:
        """The current configuration's manager (a reload replaces it)."""
        return self._parts.manager

    # -- entry --------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        health = HealthServer(*self.settings.health_listen, self._snapshot, liveness=self._liveness)
        control = self._control = ControlServer(
            socket_path(self.settings.state_dir), self._handle_control
        )
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
            await control.start()
            self._spawn(self._watch_bundle())
            if self.settings.config_file is not None and self._reload_settings is not None:
                self._spawn(self._watch_config(self.settings.config_file))
            await self._wait_or_stop(self._bundle_ready.wait())
            if not self._stop.is_set():
                await self._start_scheduler()
                await self._stop.wait()
        finally:
            await self._shutdown(health)
        log.info("service_stopped")
        return 0

    def _on_signal(self, signum: int) -> None:
        log.info("service_stopping", signal=signal.Signals(signum).name)
        self._stop.set()

    async def _wait_or_stop(self, awaitable: Awaitable[Any]) -> None:
        waiter = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (waiter, stopper):
                future.cancel()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
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
        if self._control is not None:
            closers.insert(0, self._control.aclose)
        for closer in closers:
            try:
                async with asyncio.timeout(max(0.5, deadline - loop.time())):
                    await closer()
            except TimeoutError:
                log.warning("service_stop_slow", step=getattr(closer, "__qualname__", "?"))
            except Exception as error:
                log.warning("service_stop_failed", error=error_text(error))

    async def _close_parts(self) -> None:
        await wiring.close(self._parts)

    # -- the CA bundle ------------------------------------------------------------------------

    def _bundle_state(self) -> tuple[bytes | None, str | None]:
        try:
            text = load_ca_bundle(self.settings.ca_bundle)
        except ConfigError as error:
            return None, str(error)
        return text.encode(), None

    async def _watch_bundle(self) -> None:
        """Wait for the bundle to appear and parse; later, rebuild trust when it changes."""
        while not self._stop.is_set():
            # Read again each time round: a reload may have pointed the setting elsewhere.
            path = self.settings.ca_bundle
            data = await self._look_at_bundle()
            watched = _existing_parent(path)
            try:
                # The parent is watched rather than the file: the file may not exist yet, and
                # volume writers often replace it by rename, which a file watch would miss.
                async for _changes in watchfiles.awatch(
                    watched,
                    stop_event=self._stop,
                    watch_filter=functools.partial(_bundle_change, path),
                    debounce=200,
                    rust_timeout=int(BUNDLE_RECHECK * 1000) if data is None else 30_000,
                    yield_on_timeout=True,
                    recursive=watched != path.parent,
                ):
                    break
            except (OSError, RuntimeError) as error:
                log.warning("ca_bundle_watch_failed", error=error_text(error))
                await self._wait_or_stop(asyncio.sleep(BUNDLE_RECHECK))

    async def _look_at_bundle(self) -> bytes | None:
        """Act on the bundle as it is now: first ready, rotated, or (once) still missing."""
        path = self.settings.ca_bundle
        data, problem = self._bundle_state()
        if data is not None and data != self._bundle_seen:
            first = self._bundle_seen is None
            self._bundle_seen = data
            if first:
                log.info("ca_bundle_ready", path=str(path))
                self._bundle_ready.set()
            else:
                await self._bundle_rotated()
        elif data is None and not self._bundle_announced:
            log.warning("ca_bundle_waiting", path=str(path), problem=problem)
            self._bundle_announced = True
        return data

    async def _bundle_rotated(self) -> None:
        """A new bundle: rebuild trust, and re-issue what the new roots no longer verify."""
        log.info("ca_bundle_changed", path=str(self.settings.ca_bundle))
        await self.manager.reset_client()
        roots = _load_roots(self._bundle_seen or b"")
        for spec in self.settings.certificates:
            view = self.manager.inspect(spec)
            if not view.is_real:
                continue
            if not _chain_verifies(view.path, roots):
                log.warning("cert_untrusted_by_new_root", cert=spec.name)
                self._spawn(self._check(spec.name, force=True))

    # -- configuration reload -----------------------------------------------------------------

    async def _watch_config(self, path: Path) -> None:
        # The directory is watched (editors and config management replace files by rename),
        # but only events for the file itself count: a log file or anything else beside it
        # must not trigger reloads.
        async for _changes in watchfiles.awatch(
            path.parent,
            stop_event=self._stop,
            debounce=300,
            recursive=False,
            watch_filter=lambda _change, changed: Path(changed).name == path.name,
        ):
            if not path.exists():  # noqa: ASYNC240 - one stat of a local file
                continue
            assert self._reload_settings is not None
            try:
                new = self._reload_settings()
            except SidecarError as error:
                log.error("config_reload_failed", error=error_text(error))
                continue
            if new == self.settings:
                continue  # touched, not changed
            await self._apply_settings(new)

    async def _apply_settings(self, new: Settings) -> bool:
        """Replace every part with one built from ``new``; keep the old ones if that fails.

        The swap waits for every certificate's lock, so no check or order is running: each one
        sees either the old parts throughout or the new ones.
        """
        old = self.settings
        names = sorted({s.name for s in old.certificates} | {s.name for s in new.certificates})
        async with contextlib.AsyncExitStack() as held:
            for name in names:  # one lock at a time, always in the same order
                await held.enter_async_context(self._lock_for(name))
            try:
                parts = await wiring.rebuild(self._parts, new, holder=self._holder)
            except Exception as error:
                log.error("config_reload_failed", error=error_text(error))
                return False
            retired, self._parts = self._parts, parts
            self.settings = new
        old_names = {spec.name for spec in old.certificates}
        new_names = {spec.name for spec in new.certificates}
        added = sorted(new_names - old_names)
        removed = sorted(old_names - new_names)
        log.info("config_reloaded", added=added, removed=removed)
        await wiring.retire(retired)
        await self._follow_settings(old, new)
        for name in removed:
            # It stays on disk and loaded: `revoke --remove` is how a certificate goes away.
            if self._scheduler is not None:
                with contextlib.suppress(JobLookupError):
                    self._scheduler.remove_job(name)
            self._logged_schedule.pop(name, None)
        for spec in new.certificates:
            self._schedule(spec.name, utc_now())
        return True

    async def _follow_settings(self, old: Settings, new: Settings) -> None:
        """What lives outside the parts: the control socket, the bundle watch, and what only a
        restart changes."""
        if new.state_dir != old.state_dir and self._control is not None:
            # One-shot commands look for the running sidecar in the state directory they are
            # given: the socket moves with it.
            await self._control.aclose()
            self._control = ControlServer(socket_path(new.state_dir), self._handle_control)
            try:
                await self._control.start()
            except (SidecarError, OSError) as error:
                log.error("control_socket_failed", error=error_text(error))
        if new.ca_bundle != old.ca_bundle:
            # The watcher picks up the new path on its next round; act on the file now.
            self._bundle_announced = False
            await self._look_at_bundle()
        waiting = [
            name
            for name in ("health_listen", "log_format", "log_level")
            if getattr(new, name) != getattr(old, name)
        ]
        if waiting:
            log.warning("config_needs_restart", settings=waiting)

    # -- scheduling ---------------------------------------------------------------------------

    async def _start_scheduler(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._scheduler.start()
        now = utc_now()
        for spec in self.settings.certificates:
            self._schedule(spec.name, now)

    def _schedule(self, name: str, when: datetime) -> None:
        if self._scheduler is None or self._stop.is_set():
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

    async def _fire(self, name: str) -> None:
        """The scheduler's job: the check runs as our own task, so shutdown can cancel it."""
        self._spawn(self._check(name))

    def _spec(self, name: str) -> CertificateSpec | None:
        return self.settings.certificate(name)

    def _lock_for(self, name: str) -> asyncio.Lock:
        return self._busy.setdefault(name, asyncio.Lock())

    async def _check(self, name: str, *, force: bool = False) -> Outcome | None:
        """One scheduled look at a certificate: renew when due, make sure HAProxy has it."""
        async with self._lock_for(name):
            # Looked up under the lock: a reload may have changed it while this waited.
            spec = self._spec(name)
            if spec is None:
                return None
            outcome = await self._check_locked(spec, force=force, dry_run=False)
        return outcome

    async def _check_locked(
        self, spec: CertificateSpec, *, force: bool, dry_run: bool, respect_backoff: bool = True
    ) -> Outcome:
        try:
            outcome = await self.manager.ensure(
                spec, force=force, dry_run=dry_run, respect_backoff=respect_backoff and not force
            )
        except Exception as error:  # a bug must not stop this certificate's schedule
            log.exception("cert_check_crashed", cert=spec.name)
            outcome = Outcome.failed(spec.name, error_text(error))
        self._record(outcome)
        if outcome.action is Action.FAILED and not dry_run:
            self._failed[spec.name] = (utc_now(), outcome.error_kind or "other")
        if outcome.action is Action.UNCHANGED:
            self._record_served(await self.manager.ensure_served(spec))
        if not dry_run:
            self._schedule(spec.name, self._next_check(spec, outcome))
        return outcome

    def _record(self, outcome: Outcome) -> None:
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

    def _next_check(self, spec: CertificateSpec, outcome: Outcome) -> datetime:
        now = utc_now()
        view = self.manager.inspect(spec, now)
        if outcome.action in (Action.FAILED, Action.WAITING) and outcome.next_retry_at is not None:
            target, why = outcome.next_retry_at, "retry"
        elif view.next_renewal is not None:
            target, why = view.next_renewal, "renewal"
        else:
            target, why = now + policy.MIN_RETRY_DELAY, "recheck"
        when = target
        if view.facts is not None and not view.facts.is_placeholder:
            lifetime = view.facts.not_after - view.facts.not_before
            when = min(when, now + policy.check_interval(lifetime))
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
        if self._stop.is_set():
            return False, "shutting down"
        if self._scheduler is not None and not self._scheduler.running:
            return False, "the scheduler stopped"
        return True, None if self._bundle_ready.is_set() else "waiting for the CA bundle"

    def _snapshot(self) -> HealthSnapshot:
        alive, detail = self._liveness()
        return HealthSnapshot(self.statuses(), self.metrics, alive=alive, detail=detail)

    # -- the control socket -------------------------------------------------------------------

    async def _handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        log.info("control_request", command=command, peer_uid=request.get("peer_uid"))
        if command in ("issue", "renew"):
            if not self._bundle_ready.is_set():
                return make_answer(
                    False, 1, error="the running sidecar is waiting for the CA bundle"
                )
            force = bool(request.get("force"))
            dry_run = bool(request.get("dry_run"))
            outcomes = await asyncio.gather(
                *(self._handoff_one(spec, force, dry_run) for spec in self.settings.certificates)
            )
            ok = all(o.ok for o in outcomes)
            return make_answer(ok, 0 if ok else 1, results=[o.to_json() for o in outcomes])
        if command == "revoke":
            spec = self._spec(str(request.get("name")))
            if spec is None:
                return make_answer(
                    False, 1, error=f"no configured certificate {request.get('name')!r}"
                )
            try:
                reason = revocation_code(request.get("reason"))
            except ValueError as error:
                raise OperationError(f"--reason: {error}") from None
            async with self._lock_for(spec.name):
                spec = self._spec(spec.name) or spec
                outcome = await self.manager.revoke(
                    spec, reason=reason, remove=bool(request.get("remove"))
                )
                self._record(outcome)
            if outcome.action is not Action.REMOVED:
                self._schedule(spec.name, self._next_check(spec, outcome))
            return make_answer(outcome.ok, 0 if outcome.ok else 1, results=[outcome.to_json()])
        return make_answer(False, 2, error=f"unknown command {command!r}")

    async def _handoff_one(self, spec: CertificateSpec, force: bool, dry_run: bool) -> Outcome:
        async with self._lock_for(spec.name):
            # As configured now: a reload may have changed it while this waited for the lock.
            current = self._spec(spec.name)
            if current is None:
                return Outcome.failed(spec.name, "no longer configured (config reloaded)")
            return await self._check_locked(
                current, force=force, dry_run=dry_run, respect_backoff=False
            )


def _bundle_change(target: Path, _change: object, changed: str) -> bool:
    """The bundle watch's filter (watchfiles passes the change kind and the path)."""
    return _leads_to(Path(changed), target)


def _leads_to(changed: Path, target: Path) -> bool:
    """Whether a change matters for ``target``: the file itself, or a directory on its way."""
    return changed == target or changed in target.parents


def _existing_parent(path: Path) -> Path:
    """The nearest directory that exists, to watch for the bundle's appearance."""
    for candidate in [path.parent, *path.parent.parents]:
        if candidate.is_dir():
            return candidate
    return Path("/")


def _load_roots(data: bytes) -> list[x509.Certificate]:
    try:
        return pem.parse_certificates(data)
    except pem.PemError:
        return []


def _chain_verifies(path: Path, roots: list[x509.Certificate]) -> bool:
    """Whether the deployed chain leads to one of ``roots`` (signature check, top down)."""
    try:
        bundle = pem.parse_combined(path.read_bytes())
    except (OSError, pem.PemError):
        return True  # nothing to judge; the normal check handles unreadable files
    top = ([bundle.leaf, *bundle.chain])[-1]
    for root in roots:
        if top.fingerprint(hashes.SHA256()) == root.fingerprint(hashes.SHA256()):
            return True
        try:
            top.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


async def cmd_run(
    settings: Settings, *, reload_settings: Callable[[], Settings] | None = None
) -> int:
    # load_settings has refused a configuration without certificates (exit 2) already.
    preflight.check(settings)
    service = Service(settings, reload_settings=reload_settings)
    return await service.run()


__all__ = ["Service", "cmd_run"]
