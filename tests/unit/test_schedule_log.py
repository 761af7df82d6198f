"""`run` logs cert_renewal_scheduled when a certificate's renewal time moves, not on every check
(issue 10: a day-long certificate checked every 5 minutes logged 288 schedules a day)."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import trustme
from structlog.testing import capture_logs

from sidecar.cli import build_parser
from sidecar.config import load_settings
from sidecar.inventory import CertView, utc_now
from sidecar.outcome import Action, Outcome
from sidecar.service import Service


def _service(tmp_path: Path) -> Service:
    """A service whose one certificate (a.example) is deployed and not due."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "root.pem"))
    now = utc_now()
    leaf = ca.issue_cert(
        "a.example", not_before=now - timedelta(days=1), not_after=now + timedelta(days=30)
    )
    certs = tmp_path / "certs"
    certs.mkdir()
    combined = (
        b"".join(blob.bytes() for blob in leaf.cert_chain_pems) + leaf.private_key_pem.bytes()
    )
    (certs / "a.example.pem").write_bytes(combined)
    flags = [
        "run",
        "--ca-bundle",
        str(tmp_path / "root.pem"),
        "--certs-dir",
        str(certs),
        "--state-dir",
        str(tmp_path / "state"),
        "--domain",
        "a.example",
    ]
    return Service(load_settings(build_parser().parse_args(flags), {}))


def _seen(outcome: Outcome, view: CertView) -> Outcome:
    """``outcome`` as the manager hands it to the loop: with the certificate's renewal time and
    lifetime (issue 18, item 4: the loop reads nothing back)."""
    assert view.facts is not None
    lifetime = view.facts.not_after - view.facts.not_before
    return replace(outcome, next_renewal=view.next_renewal, lifetime=lifetime)


def _scheduled(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "cert_renewal_scheduled"]


def test_a_schedule_is_logged_once_until_it_moves(tmp_path: Path) -> None:
    service = _service(tmp_path)
    spec = service.settings.certificates[0]
    view = service.manager.inspect(spec)
    unchanged = _seen(Outcome(spec.name, Action.UNCHANGED, ok=True), view)
    assert view.due is None and view.next_renewal is not None
    with capture_logs() as logs:
        for _ in range(5):
            next_check = service.loop.next_check(spec, unchanged)
    [line] = _scheduled(logs)
    # The renewal time is what is logged; the next look (much sooner) rides along.
    assert line["at"] == view.next_renewal.isoformat()
    assert line["reason"] == "renewal"
    assert next_check < view.next_renewal

    # The same time for another reason is another schedule.
    same_time = _seen(
        Outcome(spec.name, Action.FAILED, ok=False, next_retry_at=view.next_renewal), view
    )
    with capture_logs() as logs:
        service.loop.next_check(spec, same_time)
    assert [(e["reason"], e["at"]) for e in _scheduled(logs)] == [
        ("retry", view.next_renewal.isoformat())
    ]

    retry_at = utc_now() + timedelta(minutes=2)
    failed = Outcome(spec.name, Action.FAILED, ok=False, error="CA down", next_retry_at=retry_at)
    with capture_logs() as logs:
        service.loop.next_check(spec, failed)  # another reason: logged
        service.loop.next_check(spec, failed)  # the same retry: not again
        moved = Outcome(
            spec.name, Action.FAILED, ok=False, next_retry_at=retry_at + timedelta(milliseconds=500)
        )
        service.loop.next_check(spec, moved)  # within a second: the same schedule
        later = Outcome(
            spec.name, Action.FAILED, ok=False, next_retry_at=retry_at + timedelta(seconds=5)
        )
        service.loop.next_check(spec, later)  # moved: logged
        service.loop.next_check(spec, unchanged)  # back to the renewal time: logged
    assert [(e["reason"], e["at"]) for e in _scheduled(logs)] == [
        ("retry", retry_at.isoformat()),
        ("retry", (retry_at + timedelta(seconds=5)).isoformat()),
        ("renewal", view.next_renewal.isoformat()),
    ]
