"""Every part a command works with, built from `Settings` in one place and closed together.

A `Parts` is the manager (with its state store, ACME client and deployer, made from the same
settings) and the challenge responders. `build` makes one; `close` closes one. `run` builds a
fresh set when its config file changes (`rebuild`) and closes the old manager once nothing uses
it, so that nothing keeps what an earlier configuration said: the CA directory and bundle, the
HAProxy sockets, the certs directory and the challenge all apply to the next order.

The responders are the exception, on purpose: they outlive a reload while their listen address
stays the same. A bound port 80 is kept rather than closed and bound again, which could fail
(or let something else take the port) in between; only a responder whose address changed is
closed, then bound at the new address. A responder that cannot bind there is logged and left
closed; the next order that needs it tries again and fails in the usual way, so the sidecar
keeps running and says why.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ca_client.challenges.base import ChallengeSolver
from ca_client.challenges.dns01 import Dns01HookSolver
from ca_client.challenges.http01 import Http01Responder
from ca_client.challenges.tlsalpn01 import TlsAlpn01Responder
from ca_client.errors import AcmeError
from sidecar import preflight
from sidecar.config import Settings
from sidecar.errors import OperationError, SidecarError
from sidecar.logs import get_logger
from sidecar.manager import Manager, error_text

__all__ = [
    "Parts",
    "Responders",
    "build",
    "close",
    "opened",
    "rebuild",
    "retire",
    "start_solver",
]

log = get_logger("sidecar.wiring")


async def start_solver(challenge: str, settings: Settings) -> ChallengeSolver:
    """The solver for ``challenge`` as ``settings`` configure it; a responder is listening."""
    if challenge == "http-01":
        http = Http01Responder(*settings.http_listen)
        await http.start()
        return http
    if challenge == "tls-alpn-01":
        alpn = TlsAlpn01Responder(*settings.tls_alpn_listen)
        await alpn.start()
        return alpn
    if challenge == "dns-01":
        if not settings.dns_hook:
            raise OperationError("--dns-hook: dns-01 needs a hook command")
        return Dns01HookSolver(settings.dns_hook, passthrough=settings.hook_env)
    raise OperationError(f"--challenge: unknown challenge type {challenge!r}")


def _identity(challenge: str, settings: Settings) -> Hashable:
    """What a running solver was made from: when it changes, the solver must be made again."""
    if challenge == "http-01":
        return settings.http_listen
    if challenge == "tls-alpn-01":
        return settings.tls_alpn_listen
    if challenge == "dns-01":
        return (settings.dns_hook, settings.hook_env)
    return None


async def _close_solver(solver: ChallengeSolver) -> None:
    closer = getattr(solver, "aclose", None)
    if closer is None:
        return
    try:
        await closer()
    except Exception as error:
        log.warning("responder_close_failed", error=error_text(error))


class Responders:
    """The challenge solvers of one process, by challenge type, each started on first use.

    Started lazily, as before: a sidecar whose certificates all use dns-01 never binds :80.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._running: dict[str, ChallengeSolver] = {}
        self._lock = asyncio.Lock()

    @property
    def running(self) -> dict[str, ChallengeSolver]:
        """The solvers started so far (a copy), for tests and diagnostics."""
        return dict(self._running)

    async def get(self, challenge: str) -> ChallengeSolver:
        async with self._lock:
            solver = self._running.get(challenge)
            if solver is None:
                solver = await start_solver(challenge, self._settings)
                self._running[challenge] = solver
            return solver

    async def update(self, settings: Settings) -> None:
        """Follow new settings: keep every solver whose address (or hook) is unchanged; close
        the others first (the new address may be the same port on another interface), then
        start them again from ``settings``. Call it while no order is in flight."""
        async with self._lock:
            old, self._settings = self._settings, settings
            for challenge, solver in list(self._running.items()):
                if _identity(challenge, settings) == _identity(challenge, old):
                    continue
                del self._running[challenge]
                await _close_solver(solver)
                try:
                    self._running[challenge] = await start_solver(challenge, settings)
                except (SidecarError, AcmeError, OSError, ValueError) as error:
                    # Left closed: the next order needing it tries again, and fails visibly.
                    log.error(
                        "responder_restart_failed", challenge=challenge, error=error_text(error)
                    )

    async def aclose(self) -> None:
        async with self._lock:
            running, self._running = self._running, {}
        for solver in running.values():
            await _close_solver(solver)


class _WiredManager(Manager):
    """A `Manager` that takes its challenge solvers from `Responders` (which outlive it), not
    from ones it starts and closes itself."""

    def __init__(self, settings: Settings, *, holder: str, responders: Responders) -> None:
        super().__init__(settings, holder=holder)
        self._responders = responders

    async def solver(self, challenge: str) -> ChallengeSolver:
        return await self._responders.get(challenge)


@dataclass(frozen=True, slots=True)
class Parts:
    """One consistent set of parts, all made from ``settings``."""

    settings: Settings
    manager: Manager
    responders: Responders


def build(settings: Settings, *, holder: str, responders: Responders | None = None) -> Parts:
    """Every part for ``settings``; raises (and leaves nothing open) when one cannot be made.

    Nothing here touches the network: the ACME client is opened on the first order (the CA or
    its bundle may not be there yet), the responders on first use. The deployer is made now so
    that settings it cannot use fail here, not at the first deploy.
    """
    responders = responders or Responders(settings)
    manager = _WiredManager(settings, holder=holder, responders=responders)
    manager.deployer()
    return Parts(settings, manager, responders)


async def rebuild(old: Parts, settings: Settings, *, holder: str) -> Parts:
    """A fresh set for new ``settings``, after the same checks as at start-up (`preflight`).

    It shares ``old``'s responders (moved where their address changed). ``old`` is left
    untouched when this raises; otherwise close its manager with `retire` once nothing uses it.
    Call it while no order is in flight.
    """
    preflight.check(settings)
    parts = build(settings, holder=holder, responders=old.responders)
    await old.responders.update(settings)
    return parts


async def retire(old: Parts) -> None:
    """Close what a replaced set does not share with its successor (all but the responders)."""
    await old.manager.aclose()


async def close(parts: Parts) -> None:
    """Close every part of the set: the ACME client's connections, then the responders."""
    try:
        await parts.manager.aclose()
    finally:
        await parts.responders.aclose()


@asynccontextmanager
async def opened(settings: Settings, *, holder: str) -> AsyncIterator[Parts]:
    """``async with opened(settings, holder=...) as parts:`` for one pass of a one-shot."""
    parts = build(settings, holder=holder)
    try:
        yield parts
    finally:
        await close(parts)
