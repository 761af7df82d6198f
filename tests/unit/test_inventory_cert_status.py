"""`inventory.cert_status`: the one status `status`, `/readyz` and `/metrics` render, field by
field (found unchecked by mutation testing after issue 10 moved it out of the manager,
docs/MUTATION.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme
from cryptography import x509

from ca_client.key_types import KeyType
from sidecar import pem, storage
from sidecar.config import CertificateSpec
from sidecar.inventory import CertView, Inventory, Served, cert_status
from sidecar.policy import DueReason

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SPEC = CertificateSpec("a.example", ("a.example", "b.example"), KeyType.EC_P256, "http-01")


def _facts() -> pem.CertFacts:
    leaf = trustme.CA().issue_cert(*SPEC.domains, not_before=T0, not_after=T0 + timedelta(days=9))
    return pem.describe_cert(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))


def _view(
    facts: pem.CertFacts | None,
    meta: storage.CertMeta,
    *,
    unreadable: str | None = None,
    due: DueReason | None = None,
) -> CertView:
    return CertView(SPEC, Path("/c/a.example.pem"), facts, unreadable, True, meta, due, T0)


def test_a_failing_certificate_reports_every_field() -> None:
    facts = _facts()
    meta = storage.CertMeta(
        failures=2,
        last_error="boom",
        last_attempt_at=T0 - timedelta(hours=1),
        last_success_at=T0 - timedelta(days=1),
        next_retry_at=T0 + timedelta(minutes=5),
    )
    now = T0 + timedelta(days=1)
    status = cert_status(
        _view(facts, meta, due=DueReason.SCHEDULED),
        now,
        deployed_serial="AB",
        served_matches=False,
        last_failure=(T0 - timedelta(minutes=1), "challenge_failed"),
    )
    assert (status.name, status.domains) == ("a.example", ("a.example", "b.example"))
    assert (status.serial, status.not_after, status.state) == (
        facts.serial_hex,
        facts.not_after,
        "valid",
    )
    assert status.next_renewal == T0
    assert (status.last_error, status.consecutive_failures) == ("boom", 2)
    assert status.last_success == T0 - timedelta(days=1)
    assert (status.deployed_serial, status.served_matches) == ("AB", False)
    # This process saw the failure: its own time and kind win over the stored attempt time.
    assert status.last_failure == T0 - timedelta(minutes=1)
    assert status.last_error_kind == "challenge_failed"
    assert (status.unreadable, status.due) == (False, str(DueReason.SCHEDULED))
    assert status.next_retry_at == T0 + timedelta(minutes=5)


def test_a_failure_from_before_the_process_has_its_time_but_no_kind() -> None:
    meta = storage.CertMeta(failures=1, last_error="x", last_attempt_at=T0)
    status = cert_status(_view(_facts(), meta), T0, deployed_serial=None)
    assert (status.last_failure, status.last_error_kind) == (T0, None)
    assert status.served_matches is None and status.due is None


def test_a_kind_without_a_stored_failure_is_not_reported() -> None:
    # The failure was followed by a success: the stored count is 0 again.
    meta = storage.CertMeta(failures=0, last_attempt_at=T0)
    status = cert_status(
        _view(_facts(), meta), T0, deployed_serial=None, last_failure=(T0, "other")
    )
    assert (status.last_failure, status.last_error_kind) == (T0, None)
    assert cert_status(_view(_facts(), meta), T0, deployed_serial=None).last_failure is None


def test_an_unreadable_file_reports_why_as_the_error() -> None:
    status = cert_status(
        _view(None, storage.CertMeta(), unreadable="bad pem", due=DueReason.UNREADABLE),
        T0,
        deployed_serial=None,
    )
    assert (status.state, status.unreadable, status.last_error) == ("missing", True, "bad pem")
    assert status.due == str(DueReason.UNREADABLE)
    stored = storage.CertMeta(failures=1, last_error="stored")
    status = cert_status(_view(None, stored, unreadable="bad pem"), T0, deployed_serial=None)
    assert status.last_error == "stored"


def test_a_look_that_finds_no_serial_keeps_the_last_one_seen(tmp_path: Path) -> None:
    inventory = Inventory(storage.StateStore(tmp_path / "state"), tmp_path, renew_at=0.66)
    assert inventory.served("a.example") == Served(None, None)
    inventory.record_served("a.example", True, "AB")
    inventory.record_served("a.example", False)  # HAProxy answered, with no serial
    assert inventory.served("a.example") == Served(False, "AB")
    inventory.record_served("a.example", True, "CD")
    assert inventory.served("a.example") == Served(True, "CD")
    inventory.record_served("b.example", None)
    assert inventory.served("b.example") == Served(None, None)
    assert inventory.served("a.example") == Served(True, "CD")
