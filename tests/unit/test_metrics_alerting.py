"""The metrics the alerting rules need (docker/prometheus/): HAProxy reachability per socket,
deploy counters that exist before the first deploy, and why a certificate's renewal fails.

The exposition is parsed back strictly (every line a HELP, a TYPE or a sample of a declared
family); a real scrape checked by ``promtool check metrics`` is in
tests/integration/test_prometheus_rules.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca_client import errors
from sidecar.cli import build_parser
from sidecar.config import load_settings
from sidecar.errors import ERROR_KINDS, ErrorKind, error_kind
from sidecar.metrics import CertStatus, Metrics, render, status_from_facts
from sidecar.outcome import Action, DeploySummary, Outcome
from sidecar.service import Service

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
_SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], str]:
    """Every sample by (name, labels); fails on a line that is not HELP, TYPE or a sample of a
    family declared above it."""
    declared: set[str] = set()
    found: dict[tuple[str, frozenset[tuple[str, str]]], str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        match = _SAMPLE.match(line)
        assert match, line
        name, label_text, value = match.groups()
        assert name in declared, line
        labels = frozenset(_LABEL.findall(label_text or ""))
        assert (name, labels) not in found, f"duplicate sample: {line}"
        found[(name, labels)] = value
    return found


def of(text: str, name: str) -> dict[frozenset[tuple[str, str]], str]:
    """The samples of one family, by their labels."""
    return {labels: value for (n, labels), value in samples(text).items() if n == name}


def failing(name: str = "a.example", **changes: object) -> CertStatus:
    values: dict[str, object] = {
        "last_error": 'order https://ca/acme/order/1 became invalid: connection: "x" refused',
        "consecutive_failures": 3,
        "last_failure": NOW - timedelta(minutes=2),
        "last_error_kind": "challenge_failed",
    }
    values.update(changes)
    return status_from_facts(name, [name], None, NOW, **values)  # type: ignore[arg-type]


# --- 1. HAProxy reachability per socket ----------------------------------------------------------


def test_haproxy_up_has_one_sample_per_socket_as_last_recorded() -> None:
    metrics = Metrics()
    assert of(render([], metrics, NOW), "cert_sidecar_haproxy_up") == {}  # nothing asked yet
    metrics.set_haproxy_up("/run/haproxy/admin.sock", True)
    metrics.set_haproxy_up("tcp:haproxy:9999", True)
    metrics.set_haproxy_up("tcp:haproxy:9999", False)
    text = render([], metrics, NOW)
    assert of(text, "cert_sidecar_haproxy_up") == {
        frozenset({("socket", "/run/haproxy/admin.sock")}): "1",
        frozenset({("socket", "tcp:haproxy:9999")}): "0",
    }
    assert "# TYPE cert_sidecar_haproxy_up gauge" in text
    metrics.set_haproxy_up("tcp:haproxy:9999", True)
    again = of(render([], metrics, NOW), "cert_sidecar_haproxy_up")
    assert again[frozenset({("socket", "tcp:haproxy:9999")})] == "1"


def test_a_socket_label_is_escaped() -> None:
    metrics = Metrics()
    metrics.set_haproxy_up('/run/odd "dir"\\x.sock', False)
    assert 'cert_sidecar_haproxy_up{socket="/run/odd \\"dir\\"\\\\x.sock"} 0' in render(
        [], metrics, NOW
    )


def test_an_empty_socket_name_is_refused() -> None:
    with pytest.raises(ValueError, match="socket"):
        Metrics().set_haproxy_up("", True)


# --- 2. deploys_total exists before the first deploy -------------------------------------------


def test_deploys_total_starts_at_zero_for_both_results_in_the_configured_mode() -> None:
    metrics = Metrics(deploy_mode="runtime-api")
    assert of(render([], metrics, NOW), "cert_sidecar_haproxy_deploys_total") == {
        frozenset({("result", "success"), ("mode", "runtime-api")}): "0",
        frozenset({("result", "failure"), ("mode", "runtime-api")}): "0",
    }
    metrics.record_deploy("failure", "runtime-api")
    metrics.record_deploy("success", "command")  # another mode (a fallback) still counts
    assert of(render([], metrics, NOW), "cert_sidecar_haproxy_deploys_total") == {
        frozenset({("result", "success"), ("mode", "runtime-api")}): "0",
        frozenset({("result", "failure"), ("mode", "runtime-api")}): "1",
        frozenset({("result", "success"), ("mode", "command")}): "1",
    }


def test_without_a_deploy_mode_no_deploy_series_is_made_up() -> None:
    text = render([], Metrics(), NOW)
    assert of(text, "cert_sidecar_haproxy_deploys_total") == {}
    assert "# TYPE cert_sidecar_haproxy_deploys_total counter" in text


# --- 3. why a renewal fails --------------------------------------------------------------------


def test_last_failure_time_and_error_kind_per_certificate() -> None:
    statuses = [
        failing("a.example"),
        # Failing since before a restart: the time is known, the kind is not.
        failing("b.example", last_error_kind=None),
        # Recovered: the last failure stays visible, the error is gone.
        failing("c.example", last_error=None, consecutive_failures=0, last_error_kind=None),
        status_from_facts("d.example", ["d.example"], None, NOW),  # never failed
    ]
    text = render(statuses, Metrics(), NOW)
    stamp = str((NOW - timedelta(minutes=2)).timestamp())
    assert of(text, "cert_sidecar_certificate_last_failure_timestamp_seconds") == {
        frozenset({("name", "a.example")}): stamp,
        frozenset({("name", "b.example")}): stamp,
        frozenset({("name", "c.example")}): stamp,
    }
    assert of(text, "cert_sidecar_certificate_last_error_info") == {
        frozenset({("name", "a.example"), ("kind", "challenge_failed")}): "1",
    }
    assert "# TYPE cert_sidecar_certificate_last_error_info gauge" in text
    assert "# TYPE cert_sidecar_certificate_last_failure_timestamp_seconds gauge" in text


def test_the_error_text_never_reaches_the_exposition() -> None:
    text = render([failing()], Metrics(), NOW)
    assert "became invalid" not in text and "refused" not in text and "https://ca" not in text


def test_existing_names_and_labels_are_unchanged() -> None:
    """The contract: metric names must not change. The new families only add."""
    metrics = Metrics(deploy_mode="runtime-api")
    metrics.record_renewal("failure")
    metrics.set_ca_reachable(False, "down")
    metrics.set_clock_skew(0.5)
    metrics.set_haproxy_up("/s", True)
    status = failing(served_matches=True, deployed_serial="0A", next_renewal=NOW)
    families = {name for name, _ in samples(render([status], metrics, NOW))}
    assert families >= {
        "cert_sidecar_build_info",
        "cert_sidecar_ready",
        "cert_sidecar_certificates",
        "cert_sidecar_certificate_next_renewal_timestamp_seconds",
        "cert_sidecar_certificate_consecutive_failures",
        "cert_sidecar_certificate_is_placeholder",
        "cert_sidecar_certificate_ready",
        "cert_sidecar_certificate_state",
        "cert_sidecar_certificate_deployed_info",
        "cert_sidecar_certificate_served_matches",
        "cert_sidecar_renewals_total",
        "cert_sidecar_haproxy_deploys_total",
        "cert_sidecar_ca_reachable",
        "cert_sidecar_clock_skew_seconds",
        "cert_sidecar_certificate_last_failure_timestamp_seconds",
        "cert_sidecar_certificate_last_error_info",
        "cert_sidecar_haproxy_up",
    }
    assert of(render([], metrics, NOW), "cert_sidecar_renewals_total") == {
        frozenset({("result", "success")}): "0",
        frozenset({("result", "failure")}): "1",
    }


# --- the error kinds ---------------------------------------------------------------------------


def _problem(cls: type[errors.AcmeProblem], **options: object) -> errors.AcmeProblem:
    short = cls.acme_type or "serverInternal"
    return cls(errors.ACME_ERROR_PREFIX + short, f"{short} detail", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (errors.CAUnreachable("connection refused: https://ca/acme/directory"), "ca_unreachable"),
        (errors.TLSVerificationFailed("certificate verify failed"), "ca_unreachable"),
        (errors.NotACME("an HTML page"), "ca_unreachable"),
        (errors.MalformedResponse("no nonce"), "ca_unreachable"),
        (errors.ACMETimeout("no answer from the CA within 10.0s"), "ca_unreachable"),
        (_problem(errors.RateLimited, retry_after=60), "rate_limited"),
        (errors.AcmeProblem.from_json({"type": "about:blank"}, status=429), "rate_limited"),
        (_problem(errors.IncorrectResponse), "challenge_failed"),
        (_problem(errors.ConnectionProblem), "challenge_failed"),
        (_problem(errors.DNSProblem), "challenge_failed"),
        (_problem(errors.TLSProblem), "challenge_failed"),
        (_problem(errors.Unauthorized), "challenge_failed"),
        (errors.OrderFailed("http-01 validation of a failed", problem=None), "challenge_failed"),
        (
            errors.OrderFailed("failed", problem=_problem(errors.ConnectionProblem)),
            "challenge_failed",
        ),
        (errors.OrderFailed("failed", problem=_problem(errors.RateLimited)), "rate_limited"),
        (errors.OrderFailed("failed", problem=_problem(errors.RejectedIdentifier)), "rejected"),
        (errors.OrderFailed("invalid", problem=_problem(errors.BadCSR)), "rejected"),
        (errors.NoSolver("a.example", ["dns-01"], ["http-01"]), "challenge_failed"),
        (_problem(errors.RejectedIdentifier), "rejected"),
        (_problem(errors.UnsupportedIdentifier), "rejected"),
        (_problem(errors.CAAProblem), "rejected"),
        (_problem(errors.BadCSR), "rejected"),
        (_problem(errors.ExternalAccountRequired), "rejected"),
        (_problem(errors.UserActionRequired), "rejected"),
        (errors.AcmeProblem("urn:example:policy", "not today", status=403), "rejected"),
        (
            _problem(
                errors.CompoundProblem,
                subproblems=[_problem(errors.RejectedIdentifier), _problem(errors.CAAProblem)],
            ),
            "rejected",
        ),
        (
            _problem(
                errors.CompoundProblem,
                subproblems=[_problem(errors.DNSProblem), _problem(errors.ConnectionProblem)],
            ),
            "challenge_failed",
        ),
        (
            _problem(
                errors.CompoundProblem,
                subproblems=[_problem(errors.DNSProblem), _problem(errors.RejectedIdentifier)],
            ),
            "rejected",
        ),
        (_problem(errors.ServerInternal), "other"),
        (errors.CertificateMismatch("names differ"), "other"),
        (OSError(28, "No space left on device"), "other"),
        (ValueError("a bug"), "other"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_error_kind(error: BaseException, kind: ErrorKind) -> None:
    assert error_kind(error) == kind
    assert kind in ERROR_KINDS


def test_the_kinds_are_a_small_fixed_set() -> None:
    assert ERROR_KINDS == (
        "ca_unreachable",
        "challenge_failed",
        "rate_limited",
        "rejected",
        "other",
    )


# --- what the service records from a deploy ------------------------------------------------------


def _service(tmp_path: Path) -> Service:
    flags = [
        "check-config",
        "--directory",
        "https://ca.example/acme/directory",
        "--ca-bundle",
        str(tmp_path / "root.pem"),
        "--certs-dir",
        str(tmp_path / "certs"),
        "--state-dir",
        str(tmp_path / "state"),
        "--domain",
        "a.example",
        # Written bare: HAProxy's address is "unix:/run/haproxy/admin.sock".
        "--haproxy-socket",
        "/run/haproxy/admin.sock",
        "--haproxy-socket",
        "tcp:127.0.0.1:9999",
    ]
    return Service(load_settings(build_parser().parse_args(flags), {}))


def _deploy_outcome(*sockets: dict[str, object]) -> Outcome:
    deploy = {"ok": all(s["ok"] for s in sockets), "mode": "runtime-api", "sockets": list(sockets)}
    summary = DeploySummary.from_json(deploy)
    return Outcome("a.example", Action.ISSUED, ok=True, serial="0A", deploy=summary)


def test_a_deploy_records_each_socket_under_its_configured_name(tmp_path: Path) -> None:
    service = _service(tmp_path)
    text = render([], service.metrics, NOW)
    assert of(text, "cert_sidecar_haproxy_up") == {}
    assert set(of(text, "cert_sidecar_haproxy_deploys_total").values()) == {"0"}

    service.loop.record(
        _deploy_outcome(
            {"address": "unix:/run/haproxy/admin.sock", "ok": False, "reachable": False},
            {"address": "tcp:127.0.0.1:9999", "ok": True, "reachable": True},
        )
    )
    text = render([], service.metrics, NOW)
    assert of(text, "cert_sidecar_haproxy_up") == {
        frozenset({("socket", "/run/haproxy/admin.sock")}): "0",
        frozenset({("socket", "tcp:127.0.0.1:9999")}): "1",
    }
    assert of(text, "cert_sidecar_haproxy_deploys_total") == {
        frozenset({("result", "success"), ("mode", "runtime-api")}): "0",
        frozenset({("result", "failure"), ("mode", "runtime-api")}): "1",
    }

    # HAProxy answered but the deploy failed (another serial): reachability is not changed by
    # it; the next check of HAProxy says.
    service.loop.record(
        _deploy_outcome(
            {"address": "unix:/run/haproxy/admin.sock", "ok": True, "reachable": True},
            {"address": "tcp:127.0.0.1:9999", "ok": False, "reachable": True},
        )
    )
    assert of(render([], service.metrics, NOW), "cert_sidecar_haproxy_up") == {
        frozenset({("socket", "/run/haproxy/admin.sock")}): "1",
        frozenset({("socket", "tcp:127.0.0.1:9999")}): "1",
    }


def test_without_haproxy_or_reload_no_deploy_counter_is_made_up(tmp_path: Path) -> None:
    flags = [
        "check-config",
        "--directory",
        "https://ca.example/acme/directory",
        "--ca-bundle",
        str(tmp_path / "root.pem"),
        "--certs-dir",
        str(tmp_path / "certs"),
        "--state-dir",
        str(tmp_path / "state"),
        "--domain",
        "a.example",
    ]
    service = Service(load_settings(build_parser().parse_args(flags), {}))
    assert of(render([], service.metrics, NOW), "cert_sidecar_haproxy_deploys_total") == {}
