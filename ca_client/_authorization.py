"""Authorizations (RFC 8555 §7.5): fetching, polling, deactivating, and proving one.

§7.5: "When a client receives an order from the server in reply to a newOrder request, it
downloads the authorization resources by sending POST-as-GET requests to the indicated URLs."
:func:`authorize` then presents the proof with a solver, answers the chosen challenge
(``_challenge``) and waits until the authorization leaves ``pending``. It does not clean up:
it hands the solver's clean-up to :func:`authorize_all`, which proves every authorization of
an order concurrently and runs the clean-ups only once all of them are done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ca_client._account import post_as_account
from ca_client._challenge import (
    failed_without_retry,
    key_authorization,
    pick_challenge,
    respond_to_challenge,
)
from ca_client._session import Session, logger
from ca_client.errors import AcmeProblem, OrderFailed
from ca_client.models import Authorization, Challenge, Identifier

if TYPE_CHECKING:
    from ca_client.challenges.base import ChallengeSolver

Cleanup = Callable[[], Awaitable[None]]

NO_REASON = "the CA gave no reason (no error document in the challenge or authorization)"


async def fetch_authorization(
    session: Session, url: str, deadline: float
) -> tuple[Authorization, float | None]:
    """The authorization (POST-as-GET, §7.5) and the CA's Retry-After, for polling."""
    response = await post_as_account(session, url, None, deadline=deadline)
    return Authorization.from_json(response.json(), url=url), response.retry_after


async def poll_authorization(session: Session, url: str, *, deadline: float) -> Authorization:
    """Until the authorization leaves ``pending`` (§7.1.6)."""
    return await session.poll(
        lambda: fetch_authorization(session, url, deadline),
        lambda authorization: authorization.status != "pending",
        deadline=deadline,
        what="authorization",
        url=url,
        status_of=lambda authorization: authorization.status,
    )


async def deactivate_authorization(
    session: Session, url: str, *, deadline: float | None
) -> Authorization:
    """§7.5.2: the client "may request that the server deactivate each authorization
    associated with it by sending POST requests with the static object {"status":
    "deactivated"} to each authorization URL"."""
    response = await post_as_account(session, url, {"status": "deactivated"}, deadline=deadline)
    return Authorization.from_json(response.json(), url=url)


async def authorize(
    session: Session,
    url: str,
    solvers: Mapping[str, ChallengeSolver],
    preferred: Sequence[str],
    *,
    deadline: float,
    cleanups: list[Cleanup],
) -> None:
    """Prove control of one identifier (§7.5). The solver's clean-up is added to
    ``cleanups`` as soon as the proof is presented (or fails to be); the caller runs them."""
    authorization, _ = await fetch_authorization(session, url, deadline)
    if authorization.status == "valid":
        return  # reused from an earlier order (§7.1.4 allows the CA to)
    if authorization.status != "pending":
        problem = first_error(authorization)
        message = f"authorization for {authorization.identifier} is {authorization.status}"
        raise OrderFailed(
            message if problem else f"{message}: {NO_REASON}", url=url, problem=problem
        )
    challenge, solver = pick_challenge(authorization, solvers, preferred)
    assert challenge.token is not None
    token = challenge.token
    key_auth = key_authorization(session, token)
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
        answer = await respond_to_challenge(session, challenge, deadline=deadline)
    authorization = await _settle(session, authorization, challenge.type, answer, deadline)
    if authorization.status != "valid":
        raise _validation_failed(authorization, challenge.type, answer, identifier)


async def authorize_all(
    session: Session,
    urls: Sequence[str],
    solvers: Mapping[str, ChallengeSolver],
    preferred: Sequence[str],
    *,
    deadline: float,
) -> None:
    """Prove every authorization of an order, concurrently; the first failure cancels the rest
    and is raised. Every solver's clean-up runs after all of them are done, never before.

    Clean up only once every authorization of the order is done: a wildcard and its base name
    share one TXT record name (_acme-challenge.example.org), and a dns-01 hook that clears the
    whole record would otherwise delete the other's value while the CA is still looking for it.
    """
    cleanups: list[Cleanup] = []
    try:
        await _run_all(
            [
                authorize(session, url, solvers, preferred, deadline=deadline, cleanups=cleanups)
                for url in urls
            ]
        )
    finally:
        await asyncio.gather(*(cleanup() for cleanup in cleanups))


async def _run_all(coroutines: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; on the first failure cancel the rest (their ``finally`` blocks run),
    wait for them, and raise that first failure itself (not a group)."""
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


async def _settle(
    session: Session,
    authorization: Authorization,
    challenge_type: str,
    answer: Challenge,
    deadline: float,
) -> Authorization:
    """The authorization once it has left ``pending`` after its challenge was answered."""
    # step-ca validates while answering. §7.1.6: "If one of the challenges listed in the
    # authorization transitions to the "valid" state, then the authorization also changes to
    # the "valid" state", so there is nothing to poll.
    if answer.status == "valid":
        return replace(authorization, status="valid")
    if failed_without_retry(answer):
        return replace(authorization, status="invalid")
    url = authorization.url
    return await session.poll(
        lambda: fetch_authorization(session, url, deadline),
        lambda found: (
            found.status != "pending" or failed_without_retry(found.challenge(challenge_type))
        ),
        deadline=deadline,
        what="authorization",
        url=url,
        status_of=lambda found: found.status,
    )


def _validation_failed(
    authorization: Authorization, challenge_type: str, answer: Challenge, identifier: Identifier
) -> OrderFailed:
    """The error of a failed validation, carrying the CA's most specific problem: the final
    challenge's, else the answer's, else any challenge's."""
    final = authorization.challenge(challenge_type)
    if answer.error is not None and (final is None or final.error is None):
        final = answer
    problem = final.error if final is not None and final.error else None
    problem = problem or first_error(authorization)
    message = (
        f"{challenge_type} validation of {identifier} failed (authorization {authorization.status})"
    )
    if problem is None:
        # RFC 8555 §8: the server "SHOULD" add an error to a failed challenge, not MUST; some
        # CAs send none. Say so, rather than leave the operator wondering what was cut off.
        message += f": {NO_REASON}"
    return OrderFailed(message, url=authorization.url, problem=problem)


def first_error(authorization: Authorization) -> AcmeProblem | None:
    for challenge in authorization.challenges:
        if challenge.error is not None:
            return challenge.error
    return None
