"""What the Manager's results look like to the commands, `run` and `--json` (found uncovered by
mutation testing, docs/MUTATION.md): the outcome's JSON both ways, its one human line, the
revocation reasons, the certificates directory.

Since issue 10 these live in sidecar/outcome.py, sidecar/errors.py and sidecar/wiring.py."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from sidecar.control import outcome_from_json, outcome_to_json, outcomes_answer
from sidecar.deploy_result import DeployResult, VerifyOutcome
from sidecar.errors import OperationError, error_text
from sidecar.manager import MIN_ORDER_TIMEOUT, ORDER_TIMEOUT, order_timeout
from sidecar.outcome import Action, Outcome, revocation_code
from sidecar.wiring import _make_certs_dir

WHEN = datetime(2026, 12, 6, 10, 30, 5, tzinfo=UTC)
LATER = datetime(2026, 12, 6, 11, 0, 0, tzinfo=UTC)


def test_an_outcome_survives_its_json_answer() -> None:
    outcome = Outcome(
        "a.example",
        Action.ISSUED,
        ok=True,
        serial="0A1B",
        not_after=WHEN,
        reason="missing",
        error="deploy failed: x",
        next_retry_at=LATER,
        deploy=DeployResult.crashed("a.example", "0A1B", "bug"),
        error_kind="other",
    )
    data = outcome_to_json(outcome)
    assert data == {
        "name": "a.example",
        "action": "issued",
        "ok": True,
        "serial": "0A1B",
        "not_after": "2026-12-06T10:30:05+00:00",
        "reason": "missing",
        "error": "deploy failed: x",
        "next_retry_at": "2026-12-06T11:00:00+00:00",
        "deploy": {"ok": False, "error": "bug"},
    }
    # error_kind is a /metrics label: not part of the answer. What a one-shot rebuilds is what
    # it prints (`Outcome.line`), which shows no deploy report.
    back = outcome_from_json(data)
    assert back == replace(outcome, error_kind=None, deploy=None)
    assert back.line() == outcome.line()
    bare = Outcome("b.example", Action.UNCHANGED, ok=True)
    bare_json = outcome_to_json(bare)
    assert bare_json["not_after"] is None and bare_json["next_retry_at"] is None
    assert bare_json["deploy"] == {}
    assert outcome_from_json(bare_json) == bare


def test_an_answer_of_outcomes_fails_when_any_step_did() -> None:
    done = Outcome("a", Action.UNCHANGED, ok=True)
    failed = Outcome.failed("b", "boom")
    assert outcomes_answer([done]) == {
        "ok": True,
        "exit_code": 0,
        "results": [outcome_to_json(done)],
        "error": None,
    }
    answer = outcomes_answer([done, failed])
    assert (answer["ok"], answer["exit_code"], answer["error"]) == (False, 1, None)
    assert [r["name"] for r in answer["results"]] == ["a", "b"]
    assert (outcomes_answer([])["ok"], outcomes_answer([])["exit_code"]) == (True, 0)


def test_an_outcome_from_odd_json_takes_what_it_can() -> None:
    odd = outcome_from_json(
        {"ok": 1, "not_after": 5, "next_retry_at": None, "deploy": None, "serial": "AA"}
    )
    # An action this sidecar does not know (a newer one's) reads as a failure.
    assert odd == Outcome("?", Action.FAILED, ok=True, serial="AA", deploy=None)
    assert outcome_from_json({}).ok is False


def test_outcome_lines_for_each_action() -> None:
    assert (
        Outcome("a", Action.ISSUED, True, serial="0A", not_after=WHEN, reason="missing").line()
        == "a: issued serial 0A, valid until 2026-12-06 10:30:05Z (missing)"
    )
    assert (
        Outcome("a", Action.ISSUED, True, serial="0A", error="deploy failed: x").line()
        == "a: issued serial 0A; warning: deploy failed: x"
    )
    assert (
        Outcome("a", Action.UNCHANGED, True, serial="0A", not_after=WHEN).line()
        == "a: unchanged serial 0A, valid until 2026-12-06 10:30:05Z"
    )
    assert Outcome("a", Action.UNCHANGED, True).line() == "a: unchanged"
    assert (
        Outcome("a", Action.FAILED, False, error="boom", next_retry_at=LATER, serial="0A").line()
        == "a: failed: boom (next retry 2026-12-06 11:00:00Z)"
    )
    assert Outcome("a", Action.FAILED, False, error="boom").line() == "a: failed: boom"
    assert Outcome("a", Action.REMOVED, True).line() == "a: removed"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (None, None),
        ("keyCompromise", 1),
        ("key-compromise", 1),
        ("KEY_COMPROMISE", 1),
        ("superseded", 4),
        ("0", 0),
        ("5", 5),
    ],
)
def test_revocation_reasons_by_name_or_code(text: str | None, code: int | None) -> None:
    assert revocation_code(text) == code


@pytest.mark.parametrize("text", ["2", "9", "caCompromise", "", "x1"])
def test_unknown_revocation_reasons_list_the_choices(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        revocation_code(text)
    assert str(caught.value) == (
        f"unknown revocation reason {text!r} (one of: unspecified, keyCompromise,"
        " affiliationChanged, superseded, cessationOfOperation)"
    )


def test_error_text_is_one_line_or_the_type() -> None:
    assert error_text(ValueError("first\n  second")) == "first second"
    assert error_text(KeyError()) == "KeyError"


def test_deploy_log_fields_are_the_short_ones() -> None:
    result = DeployResult(
        "a",
        "0A",
        "runtime-api",
        False,
        fallback="command",
        verification=VerifyOutcome("127.0.0.1:443", True),
        errors=("e", "f"),
    )
    fields = result.log_fields()
    assert fields == {
        "mode": "runtime-api",
        "fallback": "command",
        "verified": True,
        "error": "e; f",
    }
    assert DeployResult.crashed("a", "0A", "bug").log_fields() == {"error": "bug"}


def test_the_certs_directory_is_made_world_traversable(tmp_path: Path) -> None:
    target = tmp_path / "a" / "certs"
    umask = os.umask(0)  # the mode asked for, not the one the test runner's umask leaves
    try:
        _make_certs_dir(target)
    finally:
        os.umask(umask)
    assert target.is_dir() and (target.stat().st_mode & 0o777) == 0o755
    _make_certs_dir(target)  # already there: fine
    (tmp_path / "file").write_text("")
    with pytest.raises(OperationError) as caught:
        _make_certs_dir(tmp_path / "file" / "certs")
    assert str(caught.value) == f"cannot create {tmp_path}/file/certs: Not a directory"


def test_an_order_for_a_certificate_expiring_now_gets_the_full_time() -> None:
    # At notAfter nothing is left to protect: the order may take its full time, as for an
    # expired certificate, not the minimum a nearly expired one gets.
    view = SimpleNamespace(is_real=True, facts=SimpleNamespace(not_after=WHEN))
    assert order_timeout(view, WHEN) == ORDER_TIMEOUT  # type: ignore[arg-type]
    one_second_left = order_timeout(view, WHEN - timedelta(seconds=1))  # type: ignore[arg-type]
    assert one_second_left == MIN_ORDER_TIMEOUT


def test_a_deploy_result_says_in_one_line_what_happened() -> None:
    # `run` logs this line and puts it in `Outcome.error` ("deploy failed: ..."); a crashed
    # deployer's is only what it raised.
    crashed = DeployResult.crashed("a", "0A", "bug")
    assert (crashed.ok, crashed.mode, crashed.error, crashed.summary()) == (
        False,
        None,
        "bug",
        "bug",
    )
    # It still names the certificate and the serial it was deploying.
    assert (crashed.name, crashed.serial) == ("a", "0A")
    assert DeployResult("a", "0A", None, False).summary() == "failed"
    failed = DeployResult("a", "0A", "signal", False, errors=("x", "y"))
    assert (failed.error, failed.summary()) == ("x; y", "signal: x; y")
    assert DeployResult("a", "0A", "none", False).summary() == "none: failed"
    done = DeployResult("a", "0A", "runtime-api", True, fallback="signal")
    assert done.error is None
    assert done.summary() == "runtime-api: serial 0A deployed (after falling back to signal)"
