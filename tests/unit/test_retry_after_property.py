"""`ca_client.retry.parse_retry_after` on anything a CA may send (issue 17, finding 3).

The header is the CA's word. A value the parser choked on (``"²"``, which ``str.isdigit``
takes and ``int`` refuses) or passed on too large for ``timedelta`` (21 digits) escaped as a
crash, and the crash was retried 100 ms later: 59 orders in 6 s against a CA answering 429.
For any string: no exception, and the answer is None or a wait within [0, MAX_RETRY_AFTER].
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca_client.retry import MAX_RETRY_AFTER, parse_retry_after

NOW = 1_800_000_000.0

# Pieces that steer the generator towards both grammars (delay-seconds, HTTP-date) and the
# characters that once broke the parser (non-ASCII digits), glued in any order.
PIECES = st.sampled_from(
    ["0", "7", "99999999999999999999", "²", "٣", "\u07c0", "\uff11", " ", "\t", "-", "+", ".", "e9",
     "Sat, ", "28 Nov ", "2026 ", "99999 ", "12:00:30 ", "GMT", "+0000", "-9999", "Feb 30 ",
     "\x00", "nan", "inf"]
)  # fmt: skip
GLUED = st.lists(PIECES, max_size=8).map("".join)
ANY = st.one_of(st.text(), GLUED, st.integers(min_value=0).map(str))


def _check(value: str) -> None:
    wait = parse_retry_after(value, NOW)
    if wait is None:
        return
    assert isinstance(wait, float)
    assert not math.isnan(wait)
    assert 0.0 <= wait <= MAX_RETRY_AFTER
    timedelta(seconds=wait)  # what the sidecar does with it must not overflow either


@settings(max_examples=2000, deadline=None)
@given(ANY)
def test_parse_retry_after_never_raises_and_stays_bounded(value: str) -> None:
    _check(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("²", None),  # a superscript two is no DIGIT (RFC 5234 B.1)
        ("٣", None),  # nor is an Arabic-Indic three
        ("\uff11\uff12\uff10", None),  # nor fullwidth digits
        ("120", 120.0),
        ("000120", 120.0),
        ("86400", MAX_RETRY_AFTER),
        ("86401", MAX_RETRY_AFTER),
        ("999999999999999999999", MAX_RETRY_AFTER),  # 21 digits: overflowed timedelta
        ("9" * 5000, MAX_RETRY_AFTER),  # past int()'s 4,300-digit limit
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),  # a date far ahead
        ("Sat, 28 Nov 99999 12:00:30 GMT", None),  # past datetime's range
    ],
)
def test_odd_retry_after_values(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected
