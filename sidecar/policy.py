"""When to renew, why a certificate is due, how often to look, and how long to wait after a failure.

Pure functions with the time passed in, so ``run``, ``status`` and ``/metrics`` compute the same
answers from the same certificate, and the tests drive them with any clock they like.

Lifetimes are measured from notBefore to notAfter, as issued: step-ca backdates notBefore by a
minute, so a "60-second" certificate spans two minutes and the fractions below apply to those two.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum

from sidecar.pem import CertFacts, normalise_names

__all__ = [
    "DEFAULT_RENEW_AT",
    "MAX_CHECK_INTERVAL",
    "MAX_RETRY_DELAY",
    "MIN_CHECK_INTERVAL",
    "MIN_RETRY_DELAY",
    "PERMANENT_PROBLEMS",
    "URGENT_FRACTION",
    "DueReason",
    "check_interval",
    "due_reason",
    "facts_renewal_time",
    "is_permanent_problem",
    "jitter_fraction",
    "next_retry_delay",
    "renewal_time",
    "serial_seed",
]

DEFAULT_RENEW_AT = 0.66
# Below this share of its lifetime left a certificate is renewed at once, whatever the schedule:
# also the most the jitter moves a renewal earlier.
URGENT_FRACTION = 1 / 20

MIN_RETRY_DELAY = timedelta(seconds=5)
MAX_RETRY_DELAY = timedelta(hours=1)
# A tenth of the time left: a certificate with an hour left still gets ten more attempts.
_RETRY_SHARE_OF_TIME_LEFT = 10

# One look every hundredth of the lifetime, within bounds: a 5-minute certificate is looked at
# every 3 s, a 24-hour one every 5 minutes (often enough to notice a deleted file or a stopped
# HAProxy soon; the renewal itself is scheduled at its exact time, not found by polling).
_CHECKS_PER_LIFETIME = 100
MIN_CHECK_INTERVAL = timedelta(seconds=1)
MAX_CHECK_INTERVAL = timedelta(minutes=5)

# RFC 8555 §6.7 error types that retrying soon will not fix: the request itself is refused, or
# a person has to act. They still get retried (configuration or CA policy may change), but at
# the longest delay allowed.
PERMANENT_PROBLEMS = frozenset(
    f"urn:ietf:params:acme:error:{name}"
    for name in (
        "rejectedIdentifier",
        "unsupportedIdentifier",
        "caa",
        "badCSR",
        "badSignatureAlgorithm",
        "badPublicKey",
        "invalidContact",
        "unsupportedContact",
        "externalAccountRequired",
        "userActionRequired",
        "badRevocationReason",
    )
)


class DueReason(StrEnum):
    """Why a certificate must be (re)issued now; the value is what logs and ``status`` show."""

    MISSING = "missing"
    UNREADABLE = "unreadable"
    PLACEHOLDER = "placeholder"
    KEY_MISMATCH = "key mismatch"
    NAMES_CHANGED = "names changed"
    KEY_TYPE_CHANGED = "key type changed"
    EXPIRED = "expired"
    NEARLY_EXPIRED = "under 1/20 of lifetime left"
    SCHEDULED = "scheduled time passed"
    FORCED = "forced"


def jitter_fraction(seed: bytes) -> float:
    """A number in [0, 1) that depends only on ``seed`` (e.g. the certificate's serial bytes).

    Deterministic rather than random, so every process that looks at the certificate agrees on
    its renewal time, while certificates issued together still spread their renewals.
    """
    digest = hashlib.sha256(seed).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def renewal_time(
    not_before: datetime,
    not_after: datetime,
    renew_at: float = DEFAULT_RENEW_AT,
    *,
    jitter_seed: bytes,
    ari_window: tuple[datetime, datetime] | None = None,
) -> datetime:
    """When to renew: once ``renew_at`` of the lifetime has passed, minus up to 1/20 of it.

    With a Renewal Information window the window wins: RFC 9773 ("Getting Renewal
    Information") has the client pick a uniformly random time within the suggested window, and
    renew at once when that time has passed. The point here is derived from the seed instead of
    drawn, for the same reason as the jitter. A window that ends before it starts is malformed
    and ignored.
    """
    fraction = jitter_fraction(jitter_seed)
    if ari_window is not None:
        start, end = ari_window
        if end >= start:
            return start + (end - start) * fraction
    lifetime = not_after - not_before
    scheduled = not_before + lifetime * renew_at - lifetime * URGENT_FRACTION * fraction
    # A renew_at near 1 would otherwise schedule past the point where the certificate counts
    # as urgent; keep the two rules consistent.
    return max(not_before, min(scheduled, not_after - lifetime * URGENT_FRACTION))


def serial_seed(serial: int) -> bytes:
    """The jitter seed for a certificate: its serial number's bytes."""
    return serial.to_bytes((serial.bit_length() + 7) // 8 or 1, "big")


def facts_renewal_time(
    facts: CertFacts,
    renew_at: float = DEFAULT_RENEW_AT,
    ari_window: tuple[datetime, datetime] | None = None,
) -> datetime:
    """``renewal_time`` for a described certificate, seeded by its serial."""
    return renewal_time(
        facts.not_before,
        facts.not_after,
        renew_at,
        jitter_seed=serial_seed(facts.serial),
        ari_window=ari_window,
    )


def due_reason(
    now: datetime,
    facts: CertFacts | None,
    *,
    wanted_names: Iterable[str],
    wanted_key_type: str | None = None,
    renew_at: float = DEFAULT_RENEW_AT,
    unreadable: bool = False,
    key_matches: bool = True,
    ari_window: tuple[datetime, datetime] | None = None,
    force: bool = False,
) -> DueReason | None:
    """Why the certificate must be renewed now, or None when it can wait for its schedule.

    ``facts`` is None when there is no certificate; ``unreadable`` when the file exists but does
    not parse. The first matching reason wins, most fundamental first, so ``forced`` only shows
    when nothing else would have renewed it.
    """
    if unreadable:
        return DueReason.UNREADABLE
    if facts is None:
        return DueReason.MISSING
    if facts.is_placeholder:
        return DueReason.PLACEHOLDER
    if not key_matches:
        return DueReason.KEY_MISMATCH
    if normalise_names(wanted_names) != normalise_names(facts.names):
        return DueReason.NAMES_CHANGED
    if wanted_key_type is not None and facts.key_type != wanted_key_type:
        return DueReason.KEY_TYPE_CHANGED
    if now >= facts.not_after:
        return DueReason.EXPIRED
    lifetime = facts.not_after - facts.not_before
    if facts.not_after - now < lifetime * URGENT_FRACTION:
        return DueReason.NEARLY_EXPIRED
    if now >= facts_renewal_time(facts, renew_at, ari_window):
        return DueReason.SCHEDULED
    if force:
        return DueReason.FORCED
    return None


def check_interval(lifetime: timedelta) -> timedelta:
    """How often to look at a certificate of this lifetime (file present, HAProxy serving it)."""
    return max(MIN_CHECK_INTERVAL, min(lifetime / _CHECKS_PER_LIFETIME, MAX_CHECK_INTERVAL))


def is_permanent_problem(problem_type: str | None) -> bool:
    """Whether an ACME problem type is one that retrying soon will not fix."""
    return problem_type in PERMANENT_PROBLEMS


def next_retry_delay(
    failures: int,
    now: datetime,
    not_after: datetime | None,
    rng: random.Random,
    *,
    permanent: bool = False,
    retry_after: timedelta | None = None,
) -> timedelta:
    """How long to wait after the ``failures``-th failure in a row (1 for the first).

    Exponential from 5 s, with "equal jitter" (half fixed, half random) so that many
    certificates failing together do not retry in lock-step, and capped:
    - never longer than an hour;
    - never longer than a tenth of the time the deployed certificate has left, so retries get
      more frequent as expiry approaches (``not_after`` is the deployed real certificate's; pass
      None when there is none, or only a placeholder: then, as for an expired one, only the
      hour cap applies, since there is no validity left to protect);
    - never shorter than 5 s, which wins over the cap when little time is left.
    ``permanent`` (see ``is_permanent_problem``) takes the longest delay allowed. A CA's
    Retry-After is honoured up to the hour cap: asking earlier would only be refused again.
    """
    cap = MAX_RETRY_DELAY
    if not_after is not None and not_after > now:
        cap = min(cap, (not_after - now) / _RETRY_SHARE_OF_TIME_LEFT)
    if permanent:
        delay = cap
    else:
        # Exponent bounded so the arithmetic stays small; 5 s * 2**20 is far above the cap.
        base = MIN_RETRY_DELAY * 2 ** (min(max(failures, 1), 21) - 1)
        delay = min(base / 2 + base / 2 * rng.random(), cap)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_DELAY))
    return max(delay, MIN_RETRY_DELAY)
