"""The ACME client: accounts, orders, challenges, certificates, revocation, renewal info.

One :class:`AcmeClient` talks to one CA directory with one account key over one connection
pool; any number of :meth:`AcmeClient.obtain` calls may run on it concurrently.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca_client.csr import build_csr
from ca_client.errors import (
    ACME_ERROR_PREFIX,
    AccountDoesNotExist,
    AcmeError,
    AcmeProblem,
    ACMETimeout,
    CAUnreachable,
    CertificateMismatch,
    MalformedResponse,
    NoSolver,
    NotACME,
    OrderFailed,
    OrderNotReady,
    ServerInternal,
)
from ca_client.jws import eab_binding
from ca_client.keys import PrivateKey, b64url, jwk_thumbprint, public_key_der
from ca_client.models import (
    Account,
    Authorization,
    Challenge,
    Directory,
    ExternalAccountBinding,
    Identifier,
    IssuedCertificate,
    Order,
    RenewalInfo,
)
from ca_client.renewal_info import certificate_id, load_certificate, renewal_info_url
from ca_client.retry import clamp_to_deadline, next_poll_delay, poll_delays
from ca_client.transport import PEM_CHAIN, AcmeResponse, AcmeTransport, Clock, Sleep

if TYPE_CHECKING:
    import httpx

    from ca_client.challenges.base import ChallengeSolver

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----"
)


# --- pure helpers -------------------------------------------------------------------------------


def split_pem_chain(text: str) -> list[str]:
    """The certificates of a ``application/pem-certificate-chain`` body (RFC 8555 §9.1), each
    normalised to ``\\n`` line ends with one trailing newline."""
    blocks = []
    for match in _PEM_CERTIFICATE.finditer(text):
        lines = [line.strip() for line in match.group(0).splitlines() if line.strip()]
        blocks.append("\n".join(lines) + "\n")
    return blocks


def _top_issuer_common_name(chain: Sequence[str]) -> str | None:
    """The issuer CN of the last certificate of a chain: how certbot/lego name a chain."""
    try:
        top = x509.load_pem_x509_certificate(chain[-1].encode("ascii"))
    except ValueError:
        return None
    names = top.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def select_chain(chains: Sequence[Sequence[str]], preferred_chain: str | None) -> int:
    """Index of the chain whose top certificate's issuer CN is ``preferred_chain``; else 0."""
    if preferred_chain:
        wanted = preferred_chain.strip().casefold()
        for index, chain in enumerate(chains):
            name = _top_issuer_common_name(chain)
            if name is not None and name.casefold() == wanted:
                return index
    return 0


def verify_issued_certificate(
    leaf_pem: str, cert_key: PrivateKey, identifiers: Iterable[Identifier]
) -> x509.Certificate:
    """Check that the CA issued what was asked: the CSR's key, every requested name.

    Raises :class:`CertificateMismatch`. A CA bug or a mix-up of orders would otherwise put a
    certificate on disk that HAProxy refuses (wrong key) or serves for the wrong names.
    """
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem.encode("ascii"))
    except ValueError as exc:
        raise MalformedResponse("the issued leaf certificate does not parse") from exc
    leaf_key = leaf.public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or (
        public_key_der(leaf_key) != public_key_der(cert_key)
    ):
        raise CertificateMismatch(
            f"the issued certificate (serial {leaf.serial_number:x}) is not for the key of the CSR"
        )
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = {name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)}
        ip_addresses = set(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns_names, ip_addresses = set(), set()
    missing = []
    for identifier in identifiers:
        if identifier.type == "ip":
            if ipaddress.ip_address(identifier.value) not in ip_addresses:
                missing.append(identifier.value)
        elif identifier.value.lower().rstrip(".") not in dns_names:
            missing.append(identifier.value)
    if missing:
        raise CertificateMismatch(
            f"the issued certificate (serial {leaf.serial_number:x}) does not cover "
            + ", ".join(missing)
        )
    return leaf


async def _run_all(coroutines: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; on the first failure cancel the rest (their ``finally`` blocks run:
    solvers clean up), wait for them, and raise that first failure itself (not a group)."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        # Reached on a failure, or when obtain itself is cancelled: stop and drain the rest.
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failures = [
        task.exception() for task in tasks if not task.cancelled() and task.exception() is not None
    ]
    for extra in failures[1:]:
        logger.warning("another authorization of the same order failed too: %s", extra)
    if failures:
        first = failures[0]
        assert first is not None
        raise first


# --- the client -------------------------------------------------------------------------------


class AcmeClient:
    """An async RFC 8555 client for one CA directory and one account key.

    ``ssl_context`` is the only trust for the CA's TLS (the caller builds it from the CA
    bundle); without one nothing is trusted, not even the system store. ``directory_url``
    must be ``https://`` (RFC 8555 §6.1), as must every URL the CA hands out; ``timeout``
    bounds each HTTP request and is the default deadline of single operations; ``clock``
    (POSIX seconds) and ``sleep`` are injectable for tests; ``transport`` replaces the network
    (``httpx.MockTransport`` in protocol tests).
    """

    def __init__(
        self,
        directory_url: str,
        account_key: PrivateKey,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 32,
    ) -> None:
        if not directory_url.lower().startswith("https://"):
            raise ValueError(
                f"ACME directory URL must be https:// (RFC 8555 §6.1): {directory_url}"
            )
        self.directory_url = directory_url
        self._key = account_key
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._transport = AcmeTransport(
            ssl_context=ssl_context,
            timeout=timeout,
            clock=clock,
            sleep=sleep,
            transport=transport,
            max_connections=max_connections,
        )
        self._directory: Directory | None = None
        self._directory_lock = asyncio.Lock()
        self._account: Account | None = None
        self._account_lock = asyncio.Lock()
        # What the account was registered with, to register again after a CA database reset.
        self._registration: tuple[tuple[str, ...], ExternalAccountBinding | None, bool] = (
            (),
            None,
            True,
        )
        self.thumbprint = jwk_thumbprint(account_key)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    # --- small accessors ---------------------------------------------------------------------

    @property
    def account(self) -> Account | None:
        return self._account

    @property
    def account_url(self) -> str | None:
        return self._account.url if self._account else None

    @property
    def last_server_date_skew(self) -> float | None:
        """The CA's ``Date`` minus our clock, in seconds (None before any answer had one)."""
        return self._transport.last_server_date_skew

    def key_authorization(self, token: str) -> str:
        """RFC 8555 §8.1: "keyAuthorization = token || '.' || base64url(Thumbprint(accountKey))".

        Written out here rather than imported from ``challenges.base`` so that importing the
        client does not import every responder (``challenges/__init__`` loads them all).
        """
        return f"{token}.{self.thumbprint}"

    def _deadline(self, deadline: float | None) -> float:
        return deadline if deadline is not None else self._clock() + self._timeout

    # --- directory (§7.1.1) ------------------------------------------------------------------

    async def directory(self, *, deadline: float | None = None) -> Directory:
        """The CA's directory (RFC 8555 §7.1.1), fetched once per client: it names every other
        URL, and fetching it per request would double the round trips."""
        if self._directory is not None:
            return self._directory
        async with self._directory_lock:
            if self._directory is None:
                response = await self._transport.get(
                    self.directory_url, deadline=self._deadline(deadline)
                )
                try:
                    directory = Directory.from_json(response.json(), url=self.directory_url)
                except MalformedResponse as exc:
                    raise NotACME(
                        f"{self.directory_url} is not an ACME directory ({exc})",
                        url=self.directory_url,
                        status=response.status,
                    ) from exc
                self._transport.new_nonce_url = directory.new_nonce
                self._directory = directory
            return self._directory

    # --- account (§7.3) -----------------------------------------------------------------------

    async def new_account(
        self,
        contact: Sequence[str] = (),
        *,
        eab: ExternalAccountBinding | None = None,
        terms_agreed: bool = True,
        deadline: float | None = None,
    ) -> Account:
        """Register the account key, or find its account (RFC 8555 §7.3).

        §7.3.1: "If the server already has an account registered with the provided account key,
        then it MUST return a response with status code 200 (OK) and provide the URL of that
        account in the Location header field." So this one request both creates and finds.
        """
        deadline = self._deadline(deadline)
        directory = await self.directory(deadline=deadline)
        payload: dict[str, Any] = {"termsOfServiceAgreed": terms_agreed}
        if contact:
            payload["contact"] = list(contact)
        if eab is not None:
            payload["externalAccountBinding"] = eab_binding(
                self._key, kid=eab.kid, hmac_key=eab.hmac_key, url=directory.new_account
            )
        # Idempotent: the account is keyed by its key (§7.3.1), a repeat finds it.
        response = await self._transport.post(
            directory.new_account,
            payload,
            self._key,
            kid=None,
            deadline=deadline,
            idempotent=True,
        )
        account = self._account_from(response)
        self._registration = (tuple(contact), eab, terms_agreed)
        self._account = account
        if response.status == 201:
            logger.info("ACME account created: %s", account.url)
        else:
            logger.debug("ACME account exists: %s", account.url)
        return account

    def _account_from(self, response: AcmeResponse) -> Account:
        url = response.location
        if not url:
            raise MalformedResponse("account answer without a Location", url=response.url)
        body = response.json() if response.content.strip() else {"status": "valid"}
        return Account.from_json(body, url=url)

    async def find_account(self, *, deadline: float | None = None) -> Account | None:
        """The account of this key, or None: newAccount with ``onlyReturnExisting`` (§7.3.1)."""
        account = await self._find_existing(self._deadline(deadline))
        if account is not None:
            self._account = account
        return account

    async def ensure_account(
        self,
        contact: Sequence[str] | None = None,
        *,
        eab: ExternalAccountBinding | None = None,
        account_url: str | None = None,
        terms_agreed: bool = True,
        deadline: float | None = None,
    ) -> Account:
        """Make sure the key has a usable account with this contact; return it.

        ``account_url`` is the URL stored from an earlier run: if the CA now names another one
        (its database was reset) that is logged. A differing contact list is updated (§7.3.2).
        """
        deadline = self._deadline(deadline)
        wanted = tuple(contact or ())
        account = await self.new_account(
            wanted, eab=eab, terms_agreed=terms_agreed, deadline=deadline
        )
        if account_url is not None and account_url != account.url:
            logger.warning(
                "the CA knows this account key under a new URL %s (was %s): re-registered",
                account.url,
                account_url,
            )
        if contact is not None and set(account.contact) != set(wanted):
            account = await self.update_account(wanted, deadline=deadline)
        return account

    async def fetch_account(self, *, deadline: float | None = None) -> Account:
        """The current account object (POST-as-GET to the account URL, §7.3.3 and §6.3)."""
        account_url = await self._require_account(deadline)
        response = await self._post_as_account(
            account_url, None, deadline=deadline, url_is_account=True
        )
        self._account = Account.from_json(response.json(), url=self._account_url_or(account_url))
        return self._account

    async def update_account(
        self, contact: Sequence[str], *, deadline: float | None = None
    ) -> Account:
        """Replace the account's contact list (RFC 8555 §7.3.2)."""
        account_url = await self._require_account(deadline)
        response = await self._post_as_account(
            account_url,
            {"contact": list(contact)},
            deadline=deadline,
            url_is_account=True,
            idempotent=True,
        )
        _, eab, terms = self._registration
        self._registration = (tuple(contact), eab, terms)
        self._account = Account.from_json(response.json(), url=self._account_url_or(account_url))
        return self._account

    async def deactivate_account(self, *, deadline: float | None = None) -> Account:
        """RFC 8555 §7.3.6: POST ``{"status": "deactivated"}`` to the account URL."""
        account_url = await self._require_account(deadline)
        response = await self._post_as_account(
            account_url,
            {"status": "deactivated"},
            deadline=deadline,
            url_is_account=True,
            reregister=False,
        )
        self._account = Account.from_json(response.json(), url=account_url)
        logger.info("ACME account deactivated: %s", account_url)
        return self._account

    def _account_url_or(self, fallback: str) -> str:
        return self._account.url if self._account else fallback

    async def _require_account(self, deadline: float | None) -> str:
        """The account URL (``kid``); registers without contact if nothing was set up yet."""
        if self._account is None:
            async with self._account_lock:
                if self._account is None:
                    contact, eab, terms = self._registration
                    await self.new_account(contact, eab=eab, terms_agreed=terms, deadline=deadline)
        assert self._account is not None
        return self._account.url

    async def _recover_account(self, stale_url: str, deadline: float, *, missing: bool) -> bool:
        """After a kid-signed request failed in a way a forgotten account explains, make sure
        the key has a current account; True when its URL changed (a repeat can succeed).

        ``missing``: the CA said ``accountDoesNotExist``. Otherwise (step-ca 0.19 answers a
        bare HTTP 500 for an unknown account ID) ask with ``onlyReturnExisting`` first. Under
        the account lock, so that many concurrent failures register only once.
        """
        async with self._account_lock:
            if self._account is not None and self._account.url != stale_url:
                return True  # another task already did it
            if not missing:
                existing = await self._find_existing(deadline)
                if existing is not None:
                    self._account = existing
                    return existing.url != stale_url
            contact, eab, terms = self._registration
            logger.warning(
                "the CA no longer knows account %s (database reset?): registering again",
                stale_url,
            )
            await self.new_account(contact, eab=eab, terms_agreed=terms, deadline=deadline)
            return True

    async def _find_existing(self, deadline: float) -> Account | None:
        directory = await self.directory(deadline=deadline)
        try:
            response = await self._transport.post(
                directory.new_account,
                {"onlyReturnExisting": True},
                self._key,
                kid=None,
                deadline=deadline,
                idempotent=True,
            )
        except AccountDoesNotExist:
            return None
        return self._account_from(response)

    async def _post_as_account(
        self,
        url: str,
        payload: Mapping[str, Any] | None,
        *,
        deadline: float | None,
        accept: str = "application/json",
        url_is_account: bool = False,
        reregister: bool = True,
        idempotent: bool | None = None,
    ) -> AcmeResponse:
        """A ``kid``-signed POST (§6.2). When the CA no longer knows the account (its
        database was reset) the account is registered again and the request repeated once."""
        deadline = self._deadline(deadline)
        account_url = await self._require_account(deadline)
        try:
            return await self._transport.post(
                url,
                payload,
                self._key,
                kid=account_url,
                deadline=deadline,
                accept=accept,
                idempotent=idempotent,
            )
        except AccountDoesNotExist:
            if not reregister:
                raise
            await self._recover_account(account_url, deadline, missing=True)
        except (ServerInternal, CAUnreachable) as exc:
            if not reregister or exc.status != 500:
                raise
            if not await self._recover_account(account_url, deadline, missing=False):
                raise
        assert self._account is not None
        if url_is_account:
            url = self._account.url
        return await self._transport.post(
            url,
            payload,
            self._key,
            kid=self._account.url,
            deadline=deadline,
            accept=accept,
            idempotent=idempotent,
        )

    # --- orders, authorizations, challenges (§7.4, §7.5) -------------------------------------

    async def new_order(
        self,
        identifiers: Sequence[Identifier],
        *,
        replaces: str | None = None,
        deadline: float | None = None,
    ) -> Order:
        """RFC 8555 §7.4 newOrder; ``replaces`` (RFC 9773 §5) only when the CA offers ARI."""
        deadline = self._deadline(deadline)
        directory = await self.directory(deadline=deadline)
        payload: dict[str, Any] = {"identifiers": [i.to_json() for i in identifiers]}
        if replaces and directory.renewal_info:
            payload["replaces"] = replaces
        # Idempotent enough: a repeated newOrder only leaves an unused order behind.
        try:
            response = await self._post_as_account(
                directory.new_order, payload, deadline=deadline, idempotent=True
            )
        except AcmeProblem as problem:
            # RFC 9773 §5: a CA may refuse the replacement (already replaced, unknown
            # certificate); the order is still wanted, so ask again without the hint.
            if "replaces" not in payload or problem.type not in (
                ACME_ERROR_PREFIX + "alreadyReplaced",
                ACME_ERROR_PREFIX + "malformed",
            ):
                raise
            logger.info("CA refused replaces=%s (%s); ordering without it", replaces, problem)
            del payload["replaces"]
            response = await self._post_as_account(
                directory.new_order, payload, deadline=deadline, idempotent=True
            )
        url = response.location
        if not url:
            raise MalformedResponse("newOrder answer without a Location", url=response.url)
        return Order.from_json(response.json(), url=url)

    async def get_order(self, url: str, *, deadline: float | None = None) -> Order:
        order, _ = await self._fetch_order(url, self._deadline(deadline))
        return order

    async def _fetch_order(self, url: str, deadline: float) -> tuple[Order, float | None]:
        response = await self._post_as_account(url, None, deadline=deadline)
        return Order.from_json(response.json(), url=url), response.retry_after

    async def get_authorization(self, url: str, *, deadline: float | None = None) -> Authorization:
        authorization, _ = await self._fetch_authorization(url, self._deadline(deadline))
        return authorization

    async def _fetch_authorization(
        self, url: str, deadline: float
    ) -> tuple[Authorization, float | None]:
        response = await self._post_as_account(url, None, deadline=deadline)
        return Authorization.from_json(response.json(), url=url), response.retry_after

    async def respond_to_challenge(
        self, challenge: Challenge, *, deadline: float | None = None
    ) -> Challenge:
        """RFC 8555 §7.5.1: "The client indicates to the server that it is ready for the
        challenge validation by sending an empty JSON body ("{}") carried in a POST request to
        the challenge URL (not the authorization URL)."""
        # Answering twice is harmless: the CA validates once (§7.5.1).
        response = await self._post_as_account(
            challenge.url, {}, deadline=deadline, idempotent=True
        )
        return Challenge.from_json(response.json(), url=challenge.url)

    async def deactivate_authorization(
        self, url: str, *, deadline: float | None = None
    ) -> Authorization:
        """RFC 8555 §7.5.2."""
        response = await self._post_as_account(url, {"status": "deactivated"}, deadline=deadline)
        return Authorization.from_json(response.json(), url=url)

    async def finalize_order(
        self, order: Order, csr_der: bytes, *, deadline: float | None = None
    ) -> Order:
        """RFC 8555 §7.4: POST ``{"csr": base64url(DER)}`` to the order's finalize URL."""
        response = await self._post_as_account(
            order.finalize, {"csr": b64url(csr_der)}, deadline=deadline
        )
        return Order.from_json(response.json(), url=order.url)

    async def _poll(
        self,
        fetch: Callable[[], Awaitable[tuple[T, float | None]]],
        done: Callable[[T], bool],
        *,
        deadline: float,
        what: str,
        url: str,
        status_of: Callable[[T], str],
    ) -> T:
        """Fetch until ``done``: 20 ms first, doubling to a cap; the CA's Retry-After wins
        (RFC 8555 §7.5.1, §7.4); never sleeps past ``deadline``."""
        schedule = poll_delays()
        while True:
            value, retry_after = await fetch()
            if done(value):
                return value
            delay = next_poll_delay(next(schedule), retry_after)
            now = self._clock()
            if now >= deadline:
                raise ACMETimeout(
                    f"{what} still {status_of(value)} when the deadline passed: {url}", url=url
                )
            await self._sleep(clamp_to_deadline(delay, now, deadline))
            if self._clock() >= deadline:
                raise ACMETimeout(
                    f"{what} still {status_of(value)} when the deadline passed: {url}", url=url
                )

    async def poll_authorization(self, url: str, *, deadline: float | None = None) -> Authorization:
        """Until the authorization leaves ``pending`` (RFC 8555 §7.1.6)."""
        deadline = self._deadline(deadline)
        return await self._poll(
            lambda: self._fetch_authorization(url, deadline),
            lambda authorization: authorization.status != "pending",
            deadline=deadline,
            what="authorization",
            url=url,
            status_of=lambda authorization: authorization.status,
        )

    async def poll_order(
        self,
        url: str,
        *,
        deadline: float | None = None,
        waiting: tuple[str, ...] = ("pending", "processing"),
    ) -> Order:
        """Until the order's status is none of ``waiting`` (RFC 8555 §7.1.6, §7.4)."""
        deadline = self._deadline(deadline)
        return await self._poll(
            lambda: self._fetch_order(url, deadline),
            lambda order: order.status not in waiting,
            deadline=deadline,
            what="order",
            url=url,
            status_of=lambda order: order.status,
        )

    # --- certificates (§7.4.2) ----------------------------------------------------------------

    async def _fetch_chain(self, url: str, deadline: float) -> tuple[list[str], AcmeResponse]:
        response = await self._post_as_account(url, None, deadline=deadline, accept=PEM_CHAIN)
        chain = split_pem_chain(response.text())
        if not chain:
            raise MalformedResponse(
                f"no PEM certificate in the answer ({response.content_type or 'no type'})",
                url=url,
            )
        return chain, response

    async def download_certificate(
        self, url: str, *, preferred_chain: str | None = None, deadline: float | None = None
    ) -> tuple[list[str], list[list[str]], str]:
        """The chain to use, the other chains, and the URL the chosen one came from.

        RFC 8555 §7.4.2: "The server MAY provide one or more link relation header fields
        [RFC8288] with relation "alternate". Each such field SHOULD express an alternative
        certificate chain starting with the same end-entity certificate."
        """
        deadline = self._deadline(deadline)
        default_chain, response = await self._fetch_chain(url, deadline)
        alternate_urls = response.links_with_rel("alternate")
        chains = [default_chain]
        urls = [url]
        if alternate_urls:
            fetched = await asyncio.gather(
                *(self._fetch_chain(alternate, deadline) for alternate in alternate_urls)
            )
            chains.extend(chain for chain, _ in fetched)
            urls.extend(alternate_urls)
        chosen = select_chain(chains, preferred_chain)
        others = [chain for index, chain in enumerate(chains) if index != chosen]
        return chains[chosen], others, urls[chosen]

    # --- the whole order ----------------------------------------------------------------------

    async def obtain(
        self,
        identifiers: Sequence[Identifier],
        cert_key: PrivateKey,
        *,
        solvers: Mapping[str, ChallengeSolver],
        preferred: Sequence[str] | None = None,
        timeout: float = 120.0,  # noqa: ASYNC109 - an overall deadline, passed down explicitly
        replaces: str | None = None,
        preferred_chain: str | None = None,
    ) -> IssuedCertificate:
        """Order a certificate for ``identifiers`` on ``cert_key`` and return it, verified.

        New order; each pending authorization is solved concurrently with the first challenge
        type in ``preferred`` (default: the order of ``solvers``) that it offers and a solver
        exists for; the solver's ``cleanup`` always runs; finalize with a CSR; poll; download
        (``preferred_chain`` picks among alternate chains by the top issuer's CN); check key
        and names. Everything within ``timeout`` seconds, else :class:`ACMETimeout`.
        """
        deadline = self._clock() + timeout
        identifiers = tuple(identifiers)
        order_preference = tuple(preferred) if preferred is not None else tuple(solvers)
        csr = build_csr(cert_key, identifiers)  # pure, so bad identifiers fail before any I/O
        order = await self.new_order(identifiers, replaces=replaces, deadline=deadline)
        logger.info(
            "ACME order %s for %s: %s",
            order.url,
            ", ".join(str(i) for i in identifiers),
            order.status,
        )
        finalized = False
        if order.status == "pending":
            # Clean up only once every authorization of the order is done: a wildcard and its
            # base name share one TXT record name (_acme-challenge.example.org), and a dns-01
            # hook that clears the whole record would otherwise delete the other's value while
            # the CA is still looking for it.
            cleanups: list[Callable[[], Awaitable[None]]] = []
            try:
                await _run_all(
                    [
                        self._authorize(url, solvers, order_preference, deadline, cleanups)
                        for url in order.authorizations
                    ]
                )
            finally:
                await asyncio.gather(*(cleanup() for cleanup in cleanups))
            # Every authorization is valid now, so the order is ready (§7.1.6): finalize at once
            # instead of fetching the order first; a CA that lags answers orderNotReady.
            try:
                order = await self._finalize_once(order, csr, deadline)
                finalized = True
            except OrderNotReady:
                order = await self.poll_order(order.url, deadline=deadline, waiting=("pending",))
        if order.status == "ready" and not finalized:
            order = await self._finalize_once(order, csr, deadline)
        if order.status in ("ready", "processing"):
            order = await self.poll_order(
                order.url, deadline=deadline, waiting=("ready", "processing")
            )
        if order.status == "invalid":
            raise OrderFailed(
                f"order {order.url} became invalid", url=order.url, problem=order.error
            )
        if order.status != "valid" or not order.certificate:
            raise OrderFailed(
                f"order {order.url} ended as {order.status} without a certificate",
                url=order.url,
                problem=order.error,
            )
        chain, others, certificate_url = await self.download_certificate(
            order.certificate, preferred_chain=preferred_chain, deadline=deadline
        )
        leaf = verify_issued_certificate(chain[0], cert_key, identifiers)
        logger.info(
            "certificate issued for %s: serial %x, not after %s",
            ", ".join(str(i) for i in identifiers),
            leaf.serial_number,
            leaf.not_valid_after_utc.isoformat(),
        )
        return IssuedCertificate(
            pem="".join(chain),
            leaf_pem=chain[0],
            chain_pems=tuple(chain[1:]),
            order_url=order.url,
            alternates=tuple("".join(other) for other in others),
            certificate_url=certificate_url,
        )

    async def _finalize_once(self, order: Order, csr: bytes, deadline: float) -> Order:
        """Finalize; when the answer is lost (connection dropped, server error), look at the
        order instead of finalizing blindly again: it may already be processing or valid."""
        try:
            return await self.finalize_order(order, csr, deadline=deadline)
        except (CAUnreachable, ServerInternal) as exc:
            if isinstance(exc, CAUnreachable) and exc.connect_failed:
                raise
            current = await self.get_order(order.url, deadline=deadline)
            if current.status == "ready":
                logger.info("finalize of %s failed (%s); finalizing again", order.url, exc)
                return await self.finalize_order(current, csr, deadline=deadline)
            if current.status in ("processing", "valid"):
                return current
            raise

    @staticmethod
    def _pick_challenge(
        authorization: Authorization,
        solvers: Mapping[str, ChallengeSolver],
        preferred: Sequence[str],
    ) -> tuple[Challenge, ChallengeSolver]:
        for challenge_type in preferred:
            solver = solvers.get(challenge_type)
            challenge = authorization.challenge(challenge_type)
            if solver is not None and challenge is not None and challenge.token:
                return challenge, solver
        raise NoSolver(
            ("*." if authorization.wildcard else "") + authorization.identifier.value,
            [challenge.type for challenge in authorization.challenges],
            [name for name in preferred if name in solvers],
        )

    async def _authorize(
        self,
        url: str,
        solvers: Mapping[str, ChallengeSolver],
        preferred: Sequence[str],
        deadline: float,
        cleanups: list[Callable[[], Awaitable[None]]],
    ) -> None:
        """Prove control of one identifier (RFC 8555 §7.5). The solver's clean-up is added to
        ``cleanups`` as soon as the proof is presented (or fails to be); the caller runs them."""
        authorization = await self.get_authorization(url, deadline=deadline)
        if authorization.status == "valid":
            return  # reused from an earlier order (§7.1.4 allows the CA to)
        if authorization.status != "pending":
            raise OrderFailed(
                f"authorization for {authorization.identifier} is {authorization.status}",
                url=url,
                problem=_first_error(authorization),
            )
        challenge, solver = self._pick_challenge(authorization, solvers, preferred)
        assert challenge.token is not None
        token = challenge.token
        key_auth = self.key_authorization(token)
        identifier = authorization.identifier

        async def cleanup() -> None:
            try:
                await solver.cleanup(identifier, token, key_auth)
            except Exception as exc:
                # A cleanup failure must not hide the order's own outcome.
                logger.warning("%s cleanup for %s failed: %s", challenge.type, identifier, exc)

        cleanups.append(cleanup)
        await solver.present(identifier, token, key_auth)
        answer = challenge
        if challenge.status == "pending":
            answer = await self.respond_to_challenge(challenge, deadline=deadline)
        # step-ca validates while answering; a valid challenge makes its authorization
        # valid (§7.1.6), so there is nothing to poll.
        if answer.status == "valid":
            authorization = replace(authorization, status="valid")
        elif _failed_without_retry(answer):
            authorization = replace(authorization, status="invalid")
        else:
            authorization = await self._poll(
                lambda: self._fetch_authorization(url, deadline),
                lambda found: (
                    found.status != "pending"
                    or _failed_without_retry(found.challenge(challenge.type))
                ),
                deadline=deadline,
                what="authorization",
                url=url,
                status_of=lambda found: found.status,
            )
        if authorization.status != "valid":
            final = authorization.challenge(challenge.type)
            if answer.error is not None and (final is None or final.error is None):
                final = answer
            problem = final.error if final is not None and final.error else None
            raise OrderFailed(
                f"{challenge.type} validation of {identifier} failed "
                f"(authorization {authorization.status})",
                url=url,
                problem=problem or _first_error(authorization),
            )

    # --- revocation (§7.6) --------------------------------------------------------------------

    async def revoke(
        self,
        cert: x509.Certificate | bytes | str,
        reason: int | None = None,
        *,
        cert_key: PrivateKey | None = None,
        deadline: float | None = None,
    ) -> None:
        """Revoke a certificate (RFC 8555 §7.6), signed by the account, or with ``cert_key``
        by the certificate's own key (``jwk`` in the header: "either the account key pair or
        the key pair in the certificate").

        ``reason`` is an RFC 5280 CRLReason code; omitted when None.
        """
        deadline = self._deadline(deadline)
        directory = await self.directory(deadline=deadline)
        certificate = load_certificate(cert)
        payload: dict[str, Any] = {"certificate": b64url(certificate.public_bytes(Encoding.DER))}
        if reason is not None:
            payload["reason"] = reason
        if cert_key is not None:
            await self._transport.post(
                directory.revoke_cert, payload, cert_key, kid=None, deadline=deadline
            )
        else:
            await self._post_as_account(directory.revoke_cert, payload, deadline=deadline)
        logger.info("certificate serial %x revoked (reason %s)", certificate.serial_number, reason)

    # --- renewal information (RFC 9773) -------------------------------------------------------

    async def renewal_info(
        self, cert: x509.Certificate | bytes | str, *, deadline: float | None = None
    ) -> RenewalInfo | None:
        """The CA's suggested renewal window, or None when the directory has no renewalInfo.

        RFC 9773 §4.1: fetched with a plain GET (not POST-as-GET).
        """
        deadline = self._deadline(deadline)
        directory = await self.directory(deadline=deadline)
        if directory.renewal_info is None:
            return None
        try:
            cert_id = certificate_id(cert)
        except ValueError as exc:
            raise AcmeError(f"no renewal info possible: {exc}") from exc
        url = renewal_info_url(directory.renewal_info, cert_id)
        response = await self._transport.get(url, deadline=deadline)
        return RenewalInfo.from_json(response.json(), url=url, retry_after=response.retry_after)


def _failed_without_retry(challenge: Challenge | None) -> bool:
    """A challenge back at ``pending`` with an ``error`` failed and will not be retried.

    RFC 8555 §8.2: a server that retries a failed validation sets the challenge to
    ``processing``; one that gives up sets ``invalid``. step-ca 0.19 leaves it ``pending`` with
    the error and never changes it again, so waiting for the authorization to move would wait
    for the whole deadline.
    """
    return challenge is not None and challenge.status == "pending" and challenge.error is not None


def _first_error(authorization: Authorization) -> AcmeProblem | None:
    for challenge in authorization.challenges:
        if challenge.error is not None:
            return challenge.error
    return None


__all__ = [
    "AcmeClient",
    "select_chain",
    "split_pem_chain",
    "verify_issued_certificate",
]
