"""`cert-sidecar run`: keep every configured certificate issued, renewed and loaded, forever.

Start-up never needs ordering help from compose:
1. the health endpoints come up first (alive, not ready);
2. a placeholder is written for every certificate that has no file yet, so HAProxy can start;
3. the control socket is opened, so one-shot commands hand their work to this process;
4. the CA bundle is awaited (watched with watchfiles; one log line, not one per second);
5. the renewal loop starts (`renewal_loop`): each certificate gets a scheduler job that
   checks it, renews it when the policy says so, and schedules its own next run.

`Service` keeps start-up, shutdown and the wiring of the parts: the parts built from the
settings (behind the `SwapGate`), the metrics, and the parts that act on their own: the renewal
loop, the bundle watch (`bundle_watch`), the control socket (`handoff`), the config reload
(`reload`) and systemd's notify protocol (`sdnotify`). Each is given only what it uses.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from sidecar import applied, metrics, wiring
from sidecar.bundle_watch import BundleWatch
from sidecar.config import Settings
from sidecar.errors import error_text
from sidecar.gate import SwapGate
from sidecar.handoff import Handoff
from sidecar.health import HealthServer, HealthSnapshot
from sidecar.inventory import cert_status, utc_now
from sidecar.logs import get_logger
from sidecar.manager import Manager
from sidecar.reload import ConfigReload
from sidecar.renewal_loop import CLOCK_SKEW_WARNING, MAX_CONCURRENT_CHECKS, RenewalLoop
from sidecar.sdnotify import Notifier, ServiceNotify
from sidecar.storage import clean_stale_temp_files

log = get_logger("sidecar.service")

# Shutdown must finish within 5 s (compose's default stop timeout is 10 s).
STOP_GRACE = 4.0


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
        self.holder = f"run pid {os.getpid()}"
        # Everything made from the settings; replaced as a whole when the config file changes.
        # Tests hand in parts built by `wiring.build` for an in-process CA and a fake clock.
        # Each check borrows them from the gate for its whole length (see `sidecar.gate`).
        self.gate = SwapGate(parts or wiring.build(settings, holder=self.holder), wiring.retire)
        deployer = self.manager.deployer
        self.metrics = metrics.Metrics(deploy_mode=deployer.mode if deployer else None)
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # systemd's notify protocol (READY, STATUS, watchdog); inert without NOTIFY_SOCKET.
        self.notify = ServiceNotify(
            notifier or Notifier.from_environment(),
            statuses=self.statuses,
            waiting_for=lambda: (
                None if self.bundle.ready.is_set() else self.settings.acme.ca_bundle
            ),
            now=utc_now,
        )
        # The parts that act on their own, each given only what it uses.
        self.loop = RenewalLoop(
            self.gate,
            self.metrics,
            changed=self.notify.changed,
            spawn=self.spawn,
            stopping=self.stopping,
        )
        self.bundle = BundleWatch(
            lambda: self.gate.current,
            stopping=self.stopping,
            recheck=self._recheck,
        )
        self.handoff = Handoff(
            self.loop,
            parts=lambda: self.gate.current,
            ready=self.bundle.ready,
            statuses=self.statuses,
            spawn=self.spawn,
        )
        self.reload = ConfigReload(
            reload_settings,
            gate=self.gate,
            holder=self.holder,
            adopt=self.adopt,
            follow=self._follow,
            notify=self.notify,
            stopping=self.stopping,
        )

    @property
    def settings(self) -> Settings:
        """The current configuration (checks already running may follow an older one)."""
        return self.gate.current.settings

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
        # A reload marks errors of a configuration that changed as stale, before the swap.
        current = self.gate.current
        applied.mark_errors_stale(current.settings, parts.settings, parts.manager.inventory)
        retired = await self.gate.swap(parts)
        self.spawn(applied.settings_applied(parts, self.metrics))
        return retired

    def _recheck(self, name: str) -> None:
        """A forced check now (a certificate the rotated CA bundle no longer verifies)."""
        self.spawn(self.loop.check(name, force=True))

    async def _follow(self, old: Settings, new: Settings) -> None:
        """After a reload, what lives outside the parts: the control socket moves with the
        state directory, the bundle watch turns to the new bundle, the schedule follows."""
        if new.files.state_dir != old.files.state_dir:
            await self.handoff.move(new.files.state_dir)
        if new.acme.ca_bundle != old.acme.ca_bundle:
            await self.bundle.moved()
        self.loop.follow(old, new)

    # -- entry --------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        health = HealthServer(
            *self.settings.service.health_listen, self._snapshot, liveness=self._liveness
        )
        self.spawn(self.notify.watchdog(lambda: self._liveness()[0]))
        try:
            await health.start()
            log.info(
                "service_starting",
                certificates=[spec.name for spec in self.settings.certificates],
                health=[f"{h}:{p}" for h, p in health.addresses],
            )
            clean_stale_temp_files(self.settings.files.certs_dir)
            if self.settings.service.placeholder is not False:
                for spec in self.settings.certificates:
                    await self.manager.ensure_placeholder(spec)
            # READY=1 now if every certificate has a file (placeholders count), else after the
            # check that gives the last one its file (`RenewalLoop.record`).
            self.notify.started()
            await self.handoff.open(self.settings.files.state_dir)
            self.spawn(self.bundle.watch())
            self.notify.changed()  # after the watch's first look: "waiting for CA bundle"?
            if self.settings.config_file is not None and self.reload.enabled:
                self.spawn(self.reload.watch(self.settings.config_file))
            await self.wait_or_stop(self.bundle.ready.wait())
            self.notify.changed()
            if not self.stopping.is_set():
                self.spawn(applied.settings_applied(self.parts, self.metrics))
                self.loop.start()
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
        self.loop.stop()
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
                    last_failure=self.loop.last_failure(spec.name),
                )
            )
        return result

    def _liveness(self) -> tuple[bool, str | None]:
        """Cheap: `/healthz` is probed often and must not read every certificate."""
        if self.stopping.is_set():
            return False, "shutting down"
        if self.loop.stalled:
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


__all__ = ["CLOCK_SKEW_WARNING", "MAX_CONCURRENT_CHECKS", "Service", "cmd_run"]
