"""Renewal time, due reasons, check cadence and retry backoff, driven by an injected clock."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sidecar import policy
from sidecar.pem import CertFacts
from sidecar.policy import DueReason

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

# Lifetimes as issued (notBefore..notAfter). step-ca backdates by a minute, so a 60-second
# certificate spans 2 minutes and a 5-minute one 6.
LIFETIMES = {
    "60s": timedelta(minutes=2),
    "5m": timedelta(minutes=6),
    "24h": timedelta(hours=24, minutes=1),
    "90d": timedelta(days=90),
}


def facts(
    lifetime: timedelta,
    *,
    serial: int = 0x1234,
    names: tuple[str, ...] = ("a.example", "b.example"),
    key_type: str | None = "ec-p256",
    placeholder: bool = False,
) -> CertFacts:
    return CertFacts(
        serial_hex=format(serial, "X"),
        serial=serial,
        not_before=T0,
        not_after=T0 + lifetime,
        names=names,
        issuer="CN=Intermediate",
        is_placeholder=placeholder,
        key_type=key_type,
    )


# -- renewal time --------------------------------------------------------------------------------


def test_jitter_fraction_is_deterministic_and_in_range():
    values = [policy.jitter_fraction(policy.serial_seed(serial)) for serial in range(1, 500)]
    assert values == [policy.jitter_fraction(policy.serial_seed(s)) for s in range(1, 500)]
    assert all(0 <= v < 1 for v in values)
    # Spread: certificates issued together do not renew together.
    assert len({round(v, 6) for v in values}) > 490
    assert min(values) < 0.1 and max(values) > 0.9


@pytest.mark.parametrize("label", LIFETIMES)
@pytest.mark.parametrize("renew_at", [0.5, 0.66, 0.8])
def test_renewal_time_is_renew_at_minus_at_most_a_twentieth(label, renew_at):
    lifetime = LIFETIMES[label]
    times = [
        policy.renewal_time(T0, T0 + lifetime, renew_at, jitter_seed=policy.serial_seed(s))
        for s in range(1, 200)
    ]
    latest = T0 + lifetime * renew_at
    earliest = latest - lifetime / 20
    assert all(earliest <= t <= latest for t in times)
    # The jitter really spreads over most of its range.
    assert max(times) - min(times) > lifetime / 20 * 0.8


@pytest.mark.parametrize(
    ("label", "expected_earliest", "expected_latest"),
    [
        # 0.66 of 2 minutes is 79.2 s; the jitter takes off up to 6 s.
        ("60s", timedelta(seconds=73.2), timedelta(seconds=79.2)),
        # 0.66 of 6 minutes is 237.6 s; jitter up to 18 s.
        ("5m", timedelta(seconds=219.6), timedelta(seconds=237.6)),
        # 0.66 of 24 h 1 min is 15 h 50 min 39.6 s; jitter up to 72 min 3 s.
        (
            "24h",
            timedelta(hours=14, minutes=38, seconds=36.6),
            timedelta(hours=15, minutes=50, seconds=39.6),
        ),
    ],
)
def test_renewal_time_known_values(label, expected_earliest, expected_latest):
    lifetime = LIFETIMES[label]
    for serial in (1, 0xDEADBEEF, 2**159 - 1):
        when = policy.renewal_time(T0, T0 + lifetime, jitter_seed=policy.serial_seed(serial))
        assert T0 + expected_earliest <= when <= T0 + expected_latest


def test_renewal_time_is_the_same_for_every_caller():
    cert = facts(LIFETIMES["24h"], serial=987654321)
    direct = policy.renewal_time(
        cert.not_before, cert.not_after, 0.66, jitter_seed=policy.serial_seed(cert.serial)
    )
    assert policy.facts_renewal_time(cert, 0.66) == direct
    assert policy.facts_renewal_time(replace(cert, serial=987654322), 0.66) != direct


def test_renewal_time_follows_the_ari_window():
    lifetime = LIFETIMES["24h"]
    window = (T0 + timedelta(hours=2), T0 + timedelta(hours=3))
    times = {
        policy.renewal_time(T0, T0 + lifetime, jitter_seed=policy.serial_seed(s), ari_window=window)
        for s in range(1, 100)
    }
    assert all(window[0] <= t <= window[1] for t in times)
    assert len(times) > 90
    # A window in the past means "renew now" (RFC 9773): the time is in the past too.
    past = (T0 - timedelta(hours=2), T0 - timedelta(hours=1))
    when = policy.renewal_time(T0, T0 + lifetime, jitter_seed=b"x", ari_window=past)
    assert when < T0


def test_a_backwards_ari_window_is_ignored():
    lifetime = LIFETIMES["24h"]
    backwards = (T0 + timedelta(hours=3), T0 + timedelta(hours=2))
    assert policy.renewal_time(
        T0, T0 + lifetime, jitter_seed=b"x", ari_window=backwards
    ) == policy.renewal_time(T0, T0 + lifetime, jitter_seed=b"x")


def test_a_late_renew_at_still_renews_before_the_urgent_twentieth():
    lifetime = LIFETIMES["5m"]
    when = policy.renewal_time(T0, T0 + lifetime, 0.99, jitter_seed=b"\x00")
    assert when <= T0 + lifetime - lifetime / 20


# -- due reasons ---------------------------------------------------------------------------------

WANTED = ("a.example", "b.example")


def _due(
    now_offset: timedelta | None, cert: CertFacts | None, **kwargs: object
) -> DueReason | None:
    options: dict[str, object] = {"wanted_names": WANTED, "wanted_key_type": "ec-p256"}
    options.update(kwargs)
    return policy.due_reason(T0 + (now_offset or timedelta()), cert, **options)  # type: ignore[arg-type]


def _scheduled_offset(cert: CertFacts) -> timedelta:
    return policy.facts_renewal_time(cert) - T0


@pytest.mark.parametrize("label", LIFETIMES)
def test_due_reasons_table(label):
    lifetime = LIFETIMES[label]
    cert = facts(lifetime)
    scheduled = _scheduled_offset(cert)
    just_before = scheduled - timedelta(microseconds=1)
    cases: list[tuple[str, DueReason | None, timedelta, CertFacts | None, dict[str, object]]] = [
        ("fresh", None, timedelta(seconds=1), cert, {}),
        ("just before schedule", None, just_before, cert, {}),
        ("missing", DueReason.MISSING, timedelta(), None, {}),
        ("unreadable", DueReason.UNREADABLE, timedelta(), None, {"unreadable": True}),
        ("placeholder", DueReason.PLACEHOLDER, timedelta(), replace(cert, is_placeholder=True), {}),
        ("key mismatch", DueReason.KEY_MISMATCH, timedelta(), cert, {"key_matches": False}),
        (
            "name added",
            DueReason.NAMES_CHANGED,
            timedelta(),
            cert,
            {"wanted_names": (*WANTED, "c.example")},
        ),
        ("name removed", DueReason.NAMES_CHANGED, timedelta(), cert, {"wanted_names": WANTED[:1]}),
        (
            "same names, other case and order",
            None,
            timedelta(),
            cert,
            {"wanted_names": ("B.EXAMPLE", "a.example.")},
        ),
        (
            "key type",
            DueReason.KEY_TYPE_CHANGED,
            timedelta(),
            cert,
            {"wanted_key_type": "rsa-2048"},
        ),
        ("key type not configured", None, timedelta(), cert, {"wanted_key_type": None}),
        ("expired", DueReason.EXPIRED, lifetime, cert, {}),
        ("long expired", DueReason.EXPIRED, lifetime * 3, cert, {}),
        (
            "under a twentieth",
            DueReason.NEARLY_EXPIRED,
            lifetime - lifetime / 25,
            cert,
            {"renew_at": 0.99},
        ),
        ("scheduled", DueReason.SCHEDULED, scheduled, cert, {}),
        ("forced", DueReason.FORCED, timedelta(seconds=1), cert, {"force": True}),
        ("forced but expired", DueReason.EXPIRED, lifetime, cert, {"force": True}),
        (
            "ari window passed",
            DueReason.SCHEDULED,
            timedelta(seconds=2),
            cert,
            {"ari_window": (T0, T0 + timedelta(seconds=1))},
        ),
        (
            "ari window ahead",
            None,
            scheduled,
            cert,
            {"ari_window": (T0 + lifetime * 0.9, T0 + lifetime * 0.91)},
        ),
    ]
    for name, expected, offset, subject, options in cases:
        assert _due(offset, subject, **options) == expected, name


def test_ip_names_compare_canonically():
    cert = facts(LIFETIMES["24h"], names=("2001:db8::1", "a.example"))
    assert _due(timedelta(), cert, wanted_names=("2001:DB8:0::1", "a.example")) is None


def test_due_reason_values_are_what_status_prints():
    assert DueReason.NEARLY_EXPIRED == "under 1/20 of lifetime left"
    assert str(DueReason.SCHEDULED) == "scheduled time passed"


# -- check cadence -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "expected"),
    [
        (timedelta(seconds=30), timedelta(seconds=1)),
        (LIFETIMES["60s"], timedelta(seconds=1.2)),
        (LIFETIMES["5m"], timedelta(seconds=3.6)),
        (timedelta(hours=1), timedelta(seconds=36)),
        (LIFETIMES["24h"], timedelta(minutes=5)),
        (LIFETIMES["90d"], timedelta(minutes=5)),
    ],
)
def test_check_interval_derives_from_the_lifetime(lifetime, expected):
    assert policy.check_interval(lifetime) == expected


def test_check_interval_looks_many_times_before_renewal_for_short_certificates():
    lifetime = LIFETIMES["60s"]
    # Between the earliest renewal time and the urgent twentieth there are many looks.
    window = lifetime * (0.95 - 0.61)
    assert window / policy.check_interval(lifetime) > 20


# -- retry backoff -------------------------------------------------------------------------------


def _delays(
    failures: int, not_after: datetime | None, seeds: range = range(50), **kw: object
) -> list[timedelta]:
    return [
        policy.next_retry_delay(failures, T0, not_after, random.Random(seed), **kw)  # type: ignore[arg-type]
        for seed in seeds
    ]


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [
        (0, 5, 5),
        (1, 5, 5),
        (2, 5, 10),
        (3, 10, 20),
        (4, 20, 40),
        (6, 80, 160),
        (10, 1280, 2560),
        (11, 2560, 3600),
        (12, 3600, 3600),
        (1000, 3600, 3600),
    ],
)
def test_backoff_doubles_with_jitter_up_to_an_hour(failures, low, high):
    delays = _delays(failures, None)
    assert all(timedelta(seconds=low) <= d <= timedelta(seconds=high) for d in delays)
    if high - low >= 10 and high != 3600:
        assert len(set(delays)) > 40  # jittered, not in lock-step


@pytest.mark.parametrize(
    ("time_left", "failures", "cap"),
    [
        # A tenth of the time left caps the exponential growth...
        (timedelta(hours=24), 20, timedelta(hours=1)),
        (timedelta(hours=2), 20, timedelta(minutes=12)),
        (timedelta(minutes=2), 20, timedelta(seconds=12)),
        (timedelta(minutes=10), 20, timedelta(minutes=1)),
        # ...but never below 5 s, however close the expiry.
        (timedelta(seconds=20), 20, timedelta(seconds=5)),
        (timedelta(seconds=1), 3, timedelta(seconds=5)),
    ],
)
def test_backoff_never_exceeds_a_tenth_of_the_time_left(time_left, failures, cap):
    delays = _delays(failures, T0 + time_left)
    assert all(d <= cap for d in delays)
    assert max(delays) == cap
    assert all(d >= policy.MIN_RETRY_DELAY for d in delays)


def test_backoff_after_expiry_or_without_a_certificate_uses_the_hour_cap():
    for not_after in (None, T0 - timedelta(minutes=1)):
        assert _delays(30, not_after) == [timedelta(hours=1)] * 50
        assert all(d <= timedelta(seconds=10) for d in _delays(2, not_after))


def test_backoff_is_reproducible_with_the_same_rng():
    first = policy.next_retry_delay(5, T0, None, random.Random(7))
    assert first == policy.next_retry_delay(5, T0, None, random.Random(7))


@pytest.mark.parametrize(
    ("time_left", "expected"),
    [
        (None, timedelta(hours=1)),
        (timedelta(hours=48), timedelta(hours=1)),
        (timedelta(hours=5), timedelta(minutes=30)),
        (timedelta(seconds=30), timedelta(seconds=5)),
    ],
)
def test_permanent_errors_wait_the_longest_delay_allowed(time_left, expected):
    not_after = None if time_left is None else T0 + time_left
    assert _delays(1, not_after, permanent=True) == [expected] * 50


def test_retry_after_is_honoured_up_to_the_hour():
    assert _delays(1, None, retry_after=timedelta(minutes=7)) == [timedelta(minutes=7)] * 50
    assert _delays(1, None, retry_after=timedelta(hours=5)) == [timedelta(hours=1)] * 50
    # A Retry-After shorter than the backoff does not shorten it.
    assert all(
        d >= timedelta(seconds=1280) for d in _delays(10, None, retry_after=timedelta(seconds=1))
    )


@pytest.mark.parametrize(
    ("problem", "permanent"),
    [
        ("urn:ietf:params:acme:error:rejectedIdentifier", True),
        ("urn:ietf:params:acme:error:caa", True),
        ("urn:ietf:params:acme:error:badCSR", True),
        ("urn:ietf:params:acme:error:rateLimited", False),
        ("urn:ietf:params:acme:error:serverInternal", False),
        ("urn:ietf:params:acme:error:connection", False),
        ("urn:ietf:params:acme:error:badNonce", False),
        (None, False),
    ],
)
def test_permanent_problem_marker(problem, permanent):
    assert policy.is_permanent_problem(problem) is permanent
