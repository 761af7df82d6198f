"""Accounts (RFC 8555 §7.3) and the ``kid``-signed request every other resource is reached by.

§7.3: "A client creates a new account with the server by sending a POST request to the
server's newAccount URL." §6.2: "For all other requests, the request is signed using an
existing account, and there MUST be a "kid" field. This field MUST contain the account URL
received by POSTing to the newAccount resource."

So :func:`post_as_account` lives here: it needs an account URL, registers one if none was set
up yet, and when the CA has forgotten the account (its database was reset) registers the key
again, once, and repeats the request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ca_client._session import Registration, Session, logger
from ca_client.errors import AccountDoesNotExist, CAUnreachable, MalformedResponse, ServerInternal
from ca_client.jws import eab_binding
from ca_client.models import Account, ExternalAccountBinding
from ca_client.transport import AcmeResponse


async def new_account(
    session: Session,
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
    deadline = session.deadline(deadline)
    directory = await session.directory(deadline)
    payload: dict[str, Any] = {"termsOfServiceAgreed": terms_agreed}
    if contact:
        payload["contact"] = list(contact)
    if eab is not None:
        # §7.3.4: the account key signed with the MAC key the CA handed out.
        payload["externalAccountBinding"] = eab_binding(
            session.account_key, kid=eab.kid, hmac_key=eab.hmac_key, url=directory.new_account
        )
    # Idempotent: the account is keyed by its key (§7.3.1), a repeat finds it.
    response = await session.transport.post(
        directory.new_account,
        payload,
        session.account_key,
        kid=None,
        deadline=deadline,
        idempotent=True,
    )
    account = await _account_from(session, response, deadline)
    session.registration = Registration(tuple(contact), eab, terms_agreed)
    session.account = account
    if response.status == 201:
        logger.info(
            "ACME account created: %s", account.url, extra={"acme_event": "account_created"}
        )
    else:
        logger.debug("ACME account exists: %s", account.url)
    return account


async def _account_from(session: Session, response: AcmeResponse, deadline: float) -> Account:
    """The account a newAccount answer names: its ``Location``, and its body when it is one.

    §7.3.1 says the body is the account object, but some CAs answer an existing key with ``200``,
    a ``Location`` and ``{}`` (or nothing). certbot and lego rely on ``Location`` alone, and so
    can we: the account is then read from its URL (POST-as-GET, §7.3.3). See
    docs/ACME-DEVIATIONS.md.
    """
    url = response.location
    if not url:
        raise MalformedResponse("account answer without a Location", url=response.url)
    body = response.json() if response.content.strip() else None
    if not lacks_account(body):
        return Account.from_json(body, url=url)
    logger.debug("newAccount answer for %s has no account object: fetching it", url)
    fetched = await session.transport.post(
        url, None, session.account_key, kid=url, deadline=deadline, idempotent=True
    )
    body = fetched.json() if fetched.content.strip() else None
    if not lacks_account(body):
        return Account.from_json(body, url=url)
    # Still no status. The CA has just accepted a request signed for this account (a kid
    # POST-as-GET): §7.3.6 has it refuse those for a deactivated or revoked account
    # ("the server MUST NOT accept further requests authorized by that account's key"), so the
    # account is usable, which is all "valid" means here. Anything else in the body (a contact
    # of the wrong type, say) is still checked.
    logger.warning("the CA gave no status for account %s: taking it as valid", url)
    return Account.from_json(
        {**(body if isinstance(body, Mapping) else {}), "status": "valid"}, url=url
    )


def lacks_account(body: object) -> bool:
    """No body, or an object without ``status``: what some CAs send for an existing account.

    Anything else is parsed as the account, and refused if it is not one (a list, a status of
    the wrong type): that is a broken answer, not a short one.
    """
    return body is None or (isinstance(body, Mapping) and "status" not in body)


async def find_account(session: Session, deadline: float | None) -> Account | None:
    """The account of this key, or None: newAccount with ``onlyReturnExisting`` (§7.3.1)."""
    account = await _find_existing(session, session.deadline(deadline))
    if account is not None:
        session.account = account
    return account


async def _find_existing(session: Session, deadline: float) -> Account | None:
    """§7.3: "If this field is present with the value "true", then the server MUST NOT create
    a new account if one does not already exist."
    """
    directory = await session.directory(deadline)
    try:
        response = await session.transport.post(
            directory.new_account,
            {"onlyReturnExisting": True},
            session.account_key,
            kid=None,
            deadline=deadline,
            idempotent=True,
        )
    except AccountDoesNotExist:
        return None
    return await _account_from(session, response, deadline)


async def ensure_account(
    session: Session,
    contact: Sequence[str] | None,
    *,
    eab: ExternalAccountBinding | None,
    account_url: str | None,
    terms_agreed: bool,
    deadline: float | None,
) -> Account:
    """The key's account with this contact: registered or found, its contact updated when it
    differs (§7.3.2), a URL other than the stored ``account_url`` logged."""
    deadline = session.deadline(deadline)
    wanted = tuple(contact or ())
    account = await new_account(
        session, wanted, eab=eab, terms_agreed=terms_agreed, deadline=deadline
    )
    if account_url is not None and account_url != account.url:
        logger.warning(
            "the CA knows this account key under a new URL %s (was %s): re-registered",
            account.url,
            account_url,
        )
    if contact is not None and set(account.contact) != set(wanted):
        account = await update_account(session, wanted, deadline=deadline)
    return account


async def fetch_account(session: Session, deadline: float | None) -> Account:
    """The current account object: a POST-as-GET (§6.3) to the account URL."""
    account_url = await _require_account(session, deadline)
    response = await post_as_account(
        session, account_url, None, deadline=deadline, url_is_account=True
    )
    session.account = Account.from_json(response.json(), url=_account_url_or(session, account_url))
    return session.account


async def update_account(
    session: Session, contact: Sequence[str], *, deadline: float | None
) -> Account:
    """§7.3.2: "If the client wishes to update this information in the future, it sends a POST
    request with updated information to the account URL." Here: the contact list."""
    account_url = await _require_account(session, deadline)
    response = await post_as_account(
        session,
        account_url,
        {"contact": list(contact)},
        deadline=deadline,
        url_is_account=True,
        idempotent=True,
    )
    registered = session.registration
    session.registration = Registration(tuple(contact), registered.eab, registered.terms_agreed)
    session.account = Account.from_json(response.json(), url=_account_url_or(session, account_url))
    return session.account


async def deactivate_account(session: Session, deadline: float | None) -> Account:
    """§7.3.6: "A client can deactivate an account by posting a signed update to the account
    URL with a status field of "deactivated"." Never re-registers: that would undo it."""
    account_url = await _require_account(session, deadline)
    response = await post_as_account(
        session,
        account_url,
        {"status": "deactivated"},
        deadline=deadline,
        url_is_account=True,
        reregister=False,
    )
    session.account = Account.from_json(response.json(), url=account_url)
    logger.info("ACME account deactivated: %s", account_url)
    return session.account


def _account_url_or(session: Session, fallback: str) -> str:
    return session.account.url if session.account else fallback


async def _require_account(session: Session, deadline: float | None) -> str:
    """The account URL (``kid``); registers without contact if nothing was set up yet."""
    if session.account is None:
        async with session.account_lock:
            if session.account is None:
                registered = session.registration
                await new_account(
                    session,
                    registered.contact,
                    eab=registered.eab,
                    terms_agreed=registered.terms_agreed,
                    deadline=deadline,
                )
    assert session.account is not None
    return session.account.url


async def _recover_account(
    session: Session, stale_url: str, deadline: float, *, missing: bool
) -> bool:
    """After a kid-signed request failed in a way a forgotten account explains, make sure
    the key has a current account; True when its URL changed (a repeat can succeed).

    ``missing``: the CA said ``accountDoesNotExist``. Otherwise (step-ca 0.19 answers a
    bare HTTP 500 for an unknown account ID) ask with ``onlyReturnExisting`` first. Under
    the account lock, so that many concurrent failures register only once.
    """
    async with session.account_lock:
        if session.account is not None and session.account.url != stale_url:
            return True  # another task already did it
        if not missing:
            existing = await _find_existing(session, deadline)
            if existing is not None:
                session.account = existing
                return existing.url != stale_url
        registered = session.registration
        logger.warning(
            "the CA no longer knows account %s (database reset?): registering again",
            stale_url,
        )
        await new_account(
            session,
            registered.contact,
            eab=registered.eab,
            terms_agreed=registered.terms_agreed,
            deadline=deadline,
        )
        return True


async def post_as_account(
    session: Session,
    url: str,
    payload: Mapping[str, Any] | None,
    *,
    deadline: float | None,
    accept: str = "application/json",
    url_is_account: bool = False,
    reregister: bool = True,
    idempotent: bool | None = None,
) -> AcmeResponse:
    """A ``kid``-signed POST (§6.2), or POST-as-GET when ``payload`` is None (§6.3). When the CA
    no longer knows the account (its database was reset) the account is registered again and
    the request repeated once; ``url_is_account`` sends the repeat to the new account URL."""
    deadline = session.deadline(deadline)
    account_url = await _require_account(session, deadline)
    try:
        return await session.transport.post(
            url,
            payload,
            session.account_key,
            kid=account_url,
            deadline=deadline,
            accept=accept,
            idempotent=idempotent,
        )
    except AccountDoesNotExist:
        if not reregister:
            raise
        await _recover_account(session, account_url, deadline, missing=True)
    except (ServerInternal, CAUnreachable) as exc:
        if not reregister or exc.status != 500:
            raise
        if not await _recover_account(session, account_url, deadline, missing=False):
            raise
    assert session.account is not None
    if url_is_account:
        url = session.account.url
    return await session.transport.post(
        url,
        payload,
        session.account_key,
        kid=session.account.url,
        deadline=deadline,
        accept=accept,
        idempotent=idempotent,
    )
