"""Readiness rules and the Prometheus exposition (parsed back by a small strict parser here)."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from sidecar import policy
from sidecar.metrics import (
    CONTENT_TYPE,
    URGENT_FRACTION,
    CertStatus,
    Metrics,
    certificate_state,
    escape_label_value,
    readiness,
    render,
    status_from_facts,
    status_to_json,
)
from sidecar.pem import describe_cert
from sidecar.placeholder import make_placeholder

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def valid(name: str = "a.example", **changes: object) -> CertStatus:
    """A certificate issued 10 h ago for 24 h: fine, renewal scheduled in 6 h."""
    status = CertStatus(
        name=name,
        domains=(name,),
        state="valid",
        not_before=NOW - 10 * HOUR,
        not_after=NOW + 14 * HOUR,
        serial="0A1B",
        next_renewal=NOW + 6 * HOUR,
        last_success=NOW - 10 * HOUR,
        deployed_serial="0A1B",
    )
    return replace(status, **changes)  # type: ignore[arg-type]


# --- readiness ---------------------------------------------------------------------------------


def test_policy_and_metrics_agree_on_the_urgent_fraction() -> None:
    assert policy.URGENT_FRACTION == URGENT_FRACTION


@pytest.mark.parametrize(
    ("status", "ready", "reason_part"),
    [
        (valid(), True, None),
        # CA errors alone never make the sidecar unready (contract: --health-listen).
        (
            valid(last_error="CA unreachable: connection refused", consecutive_failures=7),
            True,
            None,
        ),
        (valid(served_matches=True), True, None),
        (valid(served_matches=None, deployed_serial=None), True, None),
        (
            CertStatus(name="a.example", domains=("a.example",), state="missing"),
            False,
            "no certificate",
        ),
        (valid(state="placeholder", is_placeholder=True), False, "placeholder"),
        # Judged by the time, not the stored state: a snapshot taken before expiry.
        (valid(not_after=NOW - timedelta(seconds=1)), False, "expired"),
        (valid(not_after=NOW), False, "expired"),
        (valid(state="expired", not_after=NOW - HOUR), False, "expired"),
        # 24 h lifetime: 1/20 is 72 minutes.
        (
            valid(not_before=NOW - 23 * HOUR, not_after=NOW + 71 * timedelta(minutes=1)),
            False,
            "under 1/20",
        ),
        (valid(not_before=NOW - 22 * HOUR, not_after=NOW + 2 * HOUR), True, None),
        (valid(served_matches=False, deployed_serial="FFFF"), False, "HAProxy serves serial FFFF"),
        (valid(served_matches=False, deployed_serial=None), False, "HAProxy does not serve"),
    ],
)
def test_readiness_rules(status: CertStatus, ready: bool, reason_part: str | None) -> None:
    got_ready, reasons = readiness([status], NOW)
    assert got_ready is ready
    if reason_part is None:
        assert reasons == []
    else:
        assert len(reasons) >= 1
        assert reasons[0].startswith("a.example: ")
        assert reason_part in reasons[0]


def test_readiness_reports_every_blocking_certificate() -> None:
    statuses = [
        valid("good.example"),
        valid("ph.example", state="placeholder", is_placeholder=True),
        valid("old.example", not_after=NOW - HOUR, served_matches=False, deployed_serial="01"),
    ]
    ready, reasons = readiness(statuses, NOW)
    assert not ready
    assert [reason.split(":")[0] for reason in reasons] == [
        "ph.example",
        "old.example",
        "old.example",
    ]


def test_no_certificates_is_ready() -> None:
    assert readiness([], NOW) == (True, [])


def test_certificate_state() -> None:
    assert certificate_state(None, False, NOW) == "missing"
    assert certificate_state(NOW + HOUR, True, NOW) == "placeholder"
    assert certificate_state(NOW, False, NOW) == "expired"
    assert certificate_state(NOW + HOUR, False, NOW) == "valid"


def test_status_from_real_certificates() -> None:
    cert_pem, _ = make_placeholder("a.example", ["a.example"], now=NOW)
    facts = describe_cert(x509.load_pem_x509_certificate(cert_pem))
    status = status_from_facts("a.example", ["a.example"], facts, NOW, consecutive_failures=2)
    assert status.state == "placeholder"
    assert status.is_placeholder
    assert status.serial == facts.serial_hex
    assert status.not_after == facts.not_after
    assert status.consecutive_failures == 2
    assert not readiness([status], NOW)[0]

    missing = status_from_facts("b.example", ["b.example"], None, NOW, last_error="boom")
    assert missing.state == "missing"
    assert missing.last_error == "boom"


def test_status_json_is_plain_data() -> None:
    data = status_to_json(valid(last_error="CA down"), NOW)
    assert data["ready"] is True
    assert data["reasons"] == []
    assert data["last_error"] == "CA down"
    assert data["not_after"] == (NOW + 14 * HOUR).isoformat()
    assert data["domains"] == ["a.example"]


# --- exposition format -------------------------------------------------------------------------

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Sample = tuple[str, dict[str, str], float]


def _parse_labels(text: str) -> tuple[dict[str, str], str]:
    """Parse ``{a="x",b="y"}`` at the start of ``text``; return labels and the rest."""
    assert text.startswith("{")
    labels: dict[str, str] = {}
    position = 1
    while text[position] != "}":
        match = _LABEL_NAME.match(text, position)
        assert match, f"bad label name in {text!r}"
        name = match.group()
        position = match.end()
        assert text[position : position + 2] == '="', text
        position += 2
        value: list[str] = []
        while text[position] != '"':
            char = text[position]
            if char == "\\":
                escaped = text[position + 1]
                value.append({"\\": "\\", '"': '"', "n": "\n"}[escaped])
                position += 2
            else:
                assert char != "\n"
                value.append(char)
                position += 1
        position += 1
        assert name not in labels, f"duplicate label {name}"
        labels[name] = "".join(value)
        if text[position] == ",":
            position += 1
    return labels, text[position + 1 :]


def parse_exposition(text: str) -> tuple[dict[str, str], dict[str, str], list[Sample]]:
    """A strict reader of format 0.0.4: returns HELP texts, TYPEs and samples."""
    assert text.endswith("\n")
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: list[Sample] = []
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert name not in helps
            helps[name] = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert kind in {"gauge", "counter"}
            assert name in helps and name not in types
            types[name] = kind
            continue
        assert not line.startswith("#") and line.strip() == line and line
        match = _METRIC_NAME.match(line)
        assert match
        name = match.group()
        rest = line[match.end() :]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            labels, rest = _parse_labels(rest)
        assert rest.startswith(" ")
        value_text = rest[1:]
        assert " " not in value_text  # no timestamps
        value = float(value_text.replace("+Inf", "inf").replace("-Inf", "-inf"))
        assert name in types, f"sample {name} before its TYPE"
        samples.append((name, labels, value))
    return helps, types, samples


def _value(samples: list[Sample], metric: str, /, **labels: str) -> float:
    found = [value for sample, got, value in samples if sample == metric and got == labels]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def test_render_parses_back_with_every_family() -> None:
    metrics = Metrics()
    metrics.record_renewal("success")
    metrics.record_renewal("success")
    metrics.record_renewal("failure")
    metrics.record_deploy("success", "runtime-api")
    metrics.record_deploy("failure", "runtime-api")
    metrics.record_deploy("success", "command")
    metrics.set_ca_reachable(False, "connection refused")
    metrics.set_clock_skew(-1.25)
    statuses = [
        valid("a.example", consecutive_failures=3, served_matches=True),
        valid(
            "b.example",
            state="placeholder",
            is_placeholder=True,
            serial="FF",
            deployed_serial=None,
            last_success=None,
        ),
        CertStatus(name="c.example", domains=("c.example",), state="missing"),
    ]
    helps, types, samples = parse_exposition(render(statuses, metrics, NOW))

    assert all(name.startswith("cert_sidecar_") for name in types)
    assert set(helps) == set(types)
    assert all(helps.values())
    assert types["cert_sidecar_renewals_total"] == "counter"
    assert types["cert_sidecar_haproxy_deploys_total"] == "counter"
    assert types["cert_sidecar_certificate_not_after_timestamp_seconds"] == "gauge"

    a = (NOW + 14 * HOUR).timestamp()
    assert (
        _value(samples, "cert_sidecar_certificate_not_after_timestamp_seconds", name="a.example")
        == a
    )
    assert (
        _value(samples, "cert_sidecar_certificate_next_renewal_timestamp_seconds", name="a.example")
        == (NOW + 6 * HOUR).timestamp()
    )
    assert (
        _value(samples, "cert_sidecar_certificate_last_success_timestamp_seconds", name="a.example")
        == (NOW - 10 * HOUR).timestamp()
    )
    assert _value(samples, "cert_sidecar_certificate_consecutive_failures", name="a.example") == 3
    assert _value(samples, "cert_sidecar_certificate_is_placeholder", name="a.example") == 0
    assert _value(samples, "cert_sidecar_certificate_is_placeholder", name="b.example") == 1
    assert (
        _value(samples, "cert_sidecar_certificate_deployed_info", name="a.example", serial="0A1B")
        == 1
    )
    assert _value(samples, "cert_sidecar_certificate_info", name="b.example", serial="FF") == 1
    assert _value(samples, "cert_sidecar_certificate_ready", name="a.example") == 1
    assert _value(samples, "cert_sidecar_certificate_ready", name="b.example") == 0
    assert _value(samples, "cert_sidecar_certificate_state", name="c.example", state="missing") == 1
    assert _value(samples, "cert_sidecar_certificate_state", name="c.example", state="valid") == 0
    assert _value(samples, "cert_sidecar_certificate_served_matches", name="a.example") == 1
    assert _value(samples, "cert_sidecar_ready") == 0
    assert _value(samples, "cert_sidecar_certificates") == 3
    assert _value(samples, "cert_sidecar_renewals_total", result="success") == 2
    assert _value(samples, "cert_sidecar_renewals_total", result="failure") == 1
    assert (
        _value(samples, "cert_sidecar_haproxy_deploys_total", result="success", mode="runtime-api")
        == 1
    )
    assert (
        _value(samples, "cert_sidecar_haproxy_deploys_total", result="failure", mode="runtime-api")
        == 1
    )
    assert (
        _value(samples, "cert_sidecar_haproxy_deploys_total", result="success", mode="command") == 1
    )
    assert _value(samples, "cert_sidecar_ca_reachable") == 0
    assert _value(samples, "cert_sidecar_clock_skew_seconds") == -1.25
    build = [labels for name, labels, _ in samples if name == "cert_sidecar_build_info"]
    assert build and build[0]["version"]

    # Unknown values are left out, not invented.
    names_without_expiry = {
        labels["name"]
        for name, labels, _ in samples
        if name == "cert_sidecar_certificate_not_after_timestamp_seconds"
    }
    assert names_without_expiry == {"a.example", "b.example"}
    assert not [
        s
        for s in samples
        if s[0] == "cert_sidecar_certificate_deployed_info" and s[1]["name"] != "a.example"
    ]


def test_fresh_metrics_show_zero_counters_and_no_unknown_gauges() -> None:
    _, types, samples = parse_exposition(render([], Metrics(), NOW))
    assert _value(samples, "cert_sidecar_renewals_total", result="success") == 0
    assert _value(samples, "cert_sidecar_renewals_total", result="failure") == 0
    assert _value(samples, "cert_sidecar_ready") == 1
    assert "cert_sidecar_ca_reachable" in types  # described, though there is no sample yet
    assert not [
        s
        for s in samples
        if s[0] in {"cert_sidecar_ca_reachable", "cert_sidecar_clock_skew_seconds"}
    ]


def test_label_values_are_escaped_and_read_back() -> None:
    awkward = 'we"ird\\name\nx'
    assert escape_label_value(awkward) == 'we\\"ird\\\\name\\nx'
    metrics = Metrics()
    metrics.record_deploy("failure", awkward)
    text = render([valid(serial=awkward)], metrics, NOW)
    assert "\nx" not in text.replace("\\nx", "")  # no raw newline inside a sample line
    _, _, samples = parse_exposition(text)
    assert (
        _value(samples, "cert_sidecar_haproxy_deploys_total", result="failure", mode=awkward) == 1
    )
    assert _value(samples, "cert_sidecar_certificate_info", name="a.example", serial=awkward) == 1


def test_special_float_values() -> None:
    metrics = Metrics()
    metrics.set_clock_skew(math.inf)
    _, _, samples = parse_exposition(render([], metrics, NOW))
    assert _value(samples, "cert_sidecar_clock_skew_seconds") == math.inf
    metrics.set_clock_skew(math.nan)
    _, _, samples = parse_exposition(render([], metrics, NOW))
    assert math.isnan(_value(samples, "cert_sidecar_clock_skew_seconds"))


def test_metrics_records_and_refuses_bad_values() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="success"):
        metrics.record_renewal("maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        metrics.record_deploy("", "none")
    metrics.set_ca_reachable(False, "refused")
    assert (metrics.ca_reachable, metrics.ca_error) == (False, "refused")
    metrics.set_ca_reachable(True, "ignored when reachable")
    assert (metrics.ca_reachable, metrics.ca_error) == (True, None)


def test_content_type_is_format_0_0_4() -> None:
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
