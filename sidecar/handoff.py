"""The control socket of `cert-sidecar run`: work handed over by one-shot commands.

While `run` holds the certificates' locks, ``issue``, ``renew`` and ``revoke`` started beside it
would only wait for them; instead they send their request over the socket in the state
directory (`sidecar.control`), and `Handoff` carries it out under the same per-certificate locks
as the schedule, records it the same way, and answers with the same JSON and exit code the
command would have given on its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar import orphans
from sidecar.config import CertificateSpec, work_fingerprint
from sidecar.control import ControlServer, make_answer, outcomes_answer, socket_path
from sidecar.errors import OperationError, SidecarError, error_text
from sidecar.inventory import utc_now
from sidecar.logs import get_logger
from sidecar.outcome import Action, Outcome, revocation_code
from sidecar.status import orphan_records, status_record

if TYPE_CHECKING:
    from sidecar.service import Service

__all__ = ["Handoff"]

# The service's logger: these events were always the service's, and stay under its name.
log = get_logger("sidecar.service")


class Handoff:
    """The control socket's server and the requests it hands to the service."""

    def __init__(self, service: Service) -> None:
        self._service = service
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
        self._service.spawn(old.aclose(finish=True))
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
        service = self._service
        if not service.bundle.ready.is_set():
            return make_answer(False, 1, error="the running sidecar is waiting for the CA bundle")
        force = bool(request.get("force"))
        dry_run = bool(request.get("dry_run"))
        outcomes = await asyncio.gather(
            *(self._check_one(spec, force, dry_run) for spec in service.settings.certificates)
        )
        return outcomes_answer(outcomes)

    async def _check_one(self, spec: CertificateSpec, force: bool, dry_run: bool) -> Outcome:
        service = self._service
        async with service.lock_for(spec.name):
            # As configured now: a reload may have changed it while this waited for the lock.
            current = service.spec(spec.name)
            if current is None:
                return Outcome.failed(spec.name, "no longer configured (config reloaded)")
            return await service.check_locked(
                current, force=force, dry_run=dry_run, respect_backoff=False
            )

    async def _revoke(self, request: dict[str, Any]) -> dict[str, Any]:
        service = self._service
        spec = service.spec(str(request.get("name")))
        if spec is None:
            return make_answer(False, 1, error=f"no configured certificate {request.get('name')!r}")
        try:
            reason = revocation_code(request.get("reason"))
        except ValueError as error:
            raise OperationError(f"--reason: {error}") from None
        async with service.lock_for(spec.name), service.gate.use() as parts:
            # The parts borrowed for the whole revocation (a reload may swap them meanwhile).
            spec = parts.settings.certificate(spec.name) or spec
            outcome = await parts.manager.revoke(
                spec, reason=reason, remove=bool(request.get("remove"))
            )
            service.record(outcome)
        if outcome.action is not Action.REMOVED:
            service.schedule(spec.name, service.next_check(spec, outcome))
        return outcomes_answer([outcome])

    async def _remove_orphan(self, request: dict[str, Any]) -> dict[str, Any]:
        """``revoke NAME --remove`` for a name the configuration no longer has."""
        service = self._service
        name = str(request.get("name"))
        async with service.lock_for(name):
            # Under the lock: a reload may have configured the name again meanwhile.
            orphan = orphans.find(service.manager.inventory, service.settings, name)
            if orphan is None:
                return make_answer(
                    False, 1, error=f"{name!r} is configured, or has no file in the certs directory"
                )
            try:
                reason = revocation_code(request.get("reason"))
            except ValueError as error:
                raise OperationError(f"--reason: {error}") from None
            outcome = await orphans.remove(service.manager, orphan, service.settings, reason=reason)
        left = service.manager.inventory.orphans(s.name for s in service.settings.certificates)
        service.metrics.set_not_configured(len(left))
        return outcomes_answer([outcome])

    def _status(self) -> dict[str, Any]:
        """``status`` as this process sees it (asked when the config file does not load)."""
        service = self._service
        now = utc_now()
        records = [status_record(status, now) for status in service.statuses()]
        answer = make_answer(True, 0, results=records)
        answer["not_configured"] = orphan_records(service.manager.inventory, service.settings)
        return answer

    def _settings(self) -> dict[str, Any]:
        """What this process's work follows (`config.work_fingerprint`), so that a one-shot
        with other settings is not done here as if it had these."""
        answer = make_answer(True, 0)
        answer["work"] = work_fingerprint(self._service.settings)
        return answer
