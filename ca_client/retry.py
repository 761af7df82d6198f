"""Waiting rules: Retry-After parsing, the polling schedule, and deadline clamping. Pure.

RFC 8555 §7.5.1 (polling) and §6.6 (rate limits) let the server say when to come back with
``Retry-After``; RFC 9110 §10.2.3 defines it as either delay-seconds or an HTTP-date. A CA on
the same network (step-ca) validates in milliseconds, so without a hint the schedule starts at
20 ms and doubles up to a cap instead of sleeping whole seconds.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Iterator

FIRST_POLL_DELAY = 0.02
POLL_FACTOR = 2.0
POLL_CAP = 3.0
#: A Retry-After longer than this is not believed for polling (seconds): a CA asking to wait
#: an hour on an order in "processing" is taken as "poll slowly", not as "sleep an hour".
MAX_POLL_RETRY_AFTER = 60.0
#: The longest wait `parse_retry_after` reports (seconds, one day). A CA may ask for more, but
#: a value beyond it is a bug or a lie, and numbers too large for `timedelta` or a float's
#: precision must never reach the caller's arithmetic (a 21-digit value once did, and the
#: overflow turned a rate limit into a retry every 100 ms).
MAX_RETRY_AFTER = 86_400.0
# RFC 9110 §10.2.3: delay-seconds = 1*DIGIT, and DIGIT is ASCII 0-9 (RFC 5234 B.1): not
# `str.isdigit`, which also takes "²" or "٣" (that `int()` then refuses).
_DELAY_SECONDS = re.compile(r"[0-9]+")
# More digits than this is already past MAX_RETRY_AFTER; not converted at all (int() refuses
# strings over 4,300 digits, and there is no reason to parse a long one).
_MAX_DIGITS = len(str(int(MAX_RETRY_AFTER)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header; ``None`` when absent or invalid.

    ``now`` is the current time as a POSIX timestamp, for the HTTP-date form. A date in the past
    means 0; any wait is at most `MAX_RETRY_AFTER`. Never raises, whatever the CA sends: the
    header is the CA's word, and a parse failure here would escape as a crash, not a failure
    to back off from.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELAY_SECONDS.fullmatch(text):
        digits = text.lstrip("0") or "0"
        if len(digits) > _MAX_DIGITS:
            return MAX_RETRY_AFTER
        return min(float(digits), MAX_RETRY_AFTER)
    try:
        moment = email.utils.parsedate_to_datetime(text)
        if moment.tzinfo is None:
            # RFC 9110 §5.6.7: HTTP-dates are always GMT.
            return None
        wait = moment.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if math.isnan(wait):
        return None
    return min(max(0.0, wait), MAX_RETRY_AFTER)


def poll_delays(
    first: float = FIRST_POLL_DELAY, factor: float = POLL_FACTOR, cap: float = POLL_CAP
) -> Iterator[float]:
    """0.02, 0.04, 0.08, ... seconds, never above ``cap``; endless."""
    delay = first
    while True:
        yield min(delay, cap)
        delay = min(delay * factor, cap)


def next_poll_delay(scheduled: float, retry_after: float | None) -> float:
    """The wait before the next poll: the server's Retry-After wins over the schedule.

    RFC 8555 §7.5.1: the client "SHOULD" follow Retry-After; an absurd value is bounded so a
    poll still happens before the caller's deadline runs out.
    """
    if retry_after is None or math.isnan(retry_after):
        return scheduled
    return min(max(retry_after, 0.0), MAX_POLL_RETRY_AFTER)


def clamp_to_deadline(delay: float, now: float, deadline: float) -> float:
    """Never sleep past the deadline; 0 when it is already over."""
    return max(0.0, min(delay, deadline - now))


def fits_before_deadline(delay: float, now: float, deadline: float) -> bool:
    """Whether waiting ``delay`` seconds still leaves time before the deadline."""
    return now + delay < deadline


__all__ = [
    "FIRST_POLL_DELAY",
    "MAX_POLL_RETRY_AFTER",
    "MAX_RETRY_AFTER",
    "POLL_CAP",
    "POLL_FACTOR",
    "clamp_to_deadline",
    "fits_before_deadline",
    "next_poll_delay",
    "parse_retry_after",
    "poll_delays",
]
