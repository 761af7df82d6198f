"""Renewal policy edges the main policy tests leave open (found by mutation testing,
docs/MUTATION.md): exact boundaries, the jitter seed, and every option of due_reason_for_pem."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme

from ca_client.key_types import KeyType
from ca_client.models import RenewalInfo
from sidecar import pem, policy
from sidecar.config import CertificateSpec
from sidecar.inventory import Inventory
from sidecar.pem import CertFacts
from sidecar.policy import DueReason
from sidecar.storage import StateStore

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
NAMES = ("a.example", "b.example")


def facts(
    lifetime: timedelta, *, names: tuple[str, ...] = NAMES, serial: int = 0x1234
) -> CertFacts:
    return CertFacts(
        serial_hex=format(serial, "X"),
        serial=serial,
        not_before=T0,
        not_after=T0 + lifetime,
        names=names,
        issuer="CN=Intermediate",
        is_placeholder=False,
        key_type="ec-p256",
    )


class FixedRandom(random.Random):
    """An rng whose every draw is ``value``: pins the jitter to one end of its range."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# -- the jitter seed ---------------------------------------------------------------------------


def test_the_jitter_seed_is_the_serials_minimal_big_endian_bytes():
    # Every process (run, status, /metrics, an upgraded sidecar) must derive the same renewal
    # time from a certificate: the seed is a fixed function of the serial, no padding byte.
    assert policy.serial_seed(0) == b"\x00"
    assert policy.serial_seed(0x7F) == b"\x7f"
    assert policy.serial_seed(0xFF) == b"\xff"
    assert policy.serial_seed(0x0100) == b"\x01\x00"
    serial = 0x8000_0000_0000_0000_0000_0000_0000_0001  # 128 bits, top bit set
    assert policy.serial_seed(serial) == serial.to_bytes(16, "big")


def test_facts_renewal_time_uses_the_given_renew_at():
    lifetime = timedelta(days=20)
    cert = facts(lifetime)
    seed = policy.serial_seed(cert.serial)
    early = policy.facts_renewal_time(cert, 0.3)
    assert early == policy.renewal_time(cert.not_before, cert.not_after, 0.3, jitter_seed=seed)
    assert early < policy.facts_renewal_time(cert)  # the default, 0.66, is later


def test_a_zero_length_ari_window_means_renew_at_that_instant():
    start = T0 + timedelta(days=3)
    when = policy.renewal_time(
        T0, T0 + timedelta(days=20), jitter_seed=b"\x01", ari_window=(start, start)
    )
    assert when == start


# -- due reasons at their boundaries -----------------------------------------------------------


def test_exactly_a_twentieth_left_is_scheduled_not_yet_urgent():
    lifetime = timedelta(days=20)  # a twentieth is exactly one day
    cert = facts(lifetime)
    at_boundary = cert.not_after - timedelta(days=1)
    assert policy.due_reason(at_boundary, cert, wanted_names=NAMES) is DueReason.SCHEDULED
    just_after = at_boundary + timedelta(microseconds=1)
    assert policy.due_reason(just_after, cert, wanted_names=NAMES) is DueReason.NEARLY_EXPIRED


def test_names_differing_only_in_a_trailing_letter_are_different_names():
    cert = facts(timedelta(days=20), names=("hostx.example", "www"))
    now = T0 + timedelta(days=1)
    # Canonical form drops only a trailing dot and case; any other character is significant.
    same = ("HOSTX.example.", "WWW")
    assert policy.due_reason(now, cert, wanted_names=same) is None
    assert policy.due_reason(now, cert, wanted_names=("hostx.example", "wwwX")) is (
        DueReason.NAMES_CHANGED
    )


# -- Inventory.inspect passes every option on to the policy -----------------------------------
# (policy.due_reason_for_pem is gone since issue 10; the read that runs is Inventory.inspect.
# ``force`` is the manager's business now: see tests/protocol/test_manager_outcomes.py.)


def _deployed(lifetime: timedelta) -> bytes:
    leaf = trustme.CA().issue_cert(*NAMES, not_before=T0, not_after=T0 + lifetime)
    blobs = [b.bytes() for b in leaf.cert_chain_pems]
    return pem.combined_pem(blobs[0], blobs[1:], leaf.private_key_pem.bytes())


def test_inspect_honours_key_type_renew_at_and_the_ari_window(tmp_path: Path) -> None:
    lifetime = timedelta(days=20)
    data = _deployed(lifetime)
    early = T0 + timedelta(days=2)  # a tenth of the lifetime: nothing is due by default
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "a.example.pem").write_bytes(data)

    def inventory(renew_at: float = 0.66) -> Inventory:
        return Inventory(StateStore(tmp_path / "state"), certs, renew_at=renew_at)

    def spec(key_type: KeyType = KeyType.EC_P256) -> CertificateSpec:
        return CertificateSpec("a.example", NAMES, key_type, "http-01")

    assert inventory().inspect(spec(), early).due is None
    # trustme issues ECDSA P-256 keys.
    assert inventory().inspect(spec(KeyType.RSA_2048), early).due is DueReason.KEY_TYPE_CHANGED
    assert inventory(renew_at=0.1).inspect(spec(), early).due is DueReason.SCHEDULED
    with_window = inventory()
    view = with_window.inspect(spec(), early)
    assert view.facts is not None
    past_window = RenewalInfo(T0, T0 + timedelta(days=1))
    with_window.remember_renewal_info("a.example", view.facts, past_window, early)
    assert with_window.inspect(spec(), early).due is DueReason.SCHEDULED


# -- retry backoff -----------------------------------------------------------------------------


def test_backoff_jitter_spans_the_whole_upper_half_of_the_step():
    # "Equal jitter": half of the step fixed, the other half drawn. Third failure: step 20 s.
    now = T0
    low = policy.next_retry_delay(3, now, None, FixedRandom(0.0))
    middle = policy.next_retry_delay(3, now, None, FixedRandom(0.5))
    high = policy.next_retry_delay(3, now, None, FixedRandom(0.999_999))
    assert low == timedelta(seconds=10)
    assert middle == timedelta(seconds=15)
    assert timedelta(seconds=19.99) < high < timedelta(seconds=20)


def test_backoff_for_a_certificate_expiring_this_instant_uses_the_hour_cap():
    # At notAfter the certificate counts as expired (due_reason says so): no validity is left
    # to protect, so the hour cap applies, not "a tenth of zero" (5 s, every 5 s).
    not_after = T0
    delay = policy.next_retry_delay(20, T0, not_after, FixedRandom(0.5))
    assert delay == policy.MAX_RETRY_DELAY
    assert policy.due_reason(T0, facts(timedelta(0)), wanted_names=NAMES) is DueReason.EXPIRED
