"""Retry-After parsing (RFC 9110 §10.2.3), the poll schedule, deadline clamping."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from ca_client.retry import (
    MAX_POLL_RETRY_AFTER,
    clamp_to_deadline,
    fits_before_deadline,
    next_poll_delay,
    parse_retry_after,
    poll_delays,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("Sat, 28 Nov 2026 12:00:30 GMT", 30.0),
        ("Sat, 28 Nov 2026 11:00:00 GMT", 0.0),  # in the past: go now
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),  # delay-seconds is an integer
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_http_date_round_trip() -> None:
    later = datetime.fromtimestamp(NOW, UTC) + timedelta(minutes=5)
    assert parse_retry_after(format_datetime(later, usegmt=True), NOW) == 300.0


def test_poll_schedule_starts_short_doubles_and_caps() -> None:
    delays = list(itertools.islice(poll_delays(), 12))
    assert delays[:4] == [0.02, 0.04, 0.08, 0.16]
    assert max(delays) == 3.0
    assert delays[-1] == 3.0
    assert all(b >= a for a, b in itertools.pairwise(delays))


def test_retry_after_wins_over_schedule_but_is_bounded() -> None:
    assert next_poll_delay(0.02, None) == 0.02
    assert next_poll_delay(0.02, 2.0) == 2.0
    assert next_poll_delay(0.02, 0.0) == 0.0
    assert next_poll_delay(0.02, 86400.0) == MAX_POLL_RETRY_AFTER


def test_clamp_and_fit() -> None:
    assert clamp_to_deadline(5.0, now=100.0, deadline=102.0) == 2.0
    assert clamp_to_deadline(1.0, now=100.0, deadline=102.0) == 1.0
    assert clamp_to_deadline(1.0, now=103.0, deadline=102.0) == 0.0
    assert fits_before_deadline(1.0, now=100.0, deadline=102.0)
    assert not fits_before_deadline(2.0, now=100.0, deadline=102.0)
