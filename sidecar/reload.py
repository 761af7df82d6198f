"""The config-file reload of `cert-sidecar run --config FILE`.

`ConfigReload` watches the file, loads it again when it changes, and has every part built anew
from the new settings (`wiring.rebuild`), swapped in through the service's `SwapGate`, so each
check or order sees either the old parts throughout or the new ones, and none waits for another.
A file that does not load, or parts that cannot be built, leave the running ones in place
(``config_reload_failed``).
What lives outside the parts follows too: the control socket moves with the state directory, the
bundle watch turns to a new ``ca_bundle``; what only a restart changes is logged as such.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from sidecar import watch, wiring
from sidecar.config import Settings
from sidecar.errors import SidecarError, error_text
from sidecar.gate import SwapGate
from sidecar.logs import get_logger

__all__ = ["ConfigReload", "Reloading"]

# The service's logger: these events were always the service's, and stay under its name.
log = get_logger("sidecar.service")

# Settings the running process keeps until it is restarted.
_RESTART_ONLY = ("health_listen", "log_format", "log_level")


class Reloading(Protocol):
    """Who hears that a reload begins and ends (systemd's RELOADING=1 ... READY=1)."""

    def reloading(self) -> None: ...

    def reloaded(self) -> None: ...


class ConfigReload:
    """Applies a changed config file to the running service.

    ``load`` reads the settings again (None: ``run`` without ``--config``); the parts are built
    by `wiring.rebuild` (``holder`` names this process on lock files) and swapped in through
    ``gate`` by ``adopt``; ``follow(old, new)`` then moves what lives outside the parts (the
    control socket, the bundle watch, the schedule). ``notify`` hears each reload begin and
    end; the watch ends once ``stopping`` is set.
    """

    def __init__(
        self,
        load: Callable[[], Settings] | None,
        *,
        gate: SwapGate[wiring.Parts],
        holder: str,
        adopt: Callable[[wiring.Parts], Awaitable[object]],
        follow: Callable[[Settings, Settings], Awaitable[None]],
        notify: Reloading,
        stopping: asyncio.Event,
    ) -> None:
        self._load = load
        self._gate = gate
        self._holder = holder
        self._adopt = adopt
        self._follow_parts = follow
        self._notify = notify
        self._stopping = stopping

    @property
    def enabled(self) -> bool:
        """Whether there is a way to load the settings again (``run --config FILE``)."""
        return self._load is not None

    async def watch(self, path: Path) -> None:
        # The directory is watched (editors and config management replace files by rename),
        # but only events for the file itself count: a log file or anything else beside it
        # must not trigger reloads.
        async for _changes in watch.awatch(
            path.parent,
            stop_event=self._stopping,
            debounce=300,
            recursive=False,
            watch_filter=lambda _change, changed: Path(changed).name == path.name,
        ):
            if not path.exists():  # noqa: ASYNC240 - one stat of a local file
                continue
            assert self._load is not None
            try:
                new = self._load()
            except SidecarError as error:
                log.error("config_reload_failed", error=error_text(error))
                continue
            if new == self._gate.current.settings:
                continue  # touched, not changed
            self._notify.reloading()  # systemd: RELOADING=1 now, READY=1 after
            try:
                await self.apply(new)
            finally:
                self._notify.reloaded()

    async def apply(self, new: Settings) -> bool:
        """Replace every part with one built from ``new``; keep the old ones if that fails.

        New checks wait at the gate while the parts are built and swapped; checks already
        running finish on the parts they started with, which are closed after them
        (`sidecar.gate`). So each check or order sees either the old parts throughout or the new
        ones, and none waits for an unrelated order (issue 17, finding 7). Only a responder
        that must move (its address or hook changed) makes the swap wait for the checks
        already running, since their orders may be answering a challenge on it.
        """
        gate = self._gate
        old = gate.current.settings
        async with gate.closed():
            if wiring.solvers_change(old, new):
                await gate.wait_idle()
            try:
                parts = await wiring.rebuild(gate.current, new, holder=self._holder)
            except Exception as error:
                log.error("config_reload_failed", error=error_text(error))
                return False
            await self._adopt(parts)
        old_names = {spec.name for spec in old.certificates}
        new_names = {spec.name for spec in new.certificates}
        removed = sorted(old_names - new_names)
        log.info("config_reloaded", added=sorted(new_names - old_names), removed=removed)
        # What lives outside the parts, then what only a restart changes.
        await self._follow_parts(old, new)
        waiting = [name for name in _RESTART_ONLY if new.value(name) != old.value(name)]
        if waiting:
            log.warning("config_needs_restart", settings=waiting)
        return True
