"""The sidecar's one door to the CA: the only module that talks to `ca_client.AcmeClient`.

An `Issuer` holds the ACME client (opened, with the account registered, on first use, so that
a CA or a CA bundle that is not there yet costs nothing until an order), and offers what the
`Manager` needs: `obtain`, `revoke` and `renewal_info` (RFC 9773). Every ACME failure leaves
it as an `IssuerError`, which keeps what the retry policy and ``/metrics`` need from the
original (problem type, Retry-After, `metrics.ErrorKind`) without the caller knowing
`ca_client`'s error tree.

It also keeps what the last exchange said about the CA: ``last_error`` (for
``cert_sidecar_ca_reachable``) and the clock skew to the CA's ``Date``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ca_client.challenges.base import ChallengeSolver
from ca_client.client import AcmeClient
from ca_client.errors import AcmeError, InvalidContact, Malformed, UnsupportedContact
from ca_client.keys import KeyType, PrivateKey, generate_private_key
from ca_client.models import ExternalAccountBinding, Identifier, IssuedCertificate, RenewalInfo
from ca_client.renewal_info import certificate_id
from sidecar import metrics, storage
from sidecar.errors import OperationError, error_kind, one_line
from sidecar.logs import get_logger
from sidecar.trust import build_ssl_context

__all__ = ["AccountSettings", "Issuer", "IssuerError", "SolverSource"]

log = get_logger("sidecar.issuer")

# A few connections carry all concurrent orders: step-ca answers in milliseconds. Measured
# with ca_client.http11 and 100 certificates (bench/RESULTS.md): 4 connections were as fast
# as 8 and used less CPU; 16 were slower and made step-ca 0.19 lose more compare-and-swaps
# on the account's order list (HTTP 500 on newOrder and finalize, some past every retry).
MAX_CA_CONNECTIONS = 4


class IssuerError(OperationError):
    """The CA (or the way to it) failed; ``str()`` is the original's one-line text.

    ``cause_type`` is the original error's class name (logged as ``error_type``),
    ``problem_type`` the RFC 8555 problem type if the CA sent one, ``retry_after`` the seconds
    the CA asked to wait, ``kind`` the `metrics.ErrorKind` label.
    """

    def __init__(self, error: AcmeError, *, hint: str | None = None) -> None:
        text = one_line(str(error)) or type(error).__name__
        super().__init__(f"{text}; {hint}" if hint else text)
        self.cause_type = type(error).__name__
        problem_type = getattr(error, "type", None)
        self.problem_type = problem_type if isinstance(problem_type, str) else None
        retry_after = getattr(error, "retry_after", None)
        self.retry_after = float(retry_after) if isinstance(retry_after, int | float) else None
        self.kind: metrics.ErrorKind = error_kind(error)


class SolverSource(Protocol):
    """Where the issuer gets the responder for a challenge type (`wiring.Responders`)."""

    async def get(self, challenge: str) -> ChallengeSolver: ...


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """The settings an `Issuer` is made from (`wiring` builds it from `Settings`)."""

    directory: str
    ca_bundle: Path
    system_trust: bool = False
    email: str | None = None
    eab_kid: str | None = None
    eab_hmac_key: bytes | None = field(default=None, repr=False)
    # Extra `AcmeClient` keywords (tests: an in-process transport, a fake clock).
    client_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def contact(self) -> list[str]:
        return [f"mailto:{self.email}"] if self.email else []


def _contact_hint(error: AcmeError, email: str | None) -> str | None:
    """What to change when the CA refused the account over its contact, naming the setting.

    RFC 8555 §7.3.1: "the server MAY require a contact"; a CA that does answers a newAccount
    without one with ``malformed`` (or ``invalidContact``), in words that do not say which of
    the sidecar's settings is missing. A ``malformed`` with a contact given is about something
    else: no hint then.
    """
    if email is None:
        return "the CA may require a contact address: set --email (CERT_SIDECAR_EMAIL)"
    if isinstance(error, InvalidContact | UnsupportedContact):
        return f"the CA refused the contact mailto:{email}: check --email (CERT_SIDECAR_EMAIL)"
    return None


class Issuer:
    """Talks to the CA for the `Manager`; see the module docstring."""

    def __init__(
        self, account: AccountSettings, store: storage.StateStore, solvers: SolverSource
    ) -> None:
        self.account = account
        self._store = store
        self._solvers = solvers
        self._client: AcmeClient | None = None
        # Exchanges in progress per client (by identity). A client `reset` replaces is closed
        # when its count drops to zero, so an order in flight finishes on the client it
        # started with (issue 17, finding 4: closing it under the order abandoned the order,
        # possibly after finalize).
        self._users: dict[int, int] = {}
        self._replaced: dict[int, AcmeClient] = {}
        #: The account URL in the state directory, as this issuer last read or wrote it.
        self._stored_url: str | None = None
        self._lock = asyncio.Lock()
        self.last_error: str | None = None
        self.clock_skew: float | None = None

    async def aclose(self) -> None:
        """Close every client, including replaced ones still in use (the final close)."""
        await self.reset()
        replaced, self._replaced = list(self._replaced.values()), {}
        for client in replaced:
            await client.aclose()

    async def reset(self) -> None:
        """Drop the ACME client, so the next order rebuilds trust from the CA bundle. Orders
        in flight finish on the old client, which is closed after the last of them."""
        async with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        if self._users.get(id(client)):
            self._replaced[id(client)] = client
        else:
            await client.aclose()

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[AcmeClient]:
        """The current client, held open for one exchange (see ``_users``)."""
        client = await self._ready_client()
        key = id(client)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield client
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                replaced = self._replaced.pop(key, None)
                if replaced is not None:
                    await _close_quietly(replaced)

    async def _ready_client(self) -> AcmeClient:
        """The ACME client with a registered account, made on first use."""
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await self._open_client()
                except AcmeError as error:
                    raise IssuerError(error) from error
            return self._client

    async def _open_client(self) -> AcmeClient:
        account = self.account
        context = build_ssl_context(account.ca_bundle, system_trust=account.system_trust)
        loaded = self._store.load_account(account.directory)
        if loaded is None:
            account_key = generate_private_key(KeyType.EC_P256)
            self._store.save_account_key(account.directory, account_key)
            account_url = None
        else:
            account_key, account_url = loaded
        options: dict[str, Any] = {"max_connections": MAX_CA_CONNECTIONS, **account.client_options}
        client = AcmeClient(account.directory, account_key, ssl_context=context, **options)
        try:
            await client.__aenter__()
            eab = None
            if account.eab_kid and account.eab_hmac_key:
                eab = ExternalAccountBinding(account.eab_kid, account.eab_hmac_key)
            try:
                registered = await client.ensure_account(
                    contact=account.contact, eab=eab, account_url=account_url
                )
            except (Malformed, InvalidContact, UnsupportedContact) as error:
                hint = _contact_hint(error, account.email)
                if hint is None:
                    raise
                raise IssuerError(error, hint=hint) from error
        except BaseException:
            await client.aclose()
            raise
        if registered.url != account_url:
            self._store.save_account_url(account.directory, registered.url, account.contact)
            log.info("acme_account_registered", account_url=registered.url)
        self._stored_url = registered.url
        return client

    def _remember_account(self, client: AcmeClient) -> None:
        """The client re-registers by itself when the CA forgot the account (database reset)."""
        url = client.account_url
        # Compared with what this issuer last stored, not read back from disk: reading it
        # parsed the account key once per order (3 % of a renewal pass), and only this
        # issuer writes the account while it runs (one-shot commands hand their work over).
        if url and url != self._stored_url:
            self._store.save_account_url(self.account.directory, url, self.account.contact)
            self._stored_url = url
            log.warning("acme_account_reregistered", account_url=url)

    async def obtain(
        self,
        domains: Sequence[str],
        key: PrivateKey,
        *,
        challenge: str,
        timeout: float,  # noqa: ASYNC109 - the order's overall deadline, handed to ca_client
        renewing: bytes | None = None,
    ) -> IssuedCertificate:
        """One order for ``domains`` on ``key``; ``renewing`` is the deployed PEM it replaces
        (RFC 9773 §5: named in the order where the CA supports ARI)."""
        try:
            async with self._using() as client:
                solver = await self._solvers.get(challenge)
                replaces = await self._replaces(client, renewing)
                try:
                    issued = await client.obtain(
                        [Identifier.from_string(name) for name in domains],
                        key,
                        solvers={challenge: solver},
                        preferred=(challenge,),
                        timeout=timeout,
                        replaces=replaces,
                    )
                finally:
                    self._remember_account(client)
                    self.clock_skew = client.last_server_date_skew
        except IssuerError as error:
            self.last_error = str(error)
            raise
        except AcmeError as error:
            self.last_error = one_line(str(error)) or type(error).__name__
            raise IssuerError(error) from error
        self.last_error = None
        return issued

    async def _replaces(self, client: AcmeClient, renewing: bytes | None) -> str | None:
        if renewing is None:
            return None
        directory = await client.directory()
        if directory.renewal_info is None:
            return None
        try:
            return certificate_id(renewing)
        except ValueError:
            return None

    async def revoke(self, leaf_der: bytes, *, reason: int | None) -> None:
        """RFC 8555 §7.6, signed by the account."""
        async with self._using() as client:
            try:
                await client.revoke(leaf_der, reason=reason)
            except AcmeError as error:
                raise IssuerError(error) from error

    async def renewal_info(self, deployed_pem: bytes) -> RenewalInfo | None:
        """RFC 9773 §4: the CA's suggested window for a certificate; None without ARI."""
        async with self._using() as client:
            try:
                return await client.renewal_info(deployed_pem)
            except AcmeError as error:
                raise IssuerError(error) from error


async def _close_quietly(client: AcmeClient) -> None:
    """Close a replaced client after its last exchange; a failure to close must not become
    that exchange's error (the order it served may well have succeeded)."""
    try:
        await client.aclose()
    except Exception as error:
        log.warning("acme_client_close_failed", error=one_line(str(error)) or type(error).__name__)
