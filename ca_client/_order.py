"""Orders (RFC 8555 §7.4): newOrder, fetching and polling an order, finalizing it.

§7.4: "The client begins the certificate issuance process by sending a POST request to the
server's newOrder resource." Then, once every authorization is valid: "Once the client
believes it has fulfilled the server's requirements, it should send a POST request to the order
resource's finalize URL. The POST body MUST include a CSR".

Finalizing is here rather than with the certificate: it is a request on the order that returns
the order, and the order's status (§7.1.6: pending, ready, processing, valid, invalid) is what
decides what comes next. The certificate resource itself is in ``_certificate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ca_client._account import post_as_account
from ca_client._session import Session, logger
from ca_client.errors import (
    ACME_ERROR_PREFIX,
    AcmeProblem,
    CAUnreachable,
    MalformedResponse,
    OrderFailed,
    OrderNotReady,
    ServerInternal,
)
from ca_client.keys import b64url
from ca_client.models import Identifier, Order
from ca_client.retry import fits_before_deadline, poll_delays


async def new_order(
    session: Session,
    identifiers: Sequence[Identifier],
    *,
    replaces: str | None,
    deadline: float | None,
) -> Order:
    """A new order for ``identifiers`` (§7.4), naming the certificate it ``replaces``.

    RFC 9773 §5: "Clients SHOULD NOT include this field if the ACME Server has not indicated
    that it supports this protocol by advertising the renewalInfo resource in its Directory."
    """
    deadline = session.deadline(deadline)
    directory = await session.directory(deadline)
    payload: dict[str, Any] = {"identifiers": [i.to_json() for i in identifiers]}
    if replaces and directory.renewal_info:
        payload["replaces"] = replaces
    # Idempotent enough: a repeated newOrder only leaves an unused order behind.
    try:
        response = await post_as_account(
            session, directory.new_order, payload, deadline=deadline, idempotent=True
        )
    except AcmeProblem as problem:
        # RFC 9773 §5: a CA may refuse the replacement ("alreadyReplaced", or an unknown
        # certificate); the order is still wanted, so ask again without the hint.
        if "replaces" not in payload or problem.type not in (
            ACME_ERROR_PREFIX + "alreadyReplaced",
            ACME_ERROR_PREFIX + "malformed",
        ):
            raise
        logger.info("CA refused replaces=%s (%s); ordering without it", replaces, problem)
        del payload["replaces"]
        response = await post_as_account(
            session, directory.new_order, payload, deadline=deadline, idempotent=True
        )
    url = response.location
    if not url:
        raise MalformedResponse("newOrder answer without a Location", url=response.url)
    return Order.from_json(response.json(), url=url)


async def fetch_order(session: Session, url: str, deadline: float) -> tuple[Order, float | None]:
    """The order (POST-as-GET, §6.3) and the CA's Retry-After, for polling."""
    response = await post_as_account(session, url, None, deadline=deadline)
    return Order.from_json(response.json(), url=url), response.retry_after


async def poll_order(
    session: Session, url: str, *, deadline: float, waiting: tuple[str, ...]
) -> Order:
    """Until the order's status is none of ``waiting`` (§7.1.6, §7.4)."""
    return await session.poll(
        lambda: fetch_order(session, url, deadline),
        lambda order: order.status not in waiting,
        deadline=deadline,
        what="order",
        url=url,
        status_of=lambda order: order.status,
    )


async def finalize_order(
    session: Session, order: Order, csr_der: bytes, *, deadline: float | None
) -> Order:
    """§7.4: POST ``{"csr": base64url(DER)}`` to the order's finalize URL."""
    response = await post_as_account(
        session, order.finalize, {"csr": b64url(csr_der)}, deadline=deadline
    )
    return Order.from_json(response.json(), url=order.url)


#: Finalize attempts for one order when the CA answers a server error and the order is still
#: ``ready`` afterwards. step-ca 0.19 answers serverInternal when concurrent requests of one
#: account race in its database (a compare-and-swap of the account's order list); with 16
#: orders in flight two such losses in a row happen (seen in bench/many.py runs).
MAX_FINALIZE_ATTEMPTS = 4


async def _finalize_once(session: Session, order: Order, csr: bytes, deadline: float) -> Order:
    """Finalize; when the answer is lost (connection dropped, server error), look at the
    order instead of finalizing blindly again: it may already be processing or valid. Still
    ``ready``: the finalize did not happen, so it is repeated, after a short pause."""
    delays = poll_delays()
    attempt = 1
    while True:
        try:
            return await finalize_order(session, order, csr, deadline=deadline)
        except (CAUnreachable, ServerInternal) as exc:
            if isinstance(exc, CAUnreachable) and exc.connect_failed:
                raise
            current, _ = await fetch_order(session, order.url, deadline)
            if current.status in ("processing", "valid"):
                return current
            delay = next(delays)
            if (
                current.status != "ready"
                or attempt >= MAX_FINALIZE_ATTEMPTS
                or not fits_before_deadline(delay, session.clock(), deadline)
            ):
                raise
            logger.info("finalize of %s failed (%s); finalizing again", order.url, exc)
            attempt += 1
            order = current
            await session.sleep(delay)


async def finish(
    session: Session, order: Order, csr: bytes, *, authorized: bool, deadline: float
) -> Order:
    """Finalize ``order`` with ``csr`` and wait until it is valid with a certificate URL.

    ``authorized``: every authorization of the order was just seen valid, so the order is
    ready (§7.1.6: "ready" once "all of the authorizations listed in the order object are in
    the "valid" state") and is finalized at once instead of fetched first. A CA that lags
    answers orderNotReady (§7.4: "A request to finalize an order will result in error if the
    order is not in the "ready" state"), and the order is polled until it moves.
    """
    finalized = False
    if authorized:
        try:
            order = await _finalize_once(session, order, csr, deadline)
            finalized = True
        except OrderNotReady:
            order = await poll_order(session, order.url, deadline=deadline, waiting=("pending",))
    if order.status == "ready" and not finalized:
        order = await _finalize_once(session, order, csr, deadline)
    if order.status in ("ready", "processing"):
        order = await poll_order(
            session, order.url, deadline=deadline, waiting=("ready", "processing")
        )
    if order.status == "invalid":
        raise OrderFailed(f"order {order.url} became invalid", url=order.url, problem=order.error)
    if order.status != "valid" or not order.certificate:
        raise OrderFailed(
            f"order {order.url} ended as {order.status} without a certificate",
            url=order.url,
            problem=order.error,
        )
    return order
