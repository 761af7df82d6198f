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
import random
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ca_client.challenges.base import ChallengeSolver
from ca_client.challenges.dns01 import Dns01HookSolver
from ca_client.challenges.http01 import Http01Responder
from ca_client.challenges.tlsalpn01 import TlsAlpn01Responder
from ca_client.errors import AcmeError
from sidecar import preflight, storage
from sidecar.config import AcmeSettings, Settings
from sidecar.deploy import Deployer, deployer_from_settings
from sidecar.errors import OperationError, SidecarError, error_text
from sidecar.inventory import Inventory, utc_now
from sidecar.issuer import AccountSettings, Issuer
from sidecar.logs import get_logger
from sidecar.manager import Manager, PemFiles

__all__ = [
    "Parts",
    "Responders",
    "account",
    "build",
    "close",
    "deployer",
    "inventory",
    "opened",
    "rebuild",
    "retire",
    "solvers_change",
    "start_solver",
]

log = get_logger("sidecar.wiring")


async def start_solver(challenge: str, settings: Settings) -> ChallengeSolver:
    """The solver for ``challenge`` as ``settings`` configure it; a responder is listening."""
    if challenge == "http-01":
        http = Http01Responder(*settings.acme.http_listen)
        await http.start()
        return http
    if challenge == "tls-alpn-01":
        alpn = TlsAlpn01Responder(*settings.acme.tls_alpn_listen)
        await alpn.start()
        return alpn
    if challenge == "dns-01":
        if not settings.acme.dns_hook:
            raise OperationError("--dns-hook: dns-01 needs a hook command")
        return Dns01HookSolver(settings.acme.dns_hook, passthrough=settings.service.hook_env)
    raise OperationError(f"--challenge: unknown challenge type {challenge!r}")


def _identity(challenge: str, settings: Settings) -> Hashable:
    """What a running solver was made from: when it changes, the solver must be made again."""
    if challenge == "http-01":
        return settings.acme.http_listen
    if challenge == "tls-alpn-01":
        return settings.acme.tls_alpn_listen
    if challenge == "dns-01":
        return (settings.acme.dns_hook, settings.service.hook_env)
    return None


def solvers_change(old: Settings, new: Settings) -> bool:
    """Whether `Responders.update` would close a solver (its address or hook changed): what
    an order in flight may be using, so a reload waits for those orders first."""
    return any(
        _identity(challenge, old) != _identity(challenge, new)
        for challenge in ("http-01", "tls-alpn-01", "dns-01")
    )


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

    def __init__(
        self, settings: Settings, *, given: Mapping[str, ChallengeSolver] | None = None
    ) -> None:
        self._settings = settings
        self._running: dict[str, ChallengeSolver] = {}
        # Handed in by the caller (tests, embedders): used first, never moved nor closed.
        self._given = dict(given or {})
        self._lock = asyncio.Lock()

    @property
    def running(self) -> dict[str, ChallengeSolver]:
        """The solvers started so far (a copy), for tests and diagnostics."""
        return dict(self._running)

    async def get(self, challenge: str) -> ChallengeSolver:
        async with self._lock:
            solver = self._given.get(challenge) or self._running.get(challenge)
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


@dataclass(frozen=True, slots=True)
class Parts:
    """One consistent set of parts, all made from ``settings``."""

    settings: Settings
    manager: Manager
    responders: Responders


def inventory(
    settings: Settings, *, create_state: bool = True, now: Callable[[], datetime] = utc_now
) -> Inventory:
    """The read side for ``settings`` (``status`` makes only this, creating nothing)."""
    store = storage.StateStore(settings.files.state_dir, create=create_state)
    if create_state:
        _make_certs_dir(settings.files.certs_dir)
    return Inventory(store, settings.files.certs_dir, renew_at=settings.renewal.renew_at, now=now)


def deployer(settings: Settings) -> Deployer | None:
    """None when there is nothing to tell: no HAProxy, no reload, no hook, no check."""
    if not (
        settings.haproxy.sockets
        or settings.haproxy.reload != "none"
        or settings.haproxy.deploy_hook
        or settings.haproxy.verify_address
    ):
        return None
    return deployer_from_settings(settings)


def account(acme: AcmeSettings, client_options: Mapping[str, Any] | None = None) -> AccountSettings:
    """What the issuer needs of ``[acme]`` to reach the CA as this account."""
    return AccountSettings(
        directory=acme.directory,
        ca_bundle=acme.ca_bundle,
        system_trust=acme.system_trust,
        email=acme.email,
        eab_kid=acme.eab_kid,
        eab_hmac_key=acme.eab_hmac_key,
        client_options=dict(client_options or {}),
    )


def build(
    settings: Settings,
    *,
    holder: str,
    responders: Responders | None = None,
    now: Callable[[], datetime] = utc_now,
    rng: random.Random | None = None,
    client_options: Mapping[str, Any] | None = None,
    solvers: Mapping[str, ChallengeSolver] | None = None,
) -> Parts:
    """Every part for ``settings``; raises (and leaves nothing open) when one cannot be made.

    Nothing here touches the network: the ACME client is opened on the first order (the CA or
    its bundle may not be there yet), the responders on first use. The deployer is made now so
    that settings it cannot use fail here, not at the first deploy. ``now``, ``rng`` and
    ``client_options`` (extra `AcmeClient` keywords) and ``solvers`` (used, never closed) are
    for tests.
    """
    responders = responders or Responders(settings, given=solvers)
    seen = inventory(settings, now=now)
    manager = Manager(
        inventory=seen,
        issuer=Issuer(account(settings.acme, client_options), seen.store, responders),
        deployer=deployer(settings),
        files=PemFiles(settings.files.pem_mode, settings.files.pem_group),
        holder=holder,
        rng=rng,
    )
    return Parts(settings, manager, responders)


def _make_certs_dir(path: Path) -> None:
    """The certs directory is HAProxy's to read: world-traversable, written only by us."""
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as error:
        raise OperationError(f"cannot create {path}: {error.strerror or error}") from None


async def rebuild(old: Parts, settings: Settings, *, holder: str) -> Parts:
    """A fresh set for new ``settings``, after the ``reload`` row of `preflight.STARTUP_CHECKS`.

    It shares ``old``'s responders (moved where their address changed). ``old`` is left
    untouched when this raises; otherwise close its manager with `retire` once nothing uses it.
    Call it while no order is in flight.
    """
    preflight.run_startup_checks("reload", settings)
    parts = build(settings, holder=holder, responders=old.responders)
    # What HAProxy serves did not change with the file; the next check confirms it.
    parts.manager.inventory.adopt_served(old.manager.inventory)
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
