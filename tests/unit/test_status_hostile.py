"""`status` shows the whole last error, and nothing in it can drive the terminal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sidecar.status import render_table

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _record(name: str, error: str | None) -> dict[str, object]:
    return {
        "name": name,
        "names": [name],
        "state": "valid",
        "not_after": (NOW + timedelta(days=1)).isoformat(),
        "next_renewal": (NOW + timedelta(hours=8)).isoformat(),
        "deployed_serial": "0A1B",
        "last_error": error,
    }


def test_last_error_is_shown_whole() -> None:
    error = (
        "order https://step-ca:9000/acme/acme/order/abc failed: urn:ietf:params:acme:error:"
        "connection: could not connect to validation target a.example:80: connection refused"
    )
    table = render_table([_record("a.example", error), _record("b.example", None)], NOW)
    header, first, second = table.splitlines()
    assert header.split()[-2:] == ["LAST", "ERROR"]
    assert first.endswith(error)
    assert "0A1B" in first and second.endswith("-")


def test_control_characters_in_an_error_do_not_reach_the_terminal() -> None:
    table = render_table([_record("a.example", "bad\x1b[2J\x07 thing\nsecond line")], NOW)
    assert "\x1b" not in table and "\x07" not in table
    assert table.splitlines()[1].endswith("bad?[2J? thing second line")
