"""What `cert-sidecar healthcheck` prints when not ready: one line that a container engine keeps
whole (podman keeps 500 characters of a probe's output, Docker 4096 bytes), cut in the CA's
words when too long, never in the hint that says what to fix (issue 16, item 7)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from sidecar import errors, health
from sidecar.health import HealthServer, HealthSnapshot, cmd_healthcheck
from sidecar.metrics import CertStatus, Metrics

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LIMIT = 500  # podman's HealthMaxLogSize default: what `podman inspect` shows of a probe
(HINT,) = [hint for fragment, hint in errors._HINTS if "validation target" in fragment]
CA_WORDS = "The server could not connect to validation target demo.openchami.cluster: "


def _placeholder(name: str, last_error: str) -> CertStatus:
    return CertStatus(
        name=name,
        domains=(name,),
        state="placeholder",
        is_placeholder=True,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(hours=1),
        serial="02",
        last_error=last_error,
    )


def _settings(port: int) -> SimpleNamespace:
    # What `healthcheck` is given: the [service] part, or locate_running_sidecar's answer.
    return SimpleNamespace(health_listen=("127.0.0.1", port))


async def _healthcheck_output(statuses: list[CertStatus]) -> str:
    def snapshot() -> HealthSnapshot:
        return HealthSnapshot(statuses=statuses, metrics=Metrics())

    async with HealthServer("127.0.0.1", 0, snapshot, clock=lambda: NOW) as server:
        out = io.StringIO()
        assert await cmd_healthcheck(_settings(server.port), stderr=out) == 1  # type: ignore[arg-type]
    return out.getvalue()


async def test_a_long_ca_error_is_cut_in_its_middle_and_the_hint_kept() -> None:
    # What the manager stores for a failed http-01 validation whose CA says a lot.
    last_error = errors.with_hint(CA_WORDS + "dial tcp 10.0.0.7:80: " * 200)
    assert last_error.endswith(f"(hint: {HINT})")
    output = await _healthcheck_output([_placeholder("demo.openchami.cluster", last_error)])
    assert output.count("\n") == 1 and output.endswith("\n")
    assert len(output) <= LIMIT
    assert output.startswith(
        "healthcheck: not ready: demo.openchami.cluster: placeholder certificate, not yet "
        "issued by the CA; last error: The server could not connect to validation target"
    )
    assert output.endswith(f"dial tcp 10.0.0.7:80: (hint: {HINT})\n")
    assert "..." in output  # the cut is marked


async def test_many_failing_certificates_show_the_first_with_its_hint_and_a_count() -> None:
    last_error = errors.with_hint(CA_WORDS + "x" * 1000)
    statuses = [_placeholder(f"c{index}.example", last_error) for index in range(30)]
    output = await _healthcheck_output(statuses)
    assert len(output) <= LIMIT and output.count("\n") == 1
    assert output.startswith("healthcheck: not ready: c0.example: placeholder certificate")
    assert f"(hint: {HINT}); and 29 more\n" in output


def test_short_reasons_are_shown_whole() -> None:
    reasons = ["a.example: no certificate", "b.example: HAProxy serves serial 01, not 02"]
    body = json.dumps({"reasons": reasons}).encode()
    assert health._not_ready_reason(503, body) == "not ready: " + "; ".join(reasons)


def test_reasons_that_fill_the_line_are_counted_not_cut() -> None:
    reasons = [f"c{index}.example: " + "y" * 150 for index in range(5)]
    text = health._not_ready_reason(503, json.dumps({"reasons": reasons}).encode())
    assert text == "not ready: " + "; ".join(reasons[:2]) + "; and 3 more"


@pytest.mark.parametrize(
    "reasons",
    [
        ["x" * 100_000],
        ["line one\nline two\r\n" * 5000, "\x1b[2J" * 1000],
        ["r" * 10] * 20_000,
        "not a list",
    ],
)
def test_a_hostile_body_still_gives_one_bounded_line(reasons: object) -> None:
    text = "healthcheck: " + health._not_ready_reason(
        503, json.dumps({"reasons": reasons}).encode()
    )
    assert len(text) + 1 <= LIMIT  # with its newline
    assert "\n" not in text and "\r" not in text


def test_every_hint_fits_in_the_end_a_cut_keeps() -> None:
    # The hints the sidecar adds (errors.with_hint; the issuer's contact hint, with a long
    # address) end every reason they are in: a cut keeps the end, so each must fit in it.
    hints = [f" (hint: {hint})" for _, hint in errors._HINTS]
    email = "certificate-operations-team@" + "a" * 40 + ".example.org"
    hints.append(f"; the CA refused the contact mailto:{email}: check --email (CERT_SIDECAR_EMAIL)")
    for hint in hints:
        assert len(hint) <= health._KEPT_END, hint
