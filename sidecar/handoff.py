"""The control socket of `cert-sidecar run`: work handed over by one-shot commands.

While `run` holds the certificates' locks, ``issue``, ``renew`` and ``revoke`` started beside it
would only wait for them; instead they send their request over the socket in the state
directory (`sidecar.control`), and `Handoff` hands it to the renewal loop, which does it under
the same per-certificate locks as the schedule and follows its outcome with the same step
(`sidecar.renewal_loop`); `Handoff` answers with the same JSON and exit code the command would
have given on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from sidecar.config import CertificateSpec, work_fingerprint
from sidecar.control import ControlServer, make_answer, socket_path
from sidecar.errors import OperationError, SidecarError, error_text
from sidecar.inventory import utc_now
from sidecar.logs import get_logger
from sidecar.metrics import CertStatus
from sidecar.outcome import Outcome, revocation_code
from sidecar.status import orphan_records, status_record
from sidecar.wiring import Parts

__all__ = ["Handoff", "Renewals"]

# The service's logger: these events were always the service's, and stay under its name.
log = get_logger("sidecar.service")


class Renewals(Protocol):
    """What the hand-off asks of the renewal loop (`sidecar.renewal_loop.RenewalLoop`): the
    work of a request, under the loop's locks and followed by its one after-an-outcome step."""

    async def check_handed(self, name: str, *, force: bool, dry_run: bool) -> Outcome: ...

    async def revoke(
        self, spec: CertificateSpec, *, reason: int | None, remove: bool
    ) -> Outcome: ...

    async def remove_orphan(self, name: str, reason: str | None) -> Outcome | None: ...


class Handoff:
    """The control socket's server and the requests it hands to the renewal loop.

    ``renewals`` does the work; ``parts`` are the current ones (the configuration a request is
    read against, the inventory ``status`` shows); ``ready`` is set once the CA bundle is
    there; ``statuses`` is every certificate's status; ``spawn`` runs the old socket's last
    requests beside a move.
    """

    def __init__(
        self,
        renewals: Renewals,
        *,
        parts: Callable[[], Parts],
        ready: asyncio.Event,
        statuses: Callable[[], list[CertStatus]],
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self._renewals = renewals
        self._parts = parts
        self._ready = ready
        self._statuses = statuses
        self._spawn = spawn
        self.server: ControlServer | None = None

    async def open(self, state_dir: Path) -> None:
        self.server = ControlServer(socket_path(state_dir), self.handle)
        await self.server.start()

    async def move(self, state_dir: Path) -> None:
        """One-shot commands look for the running sidecar in the state directory they are
        given: the socket moves with it (a reload).

        The old socket stops taking requests, but those already in progress finish and are
        answered on it: the sidecar did not stop, and a cancelled request used to tell the
        command it had (issue 17, finding 8). That wait runs beside the reload, not in it.
        """
        old = self.server
        if old is None:
            return
        self.server = ControlServer(socket_path(state_dir), self.handle)
        self._spawn(old.aclose(finish=True))
        try:
            await self.server.start()
        except (SidecarError, OSError) as error:
            log.error("control_socket_failed", error=error_text(error))

    async def aclose(self) -> None:
        if self.server is not None:
            await self.server.aclose()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        log.info("control_request", command=command, peer_uid=request.get("peer_uid"))
        if command in ("issue", "renew"):
            return await self._check_all(request)
        if command == "revoke":
            return await self._revoke(request)
        if command == "remove-orphan":
            return await self._remove_orphan(request)
        if command == "status":
            return self._status()
        if command == "settings":
            return self._settings()
        return make_answer(False, 2, error=f"unknown command {command!r}")

    async def _check_all(self, request: dict[str, Any]) -> dict[str, Any]:
        if not self._ready.is_set():
            return make_answer(False, 1, error="the running sidecar is waiting for the CA bundle")
        force = bool(request.get("force"))
        dry_run = bool(request.get("dry_run"))
        outcomes = await asyncio.gather(
            *(
                self._renewals.check_handed(spec.name, force=force, dry_run=dry_run)
                for spec in self._parts().settings.certificates
            )
        )
        ok = all(o.ok for o in outcomes)
        return make_answer(ok, 0 if ok else 1, results=[o.to_json() for o in outcomes])

    async def _revoke(self, request: dict[str, Any]) -> dict[str, Any]:
        spec = self._parts().settings.certificate(str(request.get("name")))
        if spec is None:
            return make_answer(False, 1, error=f"no configured certificate {request.get('name')!r}")
        try:
            reason = revocation_code(request.get("reason"))
        except ValueError as error:
            raise OperationError(f"--reason: {error}") from None
        outcome = await self._renewals.revoke(
            spec, reason=reason, remove=bool(request.get("remove"))
        )
        return make_answer(outcome.ok, 0 if outcome.ok else 1, results=[outcome.to_json()])

    async def _remove_orphan(self, request: dict[str, Any]) -> dict[str, Any]:
        """``revoke NAME --remove`` for a name the configuration no longer has."""
        name = str(request.get("name"))
        # Parsed by the loop once the name is known to be an orphan (as `_revoke` parses it).
        outcome = await self._renewals.remove_orphan(name, request.get("reason"))
        if outcome is None:
            return make_answer(
                False, 1, error=f"{name!r} is configured, or has no file in the certs directory"
            )
        return make_answer(outcome.ok, 0 if outcome.ok else 1, results=[outcome.to_json()])

    def _status(self) -> dict[str, Any]:
        """``status`` as this process sees it (asked when the config file does not load)."""
        now = utc_now()
        records = [status_record(status, now) for status in self._statuses()]
        answer = make_answer(True, 0, results=records)
        parts = self._parts()
        answer["not_configured"] = orphan_records(parts.manager.inventory, parts.settings)
        return answer

    def _settings(self) -> dict[str, Any]:
        """What this process's work follows (`config.work_fingerprint`), so that a one-shot
        with other settings is not done here as if it had these."""
        answer = make_answer(True, 0)
        answer["work"] = work_fingerprint(self._parts().settings)
        return answer
