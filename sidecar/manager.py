"""One certificate's life: decide, obtain, store, write, deploy; and revoke.

The `Manager` is built from parts (`sidecar.wiring` makes them from `Settings`): the
`Inventory` (what is on disk and deployed, the state store behind it), the `Issuer` (the CA),
and the `Deployer` (HAProxy, a hook). It is the only writer of certificates, their metadata
and the deploy state. The one-shot commands (`issue`, `renew`, `revoke`) make one pass and
close it; `run` keeps it open for the life of a configuration. Every step that changes a
certificate holds that certificate's lock in the state directory, so two processes never
order the same certificate at once.

The order of writes is what makes a crash at any moment safe:
1. the certificate key is saved (0600) before the order, so a retried order reuses it (its
   rename is made durable by the directory fsync of step 3: `StateStore.save_key`);
2. the new certificate is checked (`pem.combine_for_deploy`, the checks of
   `pem.validate_for_deploy`) before anything is replaced;
3. the state copy and the metadata recording success are committed together (the old copy
   kept as ``previous.pem``; one directory fsync), then the combined PEM is replaced
   atomically in the certs directory;
4. HAProxy is told last; if that fails the file on disk is already right, and the next
   deploy (or an HAProxy restart) picks it up.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.serialization import Encoding
from structlog.stdlib import BoundLogger

from ca_client.keys import PrivateKey, generate_private_key, key_type_of, private_key_to_pem
from ca_client.models import IssuedCertificate
from sidecar import pem, policy, storage
from sidecar.config import CertificateSpec
from sidecar.deploy import Deployer
from sidecar.deploy_result import DeployResult
from sidecar.errors import SidecarError, error_kind, error_text, with_hint
from sidecar.inventory import CertView, Inventory
from sidecar.issuer import Issuer, IssuerError
from sidecar.logs import get_logger
from sidecar.outcome import Action, Outcome
from sidecar.placeholder import make_placeholder

__all__ = [
    "Manager",
    "PemFiles",
    "ServedCheck",
    "decide",
    "finish_in_thread",
    "order_timeout",
]

log = get_logger("sidecar.manager")

T = TypeVar("T")

# How long one order may take before it is abandoned (step-ca answers in milliseconds; Pebble
# sleeps up to several seconds per validation; a DNS hook may wait for propagation).
ORDER_TIMEOUT = 300.0
# While a valid certificate is deployed, one attempt may use at most this share of its time
# left (never less than MIN_ORDER_TIMEOUT): a CA that hangs must not eat the whole remaining
# validity in one attempt when a retry could still succeed before expiry.
ORDER_SHARE_OF_TIME_LEFT = 0.25
MIN_ORDER_TIMEOUT = 15.0
# How many orders run at once in one pass: enough to fill the CA's pipeline over one connection
# pool, few enough not to look like a flood to a CA or to a DNS hook.
MAX_CONCURRENT_ORDERS = 16
# How long a command waits for a certificate's lock that another process holds, before it
# fails naming the holder (README "Commands"). Read at each call, so tests can shorten it.
LOCK_WAIT = 60.0


def order_timeout(view: CertView, now: datetime) -> float:
    """How long one attempt may take; see ORDER_SHARE_OF_TIME_LEFT."""
    if not view.is_real or view.facts is None or view.facts.not_after <= now:
        return ORDER_TIMEOUT
    left = (view.facts.not_after - now).total_seconds()
    return max(MIN_ORDER_TIMEOUT, min(ORDER_TIMEOUT, left * ORDER_SHARE_OF_TIME_LEFT))


def decide(
    view: CertView, now: datetime, *, force: bool, respect_backoff: bool
) -> Outcome | policy.DueReason:
    """Whether to order: the reason to, or the `Outcome` of not ordering (unchanged, or waiting
    out the stored backoff, which ``respect_backoff`` honours unless the order is forced)."""
    reason = view.due or (policy.DueReason.FORCED if force else None)
    name = view.spec.name
    if reason is None:
        assert view.facts is not None  # a certificate that is not due exists
        facts = view.facts
        return Outcome(
            name, Action.UNCHANGED, ok=True, serial=facts.serial_hex, not_after=facts.not_after
        )
    retry_at = view.meta.next_retry_at
    if respect_backoff and reason is not policy.DueReason.FORCED and retry_at and now < retry_at:
        still_valid = view.is_real and view.facts is not None and view.facts.not_after > now
        return Outcome(
            name,
            Action.WAITING,
            ok=still_valid,
            reason=str(reason),
            error=view.meta.last_error,
            next_retry_at=retry_at,
        )
    return reason


@dataclass(frozen=True, slots=True)
class PemFiles:
    """How the combined PEMs in the certs directory are written (HAProxy reads them)."""

    mode: int
    group: int | None = None


@dataclass(frozen=True, slots=True)
class ServedCheck:
    """What `Manager.ensure_served` found: each socket asked (address, answered), and the
    redeploy it made, if any."""

    sockets: tuple[tuple[str, bool], ...] = ()
    deploy: DeployResult | None = None


class Manager:
    """Keeps certificates issued, stored, written and deployed; see the module docstring."""

    def __init__(
        self,
        *,
        inventory: Inventory,
        issuer: Issuer,
        deployer: Deployer | None,
        files: PemFiles,
        holder: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.inventory = inventory
        self.store = inventory.store
        self.issuer = issuer
        self.deployer = deployer
        self.files = files
        self.holder = holder or f"pid {os.getpid()}"
        self.now: Callable[[], datetime] = inventory.now
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._orders = asyncio.Semaphore(MAX_CONCURRENT_ORDERS)

    async def __aenter__(self) -> Manager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.issuer.aclose()

    async def reset_client(self) -> None:
        """Drop the ACME client, so the next order rebuilds trust from the CA bundle."""
        await self.issuer.reset()

    def pem_path(self, name: str) -> Path:
        return self.inventory.pem_path(name)

    def inspect(self, spec: CertificateSpec, now: datetime | None = None) -> CertView:
        """What is deployed and what the policy says, using the last ARI window fetched."""
        return self.inventory.inspect(spec, now)

    # -- one step -----------------------------------------------------------------------------

    async def ensure(
        self,
        spec: CertificateSpec,
        *,
        force: bool = False,
        dry_run: bool = False,
        respect_backoff: bool = False,
        lock_timeout: float | None = None,
    ) -> Outcome:
        """Issue the certificate if it is missing, invalid or due (or ``force``)."""
        bound = log.bind(cert=spec.name)
        timeout = LOCK_WAIT if lock_timeout is None else lock_timeout
        try:
            async with self.store.lock(spec.name, timeout=timeout, holder=self.holder):
                try:
                    outcome = await self._ensure_locked(
                        spec, bound, force, dry_run, respect_backoff
                    )
                except Exception as error:  # a bug, or an answer no layer expected
                    bound.exception("cert_check_crashed")
                    outcome = self._crashed(spec, error, record=not dry_run)
        except storage.LockTimeout as error:
            bound.warning("cert_lock_timeout", error=error_text(error))
            outcome = Outcome.failed(spec.name, error_text(error))
        return self._finished(spec, outcome)

    def _finished(self, spec: CertificateSpec, outcome: Outcome) -> Outcome:
        """``outcome`` with what the renewal loop needs after it (issue 18, item 4), so that
        the loop reads nothing back: the CA's state as the issuer last saw it, and the
        certificate on disk as the inventory sees it now (after an issuance, the new one;
        the inventory was told what was written, so this reads no PEM again)."""
        now = self.now()
        try:
            view: CertView | None = self.inspect(spec, now)
        except Exception:  # a bug must not leave the certificate without a next check
            log.exception("cert_schedule_inspect_failed", cert=spec.name)
            view = None
        facts = view.facts if view is not None else None
        real = facts is not None and not facts.is_placeholder
        return replace(
            outcome,
            ca_error=self.issuer.last_error,
            clock_skew=self.issuer.clock_skew,
            next_renewal=view.next_renewal if view is not None else None,
            lifetime=facts.not_after - facts.not_before if facts is not None and real else None,
        )

    async def ensure_all(
        self, specs: Sequence[CertificateSpec], *, force: bool = False, dry_run: bool = False
    ) -> list[Outcome]:
        """One pass: every certificate at once (bounded by the order semaphore)."""
        return list(
            await asyncio.gather(
                *(self.ensure(spec, force=force, dry_run=dry_run) for spec in specs)
            )
        )

    async def _ensure_locked(
        self,
        spec: CertificateSpec,
        bound: BoundLogger,
        force: bool,
        dry_run: bool,
        respect_backoff: bool,
    ) -> Outcome:
        now = self.now()
        view = self.inspect(spec, now)
        if respect_backoff and view.is_real and view.due is None:
            # `run` follows the CA's renewal window (RFC 9773) where the CA offers one.
            await self.refresh_renewal_info(spec, view)
            view = self.inspect(spec, now)
        decision = decide(view, now, force=force, respect_backoff=respect_backoff)
        if isinstance(decision, Outcome):
            return decision
        return await self._renew(spec, view, decision, bound, dry_run=dry_run)

    async def _renew(
        self,
        spec: CertificateSpec,
        view: CertView,
        reason: policy.DueReason,
        bound: BoundLogger,
        *,
        dry_run: bool,
    ) -> Outcome:
        bound.info("cert_renewal_started", reason=str(reason), dry_run=dry_run)
        try:
            async with self._orders:
                issued, key = await self._obtain(spec, view)
            leaf_pem = issued.leaf_pem.encode()
            chain_pems = [c.encode() for c in issued.chain_pems]
            # The guard before anything is written: key, names, expiry, chain order.
            combined, _, facts = pem.combine_for_deploy(
                leaf_pem, chain_pems, private_key_to_pem(key), spec.domains, self.now()
            )
        except (SidecarError, pem.PemError, OSError) as error:
            return self._failed(spec, view, reason, error, bound, record=not dry_run)
        except Exception as error:
            # Not an error any step expects (a bug, a CA answer nothing parsed): a failure all
            # the same, backed off and recorded like the others (issue 17, finding 3: such an
            # error once skipped the backoff and the order was retried every 100 ms).
            bound.exception("cert_check_crashed")
            return self._failed(spec, view, reason, error, bound, record=not dry_run)
        done = Outcome(
            spec.name,
            Action.DRY_RUN if dry_run else Action.ISSUED,
            ok=True,
            serial=facts.serial_hex,
            not_after=facts.not_after,
            reason=str(reason),
        )
        if dry_run:
            bound.info("cert_dry_run_succeeded", serial=facts.serial_hex)
            return done
        issued_at = self.now()
        meta = view.meta.with_success(
            order_url=issued.order_url,
            issued_at=issued_at,
            not_before=facts.not_before,
            not_after=facts.not_after,
            serial=facts.serial_hex,
            domains=tuple(spec.domains),
            key_type=str(spec.key_type),
            last_attempt_at=issued_at,
            last_success_at=issued_at,
        )
        try:
            # The success is recorded in the state commit, before the PEM is replaced: a kill
            # between the two leaves the old PEM with a meta.json that has no failures to back
            # off from, and a restart (which goes by the PEM) renews at once if the old one is
            # due. Recorded after the PEM, a kill between could leave a fresh certificate
            # behind the last attempts' failures, counted and alerted on until its renewal.
            #
            # In a worker thread: the fsyncs would otherwise stop the event loop, and with it
            # every other order in flight, for as long as the disk takes (a pass over 1,000
            # certificates spent a fifth of its time there, bench/RESULTS.md "Throughput").
            written = await finish_in_thread(
                self._commit, spec.name, leaf_pem, chain_pems, meta, combined
            )
            if written is not None:
                self.inventory.remember_written(self.pem_path(spec.name), written, facts)
        except (SidecarError, OSError) as error:
            return self._failed(spec, view, reason, error, bound, record=True)
        bound.info(
            "cert_issued",
            serial=facts.serial_hex,
            not_after=facts.not_after.isoformat(),
            reason=str(reason),
            order_url=issued.order_url,
        )
        deployed, deploy_error = await self._deploy_and_record(spec, combined, facts, bound)
        return replace(done, error=deploy_error, deploy=deployed)

    async def _obtain(
        self, spec: CertificateSpec, view: CertView
    ) -> tuple[IssuedCertificate, PrivateKey]:
        key = self.store.load_key(spec.name)
        if key is None or key_type_of(key) != spec.key_type:
            key = generate_private_key(spec.key_type)
            # Saved before the order so that a retried or resumed order reuses it (in a thread,
            # like the commit: its fsync would stop the event loop).
            await finish_in_thread(self.store.save_key, spec.name, key)
        renewing: bytes | None = None
        if view.is_real:
            try:
                renewing = view.path.read_bytes()
            except OSError:
                renewing = None  # the order just does not name what it replaces
        issued = await self.issuer.obtain(
            spec.domains,
            key,
            challenge=spec.challenge,
            timeout=order_timeout(view, self.now()),
            renewing=renewing,
        )
        return issued, key

    def _commit(
        self,
        name: str,
        leaf_pem: bytes,
        chain_pems: list[bytes],
        meta: storage.CertMeta,
        combined: bytes,
    ) -> os.stat_result | None:
        """The state commit, then the PEM HAProxy reads (blocking: run in a thread); returns
        the new PEM's stat for the inventory, None when even that fails (it is written: the
        inventory then reads it again, as it would any file it has not seen)."""
        self.store.save_issued(name, leaf_pem, chain_pems, meta)
        self._write_pem(name, combined)
        try:
            return os.stat(self.pem_path(name))
        except OSError:
            return None

    def _write_pem(self, name: str, data: bytes) -> None:
        storage.atomic_write(
            self.pem_path(name), data, mode=self.files.mode, group=self.files.group
        )

    def _failed(
        self,
        spec: CertificateSpec,
        view: CertView,
        reason: policy.DueReason,
        error: BaseException,
        bound: BoundLogger,
        *,
        record: bool,
    ) -> Outcome:
        not_after = view.facts.not_after if view.is_real and view.facts else None
        return self._back_off(
            spec.name,
            view.meta,
            error,
            not_after=not_after,
            reason=str(reason),
            bound=bound,
            record=record,
        )

    def crashed(self, spec: CertificateSpec, error: BaseException, *, record: bool) -> Outcome:
        """A check that failed outside the steps that expect failures (a bug): backed off and
        recorded exactly as a failed order is, so no error, however unexpected, makes the
        schedule retry sooner than the backoff (issue 17, finding 3)."""
        return self._finished(spec, self._crashed(spec, error, record=record))

    def _crashed(self, spec: CertificateSpec, error: BaseException, *, record: bool) -> Outcome:
        bound = log.bind(cert=spec.name)
        meta, not_after = storage.CertMeta(), None
        try:
            view = self.inspect(spec)
            meta = view.meta
            not_after = view.facts.not_after if view.is_real and view.facts else None
        except Exception:  # the view may be what is broken: the stored retry state then
            meta = self.inventory.load_meta(spec.name)
        return self._back_off(
            spec.name, meta, error, not_after=not_after, reason=None, bound=bound, record=record
        )

    def _back_off(
        self,
        name: str,
        meta: storage.CertMeta,
        error: BaseException,
        *,
        not_after: datetime | None,
        reason: str | None,
        bound: BoundLogger,
        record: bool,
    ) -> Outcome:
        """The one path every failure takes: the next delay, stored in the state directory
        (so a restart keeps waiting), logged, and returned for the schedule."""
        now = self.now()
        text = with_hint(error_text(error))
        ca = error if isinstance(error, IssuerError) else None
        delay = policy.next_retry_delay(
            meta.failures + 1,
            now,
            not_after,
            self._rng,
            permanent=policy.is_permanent_problem(ca.problem_type if ca else None),
            retry_after=_retry_after(ca.retry_after if ca else None),
        )
        next_retry_at = now + delay
        if record:
            self._save_meta(name, meta.with_failure(text, now=now, next_retry_at=next_retry_at))
        bound.error(
            "cert_renewal_failed",
            reason=reason,
            error=text,
            error_type=ca.cause_type if ca else type(error).__name__,
            failures=meta.failures + 1,
            next_retry_at=next_retry_at.isoformat(),
        )
        return Outcome.failed(
            name,
            text,
            reason=reason,
            next_retry_at=next_retry_at if record else None,
            not_after=not_after,
            error_kind=ca.kind if ca else error_kind(error),
        )

    def _save_meta(self, name: str, meta: storage.CertMeta) -> None:
        try:
            self.store.save_meta(name, meta)
        except (SidecarError, OSError) as error:
            log.error("cert_meta_write_failed", cert=name, error=error_text(error))

    async def refresh_renewal_info(self, spec: CertificateSpec, view: CertView) -> None:
        """Fetch the CA's suggested window for the deployed certificate, when it is stale.

        RFC 9773 §4.3: poll no sooner than the CA's Retry-After; without one, a few times a
        lifetime. A CA without ``renewalInfo`` costs nothing after the first (cached) look at
        its directory.
        """
        now = self.now()
        if view.facts is None or not self.inventory.renewal_info_stale(spec.name, view.facts, now):
            return
        try:
            info = await self.issuer.renewal_info(view.path.read_bytes())
        except IssuerError as error:
            # A CA without renewalInfo answers None, not an error: this is the CA failing
            # (a wrong directory URL answers 404 here first), never "the CA has no ARI".
            log.warning(
                "renewal_info_failed",
                cert=spec.name,
                directory=self.issuer.account.directory,
                error=error_text(error),
            )
            info = None
        except (SidecarError, OSError) as error:
            log.info("renewal_info_unavailable", cert=spec.name, error=error_text(error))
            info = None
        self.inventory.remember_renewal_info(spec.name, view.facts, info, now)

    # -- the HAProxy side ---------------------------------------------------------------------

    async def deploy(
        self, spec: CertificateSpec, data: bytes, facts: pem.CertFacts | None = None
    ) -> DeployResult | None:
        """Hand ``data`` (written at `pem_path`) to the deployer; None when there is none.
        ``facts``: `pem.describe_cert` of its leaf, when the caller has already parsed it."""
        if self.deployer is None:
            return None
        if facts is None:
            facts = pem.describe_cert(pem.parse_combined(data).leaf)
        return await self.deployer.deploy(
            spec.name,
            self.pem_path(spec.name),
            data,
            serial_hex=facts.serial_hex,
            not_after=facts.not_after,
            names=spec.domains,
        )

    async def _deploy_and_record(
        self, spec: CertificateSpec, combined: bytes, facts: pem.CertFacts, bound: BoundLogger
    ) -> tuple[DeployResult | None, str | None]:
        """Deploy, and record what HAProxy now serves in the inventory (in memory only:
        after a restart, `ensure_served` asks HAProxy again, which is the one to know)."""
        try:
            result = await self.deploy(spec, combined, facts)
        except Exception as error:
            bound.error("haproxy_update_failed", error=error_text(error))
            self.inventory.record_served(spec.name, False)  # the serial last seen stays
            crashed = DeployResult.crashed(spec.name, facts.serial_hex, error_text(error))
            return crashed, f"deploy failed: {error_text(error)}"
        if result is None:
            return None, None
        if result.ok:
            self.inventory.record_served(spec.name, True, facts.serial_hex)
            bound.info("haproxy_updated", serial=facts.serial_hex, **result.log_fields())
            return result, None
        self.inventory.record_served(spec.name, False)  # the serial last seen stays
        bound.error("haproxy_update_failed", serial=facts.serial_hex, **result.log_fields())
        return result, f"deploy failed: {result.summary()}"

    async def ensure_served(self, spec: CertificateSpec) -> ServedCheck:
        """HAProxy may have restarted, or an earlier deploy failed: make it serve the file."""
        deployer = self.deployer
        if deployer is None or not deployer.runtimes:
            return ServedCheck()
        try:
            data = self.pem_path(spec.name).read_bytes()
            facts = pem.describe_cert(pem.parse_combined(data).leaf)
            # Each socket's answer goes into cert_sidecar_haproxy_up (`ServedCheck.sockets`):
            # a stopped HAProxy is seen here, not only when a deploy to it fails.
            answer = await deployer.ask_served(spec.name)
        except Exception as error:
            return self._served_unknown(spec, error)
        if not answer.answered:
            return self._served_unknown(spec, answer.errors[0], answer.sockets)
        for failure in answer.errors:  # the others answered: this one is only logged here
            log.warning("haproxy_check_failed", cert=spec.name, error=error_text(failure))
        served = answer.serial
        if served == facts.serial_hex:
            self.inventory.record_served(spec.name, True, served)
            return ServedCheck(answer.sockets)
        self.inventory.record_served(spec.name, False, served)
        log.warning("haproxy_serves_other", cert=spec.name, served=served, file=facts.serial_hex)
        deployed, _ = await self._deploy_and_record(spec, data, facts, log.bind(cert=spec.name))
        return ServedCheck(answer.sockets, deployed)

    def _served_unknown(
        self, spec: CertificateSpec, error: Exception, sockets: tuple[tuple[str, bool], ...] = ()
    ) -> ServedCheck:
        """What HAProxy serves could not be learnt (no socket answered, or the file is gone)."""
        log.warning("haproxy_check_failed", cert=spec.name, error=error_text(error))
        self.inventory.record_served(spec.name, None)  # the serial last seen stays
        return ServedCheck(sockets)

    async def ensure_placeholder(self, spec: CertificateSpec) -> bool:
        """Write a placeholder where no certificate file exists yet, so HAProxy can start."""
        path = self.pem_path(spec.name)
        if path.exists():
            return False
        cert_pem, key_pem = make_placeholder(spec.name, spec.domains, now=self.now())
        data = pem.combined_pem(cert_pem, [], key_pem)
        self._write_pem(spec.name, data)
        log.info("cert_placeholder_written", cert=spec.name, path=str(path))
        try:
            result = await self.deploy(spec, data)
        except Exception as error:
            log.warning(
                "haproxy_placeholder_deploy_failed", cert=spec.name, error=error_text(error)
            )
            return True
        if result is not None and result.ok:
            log.info("haproxy_placeholder_loaded", cert=spec.name, mode=result.mode)
        elif result is not None:
            # HAProxy may not be up yet: it loads the file from disk when it starts.
            log.info("haproxy_placeholder_not_loaded", cert=spec.name, error=result.summary())
        return True

    # -- revocation ---------------------------------------------------------------------------

    async def revoke(self, spec: CertificateSpec, *, reason: int | None, remove: bool) -> Outcome:
        """Revoke at the CA, then either replace it (new key) or remove it entirely."""
        bound = log.bind(cert=spec.name)
        try:
            async with self.store.lock(spec.name, timeout=LOCK_WAIT, holder=self.holder):
                outcome = await self._revoke_locked(spec, reason, remove, bound)
        except storage.LockTimeout as error:
            outcome = Outcome.failed(spec.name, error_text(error))
        return self._finished(spec, outcome)

    async def _revoke_locked(
        self, spec: CertificateSpec, reason: int | None, remove: bool, bound: BoundLogger
    ) -> Outcome:
        view = self.inspect(spec)
        if not view.is_real or view.facts is None:
            return Outcome.failed(spec.name, f"no issued certificate to revoke at {view.path}")
        leaf = pem.parse_combined(view.path.read_bytes()).leaf
        try:
            await self.issuer.revoke(leaf.public_bytes(Encoding.DER), reason=reason)
        except SidecarError as error:
            bound.error("cert_revocation_failed", error=error_text(error))
            return Outcome.failed(spec.name, error_text(error))
        serial = view.facts.serial_hex
        bound.info("cert_revoked", serial=serial, reason_code=reason)
        if remove:
            return await self._remove(spec, serial, bound)
        # The key may be why it was revoked: never reuse it.
        self.store.discard_key(spec.name)
        outcome = await self._ensure_locked(
            spec, bound, force=True, dry_run=False, respect_backoff=False
        )
        if outcome.ok:
            return replace(outcome, action=Action.REVOKED_AND_REPLACED)
        return replace(
            outcome, action=Action.FAILED, error=f"revoked; replacement failed: {outcome.error}"
        )

    async def _remove(self, spec: CertificateSpec, serial: str, bound: BoundLogger) -> Outcome:
        warning: str | None = None
        if self.deployer is not None:
            try:
                await self.deployer.remove(spec.name)
            except Exception as error:
                warning = f"HAProxy unload failed: {error_text(error)}"
                bound.error("haproxy_remove_failed", error=error_text(error))
        try:
            self.pem_path(spec.name).unlink(missing_ok=True)
        except OSError as error:
            return Outcome.failed(spec.name, f"revoked, but {error_text(error)}")
        self.store.remove_cert(spec.name)
        bound.info("cert_removed", serial=serial)
        return Outcome(spec.name, Action.REMOVED, ok=True, serial=serial, error=warning)


def _retry_after(seconds: float | None) -> timedelta | None:
    """The CA's Retry-After as a delay the policy can use: within [0, MAX_RETRY_DELAY] (the
    policy honours no more), None when absent or not a number. `timedelta` overflows near
    1e14 s, and ``ca_client`` is not the only possible source of this number."""
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return timedelta(seconds=min(seconds, policy.MAX_RETRY_DELAY.total_seconds()))


async def finish_in_thread(function: Callable[..., T], /, *args: Any) -> T:
    """``asyncio.to_thread``, except that a cancel waits for the thread to finish.

    A thread cannot be stopped: cancelling the await would only stop waiting for it, and the
    caller would then release the certificate's locks while the thread is still writing its
    files (issue 17, finding 8). Here the cancel is held until the thread is done, then raised.
    """
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    cancelled = False
    while not work.done():
        try:
            await asyncio.wait({work})  # unlike awaiting it, never cancels ``work``
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return work.result()
