"""One certificate's life: inspect what is deployed, obtain a new one, store, write, deploy.

The `Manager` is shared by the one-shot commands (`issue`, `renew`, `revoke`) and by `run`:
the one-shots make one pass and close it; `run` keeps it (and its ACME connection pool and
challenge responders) open for the life of the process. Every step that changes a certificate
holds that certificate's lock in the state directory, so two processes never order the same
certificate at once.

The order of writes is what makes a crash at any moment safe:
1. the certificate key is saved (0600) before the order, so a retried order reuses it;
2. the new certificate is checked (`pem.validate_for_deploy`) before anything is replaced;
3. the state copy is saved (the old one kept as ``previous.pem``), then the combined PEM is
   replaced atomically in the certs directory, then the metadata records success;
4. HAProxy is told last; if that fails the file on disk is already right, and the next
   deploy (or an HAProxy restart) picks it up.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar import pem, policy, storage
from sidecar.config import CertificateSpec, Settings
from sidecar.errors import OperationError, SidecarError, one_line
from sidecar.logs import get_logger
from sidecar.metrics import ErrorKind, error_kind

if TYPE_CHECKING:
    from ca_client.challenges.base import ChallengeSolver
    from ca_client.client import AcmeClient
    from ca_client.keys import PrivateKey
    from ca_client.models import IssuedCertificate
    from sidecar.deploy import Deployer, DeployResult

log = get_logger("sidecar.manager")

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
MAX_CA_CONNECTIONS = 4
# How long a command waits for a certificate's lock that another process holds, before it
# fails naming the holder (README "Commands"). Read at each call, so tests can shorten it.
LOCK_WAIT = 60.0


def parse_revocation_reason(text: str | None) -> int | None:
    """``--reason`` as the CLI passes it (a name of ``cli.REVOCATION_REASONS``) or a code."""
    from sidecar.cli import REVOCATION_REASONS

    if text is None:
        return None
    folded = {name.lower(): code for name, code in REVOCATION_REASONS.items()}
    key = text.replace("-", "").replace("_", "").lower()
    if key in folded:
        return folded[key]
    if key.isdigit() and int(key) in REVOCATION_REASONS.values():
        return int(key)
    names = ", ".join(REVOCATION_REASONS)
    raise OperationError(f"--reason: unknown revocation reason {text!r} (one of: {names})")


def order_timeout(view: CertView, now: datetime) -> float:
    """How long one attempt may take; see ORDER_SHARE_OF_TIME_LEFT."""
    if not view.is_real or view.facts is None or view.facts.not_after <= now:
        return ORDER_TIMEOUT
    left = (view.facts.not_after - now).total_seconds()
    return max(MIN_ORDER_TIMEOUT, min(ORDER_TIMEOUT, left * ORDER_SHARE_OF_TIME_LEFT))


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CertView:
    """What is on disk for one configured certificate, and what the policy says about it."""

    spec: CertificateSpec
    path: Path
    facts: pem.CertFacts | None
    unreadable: str | None
    key_matches: bool
    meta: storage.CertMeta
    due: policy.DueReason | None
    next_renewal: datetime | None

    @property
    def is_real(self) -> bool:
        """A parseable, non-placeholder certificate is deployed (possibly expired)."""
        return self.facts is not None and not self.facts.is_placeholder


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one step for one certificate, as commands print and `run` reports it."""

    name: str
    action: str  # issued, unchanged, failed, dry-run, revoked, removed, waiting
    ok: bool
    serial: str | None = None
    not_after: datetime | None = None
    reason: str | None = None
    error: str | None = None
    next_retry_at: datetime | None = None
    deploy: dict[str, Any] = field(default_factory=dict)
    # For /metrics only (a label, never the text); not part of the JSON answer.
    error_kind: ErrorKind | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "ok": self.ok,
            "serial": self.serial,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "reason": self.reason,
            "error": self.error,
            "next_retry_at": self.next_retry_at.isoformat() if self.next_retry_at else None,
            "deploy": self.deploy,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        def when(key: str) -> datetime | None:
            value = data.get(key)
            return datetime.fromisoformat(value) if isinstance(value, str) else None

        return cls(
            name=str(data.get("name", "?")),
            action=str(data.get("action", "?")),
            ok=bool(data.get("ok")),
            serial=data.get("serial"),
            not_after=when("not_after"),
            reason=data.get("reason"),
            error=data.get("error"),
            next_retry_at=when("next_retry_at"),
            deploy=dict(data.get("deploy") or {}),
        )

    def line(self) -> str:
        """One human line for the one-shot commands."""
        until = f", valid until {self.not_after:%Y-%m-%d %H:%M:%S}Z" if self.not_after else ""
        serial = f" serial {self.serial}" if self.serial else ""
        if self.action == "failed":
            retry = (
                f" (next retry {self.next_retry_at:%Y-%m-%d %H:%M:%S}Z)"
                if self.next_retry_at
                else ""
            )
            return f"{self.name}: failed: {self.error}{retry}"
        if self.action == "unchanged":
            return f"{self.name}: unchanged{serial}{until}"
        why = f" ({self.reason})" if self.reason else ""
        warn = f"; warning: {self.error}" if self.error else ""
        return f"{self.name}: {self.action}{serial}{until}{why}{warn}"


def error_text(error: BaseException) -> str:
    """A one-line description of a failure, never holding key material."""
    text = one_line(str(error)) or type(error).__name__
    return text


class Manager:
    """Keeps certificates issued, stored, written and deployed; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        holder: str | None = None,
        now: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
        create_state: bool = True,
        client_options: Mapping[str, Any] | None = None,
        solvers: Mapping[str, ChallengeSolver] | None = None,
    ) -> None:
        self.settings = settings
        self.store = storage.StateStore(settings.state_dir, create=create_state)
        if create_state:
            _make_certs_dir(settings.certs_dir)
        self.holder = holder or f"pid {os.getpid()}"
        self.now = now
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._client: AcmeClient | None = None
        self._client_lock = asyncio.Lock()
        self._solvers: dict[str, ChallengeSolver] = {}
        # Given solvers belong to the caller (tests, embedders): used, never closed.
        self._given_solvers = dict(solvers or {})
        self._client_options = dict(client_options or {})
        self._solver_lock = asyncio.Lock()
        self._deployer: Deployer | None = None
        self._deployer_built = False
        self._orders = asyncio.Semaphore(MAX_CONCURRENT_ORDERS)
        self.last_ca_error: str | None = None
        self.last_ca_success: datetime | None = None
        self.clock_skew: float | None = None
        self._ari: dict[str, _AriEntry] = {}
        self._deployed_cache: dict[
            Path, tuple[tuple[int, int, int], tuple[pem.CertFacts | None, str | None, bool]]
        ] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Manager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.reset_client()
        solvers, self._solvers = self._solvers, {}
        for solver in solvers.values():
            closer = getattr(solver, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception as error:
                    log.warning("responder_close_failed", error=error_text(error))

    async def reset_client(self) -> None:
        """Drop the ACME client, so the next order rebuilds trust from the CA bundle."""
        async with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- paths and inspection -----------------------------------------------------------------

    def pem_path(self, name: str) -> Path:
        return self.settings.certs_dir / f"{name}.pem"

    def haproxy_path(self, name: str) -> Path:
        return self.settings.haproxy_certs_dir / f"{name}.pem"

    def inspect(self, spec: CertificateSpec, now: datetime | None = None) -> CertView:
        """What is deployed and what the policy says, using the last ARI window fetched."""
        return self._inspect(spec, now, self._cached_window(spec.name))

    def _cached_window(self, name: str) -> tuple[datetime, datetime] | None:
        cached = self._ari.get(name)
        return cached.window if cached is not None else None

    def _inspect(
        self,
        spec: CertificateSpec,
        now: datetime | None,
        ari_window: tuple[datetime, datetime] | None,
    ) -> CertView:
        """Read the deployed combined PEM and the metadata, and ask the policy about them."""
        now = now or self.now()
        path = self.pem_path(spec.name)
        facts, unreadable, matches = self._read_deployed(path)
        meta = self._load_meta(spec.name)
        due = policy.due_reason(
            now,
            facts,
            wanted_names=spec.domains,
            wanted_key_type=str(spec.key_type),
            renew_at=self.settings.renew_at,
            unreadable=unreadable is not None,
            key_matches=matches,
            ari_window=_window_for(facts, ari_window, self._ari.get(spec.name)),
        )
        next_renewal: datetime | None = None
        if facts is not None and not facts.is_placeholder:
            next_renewal = policy.facts_renewal_time(
                facts,
                self.settings.renew_at,
                _window_for(facts, ari_window, self._ari.get(spec.name)),
            )
        if due is not None:
            next_renewal = now
        if meta.next_retry_at is not None and meta.failures and due is not None:
            next_renewal = max(now, meta.next_retry_at)
        return CertView(spec, path, facts, unreadable, matches, meta, due, next_renewal)

    def _read_deployed(self, path: Path) -> tuple[pem.CertFacts | None, str | None, bool]:
        """(facts, why unreadable, key matches) of a deployed combined PEM.

        `/readyz`, `/metrics` and every scheduled check look at every certificate; parsing
        a thousand PEMs per scrape would dominate an idle sidecar. The file is only ever
        replaced by rename, so (inode, mtime, size) changes whenever its content does.
        """
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._deployed_cache.pop(path, None)
            return None, None, True
        except OSError as error:
            return None, f"cannot read {path}: {error.strerror or error}", True
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._deployed_cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            data = path.read_bytes()
        except OSError as error:
            return None, f"cannot read {path}: {error.strerror or error}", True
        result: tuple[pem.CertFacts | None, str | None, bool]
        try:
            bundle = pem.parse_combined(data)
        except pem.PemError as error:
            result = (None, f"{path}: {error}", True)
        else:
            result = (
                pem.describe_cert(bundle.leaf),
                None,
                pem.key_matches(bundle.leaf, bundle.key),
            )
        self._deployed_cache[path] = (key, result)
        return result

    def _load_meta(self, name: str) -> storage.CertMeta:
        try:
            return self.store.load_meta(name) or storage.CertMeta()
        except storage.MetaError as error:
            # A corrupt meta.json loses the retry state, not the certificate.
            log.warning("cert_meta_unreadable", cert=name, error=error_text(error))
            return storage.CertMeta()

    # -- the ACME side ------------------------------------------------------------------------

    async def client(self) -> AcmeClient:
        """The ACME client with a registered account, made on first use."""
        async with self._client_lock:
            if self._client is None:
                self._client = await self._open_client()
            return self._client

    async def _open_client(self) -> AcmeClient:
        from ca_client.client import AcmeClient
        from ca_client.keys import KeyType, generate_private_key
        from ca_client.models import ExternalAccountBinding
        from sidecar.trust import build_ssl_context

        settings = self.settings
        context = build_ssl_context(settings.ca_bundle, system_trust=settings.system_trust)
        loaded = self.store.load_account(settings.directory)
        if loaded is None:
            account_key = generate_private_key(KeyType.EC_P256)
            self.store.save_account_key(settings.directory, account_key)
            account_url = None
        else:
            account_key, account_url = loaded
        # A few connections carry all concurrent orders: step-ca answers in milliseconds, and
        # httpcore scans its whole pool for every request (measured with 100 certificates:
        # 2 and 4 connections were as fast as 8 and used less CPU).
        options: dict[str, Any] = {"max_connections": MAX_CA_CONNECTIONS, **self._client_options}
        client = AcmeClient(settings.directory, account_key, ssl_context=context, **options)
        try:
            await client.__aenter__()
            contact = [f"mailto:{settings.email}"] if settings.email else []
            eab = None
            if settings.eab_kid and settings.eab_hmac_key:
                eab = ExternalAccountBinding(settings.eab_kid, settings.eab_hmac_key)
            account = await client.ensure_account(contact=contact, eab=eab, account_url=account_url)
        except BaseException:
            await client.aclose()
            raise
        if account.url != account_url:
            self.store.save_account_url(settings.directory, account.url, contact)
            log.info("acme_account_registered", account_url=account.url)
        return client

    def _remember_account(self, client: AcmeClient) -> None:
        """The client re-registers by itself when the CA forgot the account (database reset)."""
        url = client.account_url
        loaded = self.store.load_account(self.settings.directory)
        if url and (loaded is None or loaded[1] != url):
            contact = [f"mailto:{self.settings.email}"] if self.settings.email else []
            self.store.save_account_url(self.settings.directory, url, contact)
            log.warning("acme_account_reregistered", account_url=url)

    async def _replaces(self, client: AcmeClient, view: CertView) -> str | None:
        """RFC 9773 §5: name the certificate being renewed, where the CA supports ARI."""
        if not view.is_real:
            return None
        from ca_client.renewal_info import certificate_id

        directory = await client.directory()
        if directory.renewal_info is None:
            return None
        try:
            return certificate_id(view.path.read_bytes())
        except (OSError, ValueError):
            return None

    async def refresh_renewal_info(self, spec: CertificateSpec, view: CertView) -> None:
        """Fetch the CA's suggested window for the deployed certificate, when it is stale.

        RFC 9773 §4.3: poll no sooner than the CA's Retry-After; without one, a few times a
        lifetime. A CA without ``renewalInfo`` costs nothing after the first (cached) look at
        its directory.
        """
        if view.facts is None:
            return
        now = self.now()
        cached = self._ari.get(spec.name)
        if cached is not None and cached.serial == view.facts.serial and now < cached.next_fetch:
            return
        lifetime = view.facts.not_after - view.facts.not_before
        try:
            client = await self.client()
            info = await client.renewal_info(view.path.read_bytes())
        except (SidecarError, OSError, _acme_errors()) as error:
            log.info("renewal_info_unavailable", cert=spec.name, error=error_text(error))
            info = None
        if info is None:
            self._ari[spec.name] = _AriEntry(view.facts.serial, None, now + lifetime / 4)
            return
        wait = timedelta(seconds=info.retry_after) if info.retry_after else lifetime / 10
        self._ari[spec.name] = _AriEntry(
            view.facts.serial, (info.start, info.end), now + max(wait, timedelta(seconds=60))
        )
        log.info(
            "renewal_info_window",
            cert=spec.name,
            start=info.start.isoformat(),
            end=info.end.isoformat(),
        )

    async def solver(self, challenge: str) -> ChallengeSolver:
        """The responder for a challenge type, started on first use."""
        async with self._solver_lock:
            existing = self._given_solvers.get(challenge) or self._solvers.get(challenge)
            if existing is not None:
                return existing
            solver = await self._start_solver(challenge)
            self._solvers[challenge] = solver
            return solver

    async def _start_solver(self, challenge: str) -> ChallengeSolver:
        settings = self.settings
        if challenge == "http-01":
            from ca_client.challenges.http01 import Http01Responder

            http = Http01Responder(*settings.http_listen)
            await http.start()
            return http
        if challenge == "tls-alpn-01":
            from ca_client.challenges.tlsalpn01 import TlsAlpn01Responder

            alpn = TlsAlpn01Responder(*settings.tls_alpn_listen)
            await alpn.start()
            return alpn
        if challenge == "dns-01":
            from ca_client.challenges.dns01 import Dns01HookSolver

            if not settings.dns_hook:
                raise OperationError("--dns-hook: dns-01 needs a hook command")
            return Dns01HookSolver(settings.dns_hook, passthrough=settings.hook_env)
        raise OperationError(f"--challenge: unknown challenge type {challenge!r}")

    # -- the HAProxy side ---------------------------------------------------------------------

    def deployer(self) -> Deployer | None:
        """None when there is nothing to tell: no HAProxy, no reload, no hook, no check."""
        settings = self.settings
        if not (
            settings.haproxy_sockets
            or settings.reload != "none"
            or settings.deploy_hook
            or settings.verify_address
        ):
            return None
        if not self._deployer_built:
            from sidecar.deploy import deployer_from_settings

            self._deployer = deployer_from_settings(self.settings)
            self._deployer_built = True
        return self._deployer

    async def deploy(self, spec: CertificateSpec, data: bytes) -> DeployResult | None:
        deployer = self.deployer()
        if deployer is None:
            return None
        facts = pem.describe_cert(pem.parse_combined(data).leaf)
        return await deployer.deploy(
            spec.name,
            self.pem_path(spec.name),
            data,
            serial_hex=facts.serial_hex,
            not_after=facts.not_after,
            names=spec.domains,
        )

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
                return await self._ensure_locked(spec, bound, force, dry_run, respect_backoff)
        except storage.LockTimeout as error:
            bound.warning("cert_lock_timeout", error=error_text(error))
            return Outcome(spec.name, "failed", ok=False, error=error_text(error))

    async def _ensure_locked(
        self,
        spec: CertificateSpec,
        bound: Any,
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
        reason = view.due or (policy.DueReason.FORCED if force else None)
        if reason is None:
            assert view.facts is not None  # a certificate that is not due exists
            return Outcome(
                spec.name,
                "unchanged",
                ok=True,
                serial=view.facts.serial_hex,
                not_after=view.facts.not_after,
            )
        meta = view.meta
        if (
            respect_backoff
            and reason is not policy.DueReason.FORCED
            and meta.next_retry_at is not None
            and now < meta.next_retry_at
        ):
            return Outcome(
                spec.name,
                "waiting",
                ok=view.is_real and view.facts is not None and view.facts.not_after > now,
                reason=str(reason),
                error=meta.last_error,
                next_retry_at=meta.next_retry_at,
            )
        bound.info("cert_renewal_started", reason=str(reason), dry_run=dry_run)
        try:
            async with self._orders:
                issued, key = await self._obtain(spec, view)
            combined = self._combine(issued, key)
            bundle = pem.validate_for_deploy(combined, spec.domains, self.now())
        except (SidecarError, pem.PemError, OSError, _acme_errors()) as error:
            return self._failed(spec, view, reason, error, bound, record=not dry_run)
        facts = pem.describe_cert(bundle.leaf)
        if dry_run:
            bound.info("cert_dry_run_succeeded", serial=facts.serial_hex)
            return Outcome(
                spec.name,
                "dry-run",
                ok=True,
                serial=facts.serial_hex,
                not_after=facts.not_after,
                reason=str(reason),
            )
        try:
            self._store_and_write(spec, issued, combined)
        except (SidecarError, OSError) as error:
            return self._failed(spec, view, reason, error, bound, record=True)
        issued_at = self.now()
        meta = meta.with_success(
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
        self._save_meta(spec.name, meta)
        bound.info(
            "cert_issued",
            serial=facts.serial_hex,
            not_after=facts.not_after.isoformat(),
            reason=str(reason),
            order_url=issued.order_url,
        )
        deploy_info, deploy_error = await self._deploy_and_record(spec, combined, facts, bound)
        return Outcome(
            spec.name,
            "issued",
            ok=True,
            serial=facts.serial_hex,
            not_after=facts.not_after,
            reason=str(reason),
            error=deploy_error,
            deploy=deploy_info,
        )

    async def _deploy_and_record(
        self, spec: CertificateSpec, combined: bytes, facts: pem.CertFacts, bound: Any
    ) -> tuple[dict[str, Any], str | None]:
        try:
            result = await self.deploy(spec, combined)
        except Exception as error:
            bound.error("haproxy_update_failed", error=error_text(error))
            return {"ok": False, "error": error_text(error)}, f"deploy failed: {error_text(error)}"
        if result is None:
            return {}, None
        info = result.to_json()
        if result.ok:
            meta = self._load_meta(spec.name)
            self._save_meta(
                spec.name,
                replace(meta, deployed_serial=facts.serial_hex, deployed_at=self.now()),
            )
            bound.info("haproxy_updated", serial=facts.serial_hex, **_log_fields(info))
            return info, None
        bound.error("haproxy_update_failed", serial=facts.serial_hex, **_log_fields(info))
        return info, f"deploy failed: {result.summary()}"

    async def _obtain(
        self, spec: CertificateSpec, view: CertView
    ) -> tuple[IssuedCertificate, PrivateKey]:
        from ca_client.keys import generate_private_key, key_type_of
        from ca_client.models import Identifier

        key = self.store.load_key(spec.name)
        if key is None or key_type_of(key) != spec.key_type:
            key = generate_private_key(spec.key_type)
            # Saved before the order so that a retried or resumed order reuses it.
            self.store.save_key(spec.name, key)
        client = await self.client()
        solver = await self.solver(spec.challenge)
        identifiers = [Identifier.from_string(name) for name in spec.domains]
        replaces = await self._replaces(client, view)
        try:
            issued = await client.obtain(
                identifiers,
                key,
                solvers={spec.challenge: solver},
                preferred=(spec.challenge,),
                timeout=order_timeout(view, self.now()),
                replaces=replaces,
            )
        except BaseException as error:
            if isinstance(error, _acme_errors()):
                self.last_ca_error = error_text(error)
            raise
        finally:
            self._remember_account(client)
            self.clock_skew = client.last_server_date_skew
        self.last_ca_error = None
        self.last_ca_success = self.now()
        return issued, key

    def _combine(self, issued: IssuedCertificate, key: PrivateKey) -> bytes:
        from ca_client.keys import private_key_to_pem

        return pem.combined_pem(
            issued.leaf_pem.encode(),
            [c.encode() for c in issued.chain_pems],
            private_key_to_pem(key),
        )

    def _store_and_write(
        self, spec: CertificateSpec, issued: IssuedCertificate, combined: bytes
    ) -> None:
        self.store.save_issued(
            spec.name, issued.leaf_pem.encode(), [c.encode() for c in issued.chain_pems]
        )
        storage.atomic_write(
            self.pem_path(spec.name),
            combined,
            mode=self.settings.pem_mode,
            group=self.settings.pem_group,
        )

    def _failed(
        self,
        spec: CertificateSpec,
        view: CertView,
        reason: policy.DueReason,
        error: BaseException,
        bound: Any,
        *,
        record: bool,
    ) -> Outcome:
        now = self.now()
        text = error_text(error)
        problem_type = getattr(error, "type", None)
        retry_after = getattr(error, "retry_after", None)
        not_after = view.facts.not_after if view.is_real and view.facts else None
        delay = policy.next_retry_delay(
            view.meta.failures + 1,
            now,
            not_after,
            self._rng,
            permanent=policy.is_permanent_problem(
                problem_type if isinstance(problem_type, str) else None
            ),
            retry_after=timedelta(seconds=retry_after)
            if isinstance(retry_after, int | float)
            else None,
        )
        next_retry_at = now + delay
        if record:
            self._save_meta(
                spec.name, view.meta.with_failure(text, now=now, next_retry_at=next_retry_at)
            )
        bound.error(
            "cert_renewal_failed",
            reason=str(reason),
            error=text,
            error_type=type(error).__name__,
            failures=view.meta.failures + 1,
            next_retry_at=next_retry_at.isoformat(),
        )
        return Outcome(
            spec.name,
            "failed",
            ok=False,
            reason=str(reason),
            error=text,
            next_retry_at=next_retry_at if record else None,
            not_after=not_after,
            error_kind=error_kind(error),
        )

    def _save_meta(self, name: str, meta: storage.CertMeta) -> None:
        try:
            self.store.save_meta(name, meta)
        except (SidecarError, OSError) as error:
            log.error("cert_meta_write_failed", cert=name, error=error_text(error))

    # -- placeholder --------------------------------------------------------------------------

    async def ensure_placeholder(self, spec: CertificateSpec) -> bool:
        """Write a placeholder where no certificate file exists yet, so HAProxy can start."""
        path = self.pem_path(spec.name)
        if path.exists():
            return False
        from sidecar.placeholder import make_placeholder

        cert_pem, key_pem = make_placeholder(spec.name, spec.domains, now=self.now())
        data = pem.combined_pem(cert_pem, [], key_pem)
        storage.atomic_write(path, data, mode=self.settings.pem_mode, group=self.settings.pem_group)
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
                return await self._revoke_locked(spec, reason, remove, bound)
        except storage.LockTimeout as error:
            return Outcome(spec.name, "failed", ok=False, error=error_text(error))

    async def _revoke_locked(
        self, spec: CertificateSpec, reason: int | None, remove: bool, bound: Any
    ) -> Outcome:
        view = self.inspect(spec)
        if not view.is_real or view.facts is None:
            return Outcome(
                spec.name,
                "failed",
                ok=False,
                error=f"no issued certificate to revoke at {view.path}",
            )
        from cryptography.hazmat.primitives.serialization import Encoding

        leaf = pem.parse_combined(view.path.read_bytes()).leaf
        try:
            client = await self.client()
            await client.revoke(leaf.public_bytes(Encoding.DER), reason=reason)
        except (SidecarError, _acme_errors()) as error:
            bound.error("cert_revocation_failed", error=error_text(error))
            return Outcome(spec.name, "failed", ok=False, error=error_text(error))
        serial = view.facts.serial_hex
        bound.info("cert_revoked", serial=serial, reason_code=reason)
        if remove:
            return await self._remove(spec, serial, bound)
        # The key may be why it was revoked: never reuse it.
        self.store.discard_key(spec.name)
        outcome = await self._ensure_locked(
            spec, bound, force=True, dry_run=False, respect_backoff=False
        )
        action = "revoked and replaced" if outcome.ok else "revoked; replacement failed"
        return replace(
            outcome,
            action=action if outcome.ok else "failed",
            error=outcome.error if outcome.ok else f"{action}: {outcome.error}",
        )

    async def _remove(self, spec: CertificateSpec, serial: str, bound: Any) -> Outcome:
        warning: str | None = None
        deployer = self.deployer()
        if deployer is not None:
            try:
                await deployer.remove(spec.name)
            except Exception as error:
                warning = f"HAProxy unload failed: {error_text(error)}"
                bound.error("haproxy_remove_failed", error=error_text(error))
        try:
            self.pem_path(spec.name).unlink(missing_ok=True)
        except OSError as error:
            return Outcome(spec.name, "failed", ok=False, error=f"revoked, but {error_text(error)}")
        self.store.remove_cert(spec.name)
        bound.info("cert_removed", serial=serial)
        return Outcome(spec.name, "removed", ok=True, serial=serial, error=warning)

    # -- one pass over many -------------------------------------------------------------------

    async def ensure_all(
        self,
        specs: Sequence[CertificateSpec],
        *,
        force: bool = False,
        dry_run: bool = False,
    ) -> list[Outcome]:
        """One pass: every certificate at once (bounded by the order semaphore)."""
        return list(
            await asyncio.gather(
                *(self.ensure(spec, force=force, dry_run=dry_run) for spec in specs)
            )
        )


@dataclass(frozen=True, slots=True)
class _AriEntry:
    """The last renewal-info answer for one certificate (by serial)."""

    serial: int
    window: tuple[datetime, datetime] | None
    next_fetch: datetime


def _window_for(
    facts: pem.CertFacts | None,
    window: tuple[datetime, datetime] | None,
    entry: _AriEntry | None,
) -> tuple[datetime, datetime] | None:
    """A window only applies to the certificate it was fetched for."""
    if facts is None or window is None or entry is None or entry.serial != facts.serial:
        return None
    return window


def _make_certs_dir(path: Path) -> None:
    """The certs directory is HAProxy's to read: world-traversable, written only by us."""
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as error:
        raise OperationError(f"cannot create {path}: {error.strerror or error}") from None


def _log_fields(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k in ("mode", "fallback", "verified", "error")}


def _acme_errors() -> type[BaseException]:
    from ca_client.errors import AcmeError

    return AcmeError
