"""Challenges (RFC 8555 §7.5.1, §8): choosing one, its key authorization, answering it.

§7.1.4 (an authorization's ``challenges``): "A client should attempt to fulfill one of these
challenges, and a server should consider any one of the challenges sufficient to make the
authorization valid." The solvers themselves (http-01, tls-alpn-01, dns-01) live in
``ca_client.challenges``; this module only talks to the CA about them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ca_client._account import post_as_account
from ca_client._session import Session
from ca_client.errors import NoSolver
from ca_client.models import Authorization, Challenge

if TYPE_CHECKING:
    from ca_client.challenges.base import ChallengeSolver


def key_authorization(session: Session, token: str) -> str:
    """RFC 8555 §8.1: "keyAuthorization = token || '.' || base64url(Thumbprint(accountKey))".

    Written out here rather than imported from ``challenges.base`` so that importing the
    client does not import every responder (``challenges/__init__`` loads them all).
    """
    return f"{token}.{session.thumbprint}"


def pick_challenge(
    authorization: Authorization,
    solvers: Mapping[str, ChallengeSolver],
    preferred: Sequence[str],
) -> tuple[Challenge, ChallengeSolver]:
    """The first type in ``preferred`` that the authorization offers (with a token) and a
    solver exists for; else :class:`NoSolver`, naming what was offered and what we have."""
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


async def respond_to_challenge(
    session: Session, challenge: Challenge, *, deadline: float | None
) -> Challenge:
    """RFC 8555 §7.5.1: "The client indicates to the server that it is ready for the
    challenge validation by sending an empty JSON body ("{}") carried in a POST request to
    the challenge URL (not the authorization URL)."""
    # Answering twice is harmless: the CA validates once (§7.5.1).
    response = await post_as_account(session, challenge.url, {}, deadline=deadline, idempotent=True)
    return Challenge.from_json(response.json(), url=challenge.url)


def failed_without_retry(challenge: Challenge | None) -> bool:
    """A challenge back at ``pending`` with an ``error`` failed and will not be retried.

    RFC 8555 §8.2: a server that retries a failed validation sets the challenge to
    ``processing``; one that gives up sets ``invalid``. step-ca 0.19 leaves it ``pending`` with
    the error and never changes it again, so waiting for the authorization to move would wait
    for the whole deadline.
    """
    return challenge is not None and challenge.status == "pending" and challenge.error is not None
