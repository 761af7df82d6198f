"""The ACME client: one :class:`AcmeClient` for one CA directory and one account key.

One client talks to one CA over one connection pool; any number of :meth:`AcmeClient.obtain`
calls may run on it concurrently. The protocol lives beside this module, one private module per
RFC 8555 resource as in acmez, each quoting the RFC next to the code that implements it:

=====================  ====================================================================
``_session``           what they share: directory (§7.1.1), account state, deadlines, polling
``_account``           accounts (§7.3) and the ``kid``-signed request (§6.2) with re-registration
``_order``             newOrder, fetch, poll and finalize an order (§7.4)
``_authorization``     fetch, poll, deactivate and prove the authorizations of an order (§7.5)
``_challenge``         choose a challenge, key authorization, answer it (§7.5.1, §8)
``_certificate``       download with alternate chains (§7.4.2), checks, revocation (§7.6)
``_ari``               renewal information (RFC 9773)
=====================  ====================================================================

This module keeps the public face: the constructor and lifecycle, the public methods (each
hands its :class:`~ca_client._session.Session` to the resource module), and :meth:`obtain`,
the whole order from newOrder to a verified certificate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ca_client import _account, _ari, _authorization, _certificate, _challenge, _order
from ca_client._certificate import select_chain, split_pem_chain, verify_issued_certificate
from ca_client._session import Session
from ca_client.csr import build_csr
from ca_client.keys import PrivateKey, jwk_thumbprint
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
    serial_hex,
)
from ca_client.transport import AcmeTransport, Clock, Sleep

if TYPE_CHECKING:
    import httpx
    from cryptography import x509

    from ca_client.challenges.base import ChallengeSolver

logger = logging.getLogger(__name__)


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
        self.thumbprint = jwk_thumbprint(account_key)
        self._clock = clock
        self._transport = AcmeTransport(
            ssl_context=ssl_context,
            timeout=timeout,
            clock=clock,
            sleep=sleep,
            transport=transport,
            max_connections=max_connections,
        )
        self._session = Session(
            directory_url=directory_url,
            account_key=account_key,
            thumbprint=self.thumbprint,
            transport=self._transport,
            timeout=timeout,
            clock=clock,
            sleep=sleep,
        )

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
        return self._session.account

    @property
    def account_url(self) -> str | None:
        account = self._session.account
        return account.url if account else None

    @property
    def last_server_date_skew(self) -> float | None:
        """The CA's ``Date`` minus our clock, in seconds (None before any answer had one)."""
        return self._transport.last_server_date_skew

    def key_authorization(self, token: str) -> str:
        """RFC 8555 §8.1: "keyAuthorization = token || '.' || base64url(Thumbprint(accountKey))"."""
        return _challenge.key_authorization(self._session, token)

    async def directory(self, *, deadline: float | None = None) -> Directory:
        """The CA's directory (RFC 8555 §7.1.1), fetched once per client."""
        return await self._session.directory(deadline)

    # --- account (§7.3) -----------------------------------------------------------------------

    async def new_account(
        self,
        contact: Sequence[str] = (),
        *,
        eab: ExternalAccountBinding | None = None,
        terms_agreed: bool = True,
        deadline: float | None = None,
    ) -> Account:
        """Register the account key, or find its account (RFC 8555 §7.3.1): one request does
        both."""
        return await _account.new_account(
            self._session, contact, eab=eab, terms_agreed=terms_agreed, deadline=deadline
        )

    async def find_account(self, *, deadline: float | None = None) -> Account | None:
        """The account of this key, or None: newAccount with ``onlyReturnExisting`` (§7.3.1)."""
        return await _account.find_account(self._session, deadline)

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
        return await _account.ensure_account(
            self._session,
            contact,
            eab=eab,
            account_url=account_url,
            terms_agreed=terms_agreed,
            deadline=deadline,
        )

    async def fetch_account(self, *, deadline: float | None = None) -> Account:
        """The current account object (POST-as-GET to the account URL, §6.3)."""
        return await _account.fetch_account(self._session, deadline)

    async def update_account(
        self, contact: Sequence[str], *, deadline: float | None = None
    ) -> Account:
        """Replace the account's contact list (RFC 8555 §7.3.2)."""
        return await _account.update_account(self._session, contact, deadline=deadline)

    async def deactivate_account(self, *, deadline: float | None = None) -> Account:
        """RFC 8555 §7.3.6: POST ``{"status": "deactivated"}`` to the account URL."""
        return await _account.deactivate_account(self._session, deadline)

    # --- orders, authorizations, challenges (§7.4, §7.5) -------------------------------------

    async def new_order(
        self,
        identifiers: Sequence[Identifier],
        *,
        replaces: str | None = None,
        deadline: float | None = None,
    ) -> Order:
        """RFC 8555 §7.4 newOrder; ``replaces`` (RFC 9773 §5) only when the CA offers ARI."""
        return await _order.new_order(
            self._session, identifiers, replaces=replaces, deadline=deadline
        )

    async def get_order(self, url: str, *, deadline: float | None = None) -> Order:
        order, _ = await _order.fetch_order(self._session, url, self._session.deadline(deadline))
        return order

    async def poll_order(
        self,
        url: str,
        *,
        deadline: float | None = None,
        waiting: tuple[str, ...] = ("pending", "processing"),
    ) -> Order:
        """Until the order's status is none of ``waiting`` (RFC 8555 §7.1.6, §7.4)."""
        return await _order.poll_order(
            self._session, url, deadline=self._session.deadline(deadline), waiting=waiting
        )

    async def finalize_order(
        self, order: Order, csr_der: bytes, *, deadline: float | None = None
    ) -> Order:
        """RFC 8555 §7.4: POST ``{"csr": base64url(DER)}`` to the order's finalize URL."""
        return await _order.finalize_order(self._session, order, csr_der, deadline=deadline)

    async def get_authorization(self, url: str, *, deadline: float | None = None) -> Authorization:
        authorization, _ = await _authorization.fetch_authorization(
            self._session, url, self._session.deadline(deadline)
        )
        return authorization

    async def poll_authorization(self, url: str, *, deadline: float | None = None) -> Authorization:
        """Until the authorization leaves ``pending`` (RFC 8555 §7.1.6)."""
        return await _authorization.poll_authorization(
            self._session, url, deadline=self._session.deadline(deadline)
        )

    async def deactivate_authorization(
        self, url: str, *, deadline: float | None = None
    ) -> Authorization:
        """RFC 8555 §7.5.2."""
        return await _authorization.deactivate_authorization(self._session, url, deadline=deadline)

    async def respond_to_challenge(
        self, challenge: Challenge, *, deadline: float | None = None
    ) -> Challenge:
        """RFC 8555 §7.5.1: tell the CA the challenge is ready to be validated (POST ``{}``)."""
        return await _challenge.respond_to_challenge(self._session, challenge, deadline=deadline)

    # --- certificates (§7.4.2, §7.6) and renewal information (RFC 9773) ----------------------

    async def download_certificate(
        self, url: str, *, preferred_chain: str | None = None, deadline: float | None = None
    ) -> tuple[list[str], list[list[str]], str]:
        """The chain to use, the other chains (RFC 8555 §7.4.2 "alternate" links), and the
        URL the chosen one came from; ``preferred_chain`` picks by the top issuer's CN."""
        return await _certificate.download_certificate(
            self._session, url, preferred_chain=preferred_chain, deadline=deadline
        )

    async def revoke(
        self,
        cert: x509.Certificate | bytes | str,
        reason: int | None = None,
        *,
        cert_key: PrivateKey | None = None,
        deadline: float | None = None,
    ) -> None:
        """Revoke a certificate (RFC 8555 §7.6), signed by the account, or with ``cert_key``
        by the certificate's own key (``jwk`` in the header).

        ``reason`` is an RFC 5280 CRLReason code; omitted when None.
        """
        await _certificate.revoke(self._session, cert, reason, cert_key=cert_key, deadline=deadline)

    async def renewal_info(
        self, cert: x509.Certificate | bytes | str, *, deadline: float | None = None
    ) -> RenewalInfo | None:
        """The CA's suggested renewal window, or None when the directory has no renewalInfo.

        RFC 9773 §4.1: fetched with a plain GET (not POST-as-GET).
        """
        return await _ari.renewal_info(self._session, cert, deadline=deadline)

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
        exists for; the solvers' ``cleanup`` always runs, once every authorization is done;
        finalize with a CSR; poll; download (``preferred_chain`` picks among alternate chains
        by the top issuer's CN); check key and names. Everything within ``timeout`` seconds,
        else :class:`ACMETimeout`.
        """
        deadline = self._clock() + timeout
        identifiers = tuple(identifiers)
        order_preference = tuple(preferred) if preferred is not None else tuple(solvers)
        csr = build_csr(cert_key, identifiers)  # pure, so bad identifiers fail before any I/O
        order = await self.new_order(identifiers, replaces=replaces, deadline=deadline)
        names = ", ".join(str(i) for i in identifiers)
        logger.info(
            "ACME order %s for %s: %s",
            order.url,
            names,
            order.status,
            extra={"acme_event": "order_created"},
        )
        authorized = order.status == "pending"
        if authorized:
            await _authorization.authorize_all(
                self._session, order.authorizations, solvers, order_preference, deadline=deadline
            )
        order = await _order.finish(
            self._session, order, csr, authorized=authorized, deadline=deadline
        )
        assert order.certificate is not None  # finish() raises OrderFailed otherwise
        chain, others, certificate_url = await self.download_certificate(
            order.certificate, preferred_chain=preferred_chain, deadline=deadline
        )
        leaf = verify_issued_certificate(chain[0], cert_key, identifiers)
        logger.info(
            "certificate issued for %s: serial %s, not after %s",
            names,
            serial_hex(leaf.serial_number),
            leaf.not_valid_after_utc.isoformat(),
            extra={"acme_event": "certificate_issued"},
        )
        return IssuedCertificate(
            pem="".join(chain),
            leaf_pem=chain[0],
            chain_pems=tuple(chain[1:]),
            order_url=order.url,
            alternates=tuple("".join(other) for other in others),
            certificate_url=certificate_url,
        )


__all__ = [
    "AcmeClient",
    "select_chain",
    "split_pem_chain",
    "verify_issued_certificate",
]
