"""The operators' alerting rules (docker/prometheus/) checked with the real promtool, and
against what a real `cert-sidecar run` exports.

- ``promtool check rules`` / ``check config``: the rules and the example configuration load.
- ``promtool test rules`` on tests/integration/prometheus/cert-sidecar.rules.test.yml: every
  alert fires on its input series with the expected labels and text, and stays quiet where it
  must; each mutation below (a broken threshold, ``for:``, matcher or branch) makes it fail, so
  the cases are known to be able to fail.
- A real scrape (``run`` against the real step-ca and HAProxy): ``promtool check metrics`` finds
  no problem, every metric the rules use is exported, the test cases' label names are the real
  ones, and replayed into promtool the healthy sidecar's series raise no alert.

promtool comes from Debian's ``prometheus`` package (scripts/install-deps.sh); without it these
tests fail, like the other peers' tests, rather than skip.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.cli import REPO, Sidecar, Wait, running_sidecar, stepca_run_args
from tests.peers.haproxy import HAProxyFactory, handshake
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCAFactory

RULES = REPO / "docker" / "prometheus" / "cert-sidecar.rules.yml"
CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
RULE_TESTS = Path(__file__).parent / "prometheus" / "cert-sidecar.rules.test.yml"

_METRIC_NAME = re.compile(r"\bcert_sidecar_[a-z0-9_]+")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Prometheus adds these to every scraped series; the sidecar does not export them.
_TARGET_LABELS = frozenset({"job", "instance"})
# Exported only while a renewal fails or after it failed: checked in the failing scrape.
_FAILURE_ONLY = frozenset(
    {
        "cert_sidecar_certificate_last_error_info",
        "cert_sidecar_certificate_last_failure_timestamp_seconds",
    }
)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run scripts/install-deps.sh (Debian package prometheus)",
            pytrace=False,
        )
    return path


def _run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _alert_blocks(rules_text: str) -> dict[str, str]:
    """Each alerting rule's text, by alert name (the file is ours: one rule per ``- alert:``)."""
    parts = re.split(r"^\s*- alert: ", rules_text, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def _expressions(rules_text: str) -> str:
    """The ``expr`` values only (single-line or ``|`` blocks), without comments."""
    exprs: list[str] = []
    lines = rules_text.splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(2)
        if rest not in ("|", "|-", ">", ">-"):
            exprs.append(rest)
            continue
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            exprs.append(following.split("#", 1)[0])
    return "\n".join(exprs)


def _unescape(raw: str) -> str:
    """A label value as written in exposition text (``\\\\``, ``\\"``, ``\\n``), unescaped."""
    return re.sub(r"\\(.)", lambda match: "\n" if match.group(1) == "n" else match.group(1), raw)


def _parse_series(text: str) -> list[tuple[str, dict[str, str], str]]:
    """(name, labels, value) of each sample in exposition text."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, label_text = head.partition("{")
        labels = {key: _unescape(raw) for key, raw in _LABEL.findall(label_text)} if brace else {}
        samples.append((name, labels, value))
    return samples


def _check_metrics_clean(text: str) -> None:
    """``promtool check metrics``: the exposition parses and lints with no output at all."""
    checked = _run_promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == checked.stderr.strip() == "", checked.stdout + checked.stderr


def _check_test_series_labels(text: str, names: Callable[[str], bool]) -> int:
    """The rule tests' input series (those whose metric ``names`` selects) use the label names
    of this real scrape; returns how many were checked."""
    real_labels: dict[str, set[frozenset[str]]] = {}
    for name, labels, _ in _parse_series(text):
        real_labels.setdefault(name, set()).add(frozenset(labels))
    test_series = re.findall(
        r"series: '(cert_sidecar_[a-z0-9_]+)\{([^}]*)\}'", RULE_TESTS.read_text()
    )
    checked = 0
    for name, label_text in test_series:
        if not names(name):
            continue
        label_names = frozenset(dict(_LABEL.findall(label_text))) - _TARGET_LABELS
        assert label_names in real_labels.get(name, set()), (
            f"{name}{{{label_text}}} vs {real_labels.get(name)}"
        )
        checked += 1
    return checked


def _series_text(name: str, labels: dict[str, str]) -> str:
    """A promtool input series: ``name{label="value",...}`` with PromQL string escapes."""

    def quoted(value: str) -> str:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'

    inner = ",".join(f"{key}={quoted(value)}" for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


# --- the rules themselves ----------------------------------------------------------------------


def test_rules_and_example_config_load() -> None:
    rules_text = RULES.read_text()
    alerts = _alert_blocks(rules_text)
    checked = _run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in checked.stdout
    config = _run_promtool("check", "config", str(CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_for_severity_text_and_a_runbook() -> None:
    alerts = _alert_blocks(RULES.read_text())
    assert len(alerts) >= 8
    for name, block in alerts.items():
        assert re.search(r"^\s+for: \d+m$", block, re.MULTILINE), f"{name}: no for:"
        assert re.search(r"^\s+severity: (critical|warning)$", block, re.MULTILINE), name
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"^\s+{annotation}: ", block, re.MULTILINE), f"{name}: {annotation}"
        expressions = _expressions(block)
        if "cert_sidecar_certificate_" in expressions:
            # A certificate alert must say which certificate, a HAProxy alert which socket.
            assert "$labels.name" in block, name
        if "cert_sidecar_haproxy_up" in expressions:
            assert "$labels.socket" in block, name


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has at least one case where it fires and one where it must not."""
    text = RULE_TESTS.read_text()
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", text)
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    alerts = set(_alert_blocks(RULES.read_text()))
    assert alerts - firing == set()
    assert alerts - quiet == set()


def test_promtool_rule_unit_tests_pass() -> None:
    result = _run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# (alert, text in that alert's rule, replacement): each breaks the rule in a way the unit tests
# must notice, reported as a failure of that alert.
MUTATIONS = [
    ("CertSidecarDown", 'up{job="cert-sidecar"} == 0', 'up{job="cert-sidecar"} == 1'),
    ("CertSidecarDown", "for: 5m", "for: 1m"),
    ("CertSidecarDown", "severity: critical", "severity: warning"),
    ("CertSidecarAbsent", "for: 15m", "for: 5m"),
    (
        "CertSidecarCertificateNotIssued",
        'max without (state) (cert_sidecar_certificate_state{state=~"missing|placeholder"})',
        'cert_sidecar_certificate_state{state=~"missing|placeholder"}',
    ),
    ("CertSidecarCertificateNotIssued", "missing|placeholder", "placeholder"),
    ("CertSidecarCertificateRenewalOverdue", "< 0.25 *", "< 0.4 *"),
    (
        "CertSidecarCertificateRenewalOverdue",
        "unless cert_sidecar_certificate_is_placeholder == 1",
        "",
    ),
    ("CertSidecarCertificateExpiresSoon", "< 0.1 *", "< 0.2 *"),
    ("CertSidecarCertificateExpiresSoon", "< 7 * 86400", "< 8 * 86400"),
    ("CertSidecarCertificateExpiresSoon", "0 < (", "-86400 < ("),
    (
        "CertSidecarCertificateExpiresSoon",
        "unless cert_sidecar_certificate_is_placeholder == 1",
        "",
    ),
    ("CertSidecarCertificateExpired", "unless cert_sidecar_certificate_is_placeholder == 1", ""),
    ("CertSidecarCertificateExpired", "for: 1m", "for: 5m"),
    ("CertSidecarRenewalFailing", "for: 30m", "for: 10m"),
    ("CertSidecarRenewalFailing", "> 0", "> 1"),
    ("CertSidecarRenewalFailing", '| label "kind"', '| label "name"'),
    ("CertSidecarRenewalFailing", "{{ else }}unknown{{ end }}", "{{ else }}{{ end }}"),
    (
        "CertSidecarHAProxyNotServingCurrent",
        "cert_sidecar_certificate_served_matches == 0\n            or\n",
        "",
    ),
    (
        "CertSidecarHAProxyNotServingCurrent",
        "\n            or\n              (cert_sidecar_certificate_info unless "
        "cert_sidecar_certificate_deployed_info)",
        "",
    ),
    ("CertSidecarHAProxyNotServingCurrent", "max without (serial) (", "max without () ("),
    (
        "CertSidecarHAProxyNotServingCurrent",
        "cert_sidecar_certificate_deployed_info{instance=",
        "cert_sidecar_certificate_info{instance=",
    ),
    ("CertSidecarHAProxyUnreachable", "haproxy_up == 0", "haproxy_up == 1"),
    ("CertSidecarHAProxyUnreachable", "for: 5m", "for: 3m"),
    ("CertSidecarHAProxyUnreachable", "for: 5m", "for: 7m"),
    ("CertSidecarHAProxyUnreachable", "{{ $labels.socket }}.", "{{ $labels.instance }}."),
]


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    MUTATIONS,
    ids=[f"{alert}-{index}" for index, (alert, _, _) in enumerate(MUTATIONS)],
)
def test_a_broken_rule_fails_the_unit_tests(alert: str, old: str, new: str, tmp_path: Path) -> None:
    rules_text = RULES.read_text()
    block = _alert_blocks(rules_text)[alert]
    assert block.count(old) == 1, f"mutation text not found once in {alert}: {old!r}"
    mutated_rules = rules_text.replace(block, block.replace(old, new))
    assert mutated_rules != rules_text
    (tmp_path / "rules.yml").write_text(mutated_rules)
    tests_text = RULE_TESTS.read_text().replace(
        "../../../docker/prometheus/cert-sidecar.rules.yml", str(tmp_path / "rules.yml")
    )
    (tmp_path / "tests.yml").write_text(tests_text)
    result = _run_promtool("test", "rules", str(tmp_path / "tests.yml"))
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"promtool test rules passed with a broken {alert}"
    assert f"alertname: {alert}," in output, output[-3000:]


# --- a real scrape ---------------------------------------------------------------------------


def _scrape_running_sidecar(
    step_ca_factory: StepCAFactory,
    haproxy_factory: HAProxyFactory,
    loopback: LoopbackLease,
    tmp_path: Path,
) -> tuple[str, float, str]:
    """/metrics of `run` in its steady state, the scrape time, and the socket as configured.

    The first `run` issues the certificate and deploys it; the second starts with it in place,
    so what it reports comes from its check of HAProxy (``show ssl cert``), as it does between
    renewals, rather than from the deploy it just did.
    """
    ca = step_ca_factory()  # the CA's default: 24 h certificates
    certs = tmp_path / "certs"
    certs.mkdir()
    haproxy = haproxy_factory(certs)
    args = stepca_run_args(
        ca, tmp_path, loopback, "--haproxy-socket", f"unix:{haproxy.socket_path}"
    )
    root = ca.root_pem.encode()
    served_line = f'cert_sidecar_certificate_served_matches{{name="{loopback.name}"}} 1'

    def served_and_checked(sidecar: Sidecar) -> bool:
        try:
            handshake("127.0.0.1", haproxy.port, loopback.name, root)
        except (OSError, ssl.SSLError, ValueError):
            return False
        status, body = sidecar.get("/metrics")
        return status == 200 and served_line in body

    text, scraped_at = "", 0.0
    for attempt in ("issue", "check"):
        served = Wait(f"HAProxy serving it ({attempt})", served_and_checked, timeout=90)
        with running_sidecar(args, tmp_path / f"run-{attempt}.log", until=served) as sidecar:
            status, text = sidecar.get("/metrics")
            scraped_at = time.time()
            assert status == 200
            events = sidecar.event_names()
        assert sidecar.exit_code == 0
        if attempt == "issue":
            assert "cert_issued" in events
        else:
            # Nothing issued or redeployed: HAProxy's own answer matched the file.
            assert not {"cert_issued", "haproxy_serves_other", "haproxy_updated"} & set(events)
    return text, scraped_at, f"unix:{haproxy.socket_path}"


@pytest.mark.stepca
@pytest.mark.haproxy
def test_real_scrape_passes_promtool_and_has_what_the_rules_use(
    step_ca_factory: StepCAFactory,
    haproxy_factory: HAProxyFactory,
    loopback: LoopbackLease,
    tmp_path: Path,
) -> None:
    _promtool()  # fail before starting peers when it is missing
    text, scraped_at, socket = _scrape_running_sidecar(
        step_ca_factory, haproxy_factory, loopback, tmp_path
    )
    (tmp_path / "metrics.prom").write_text(text)

    # 1. The exposition passes promtool's parser and linter (no output at all).
    _check_metrics_clean(text)

    # 2. Every metric the rules name is exported; those in expressions have samples.
    samples = _parse_series(text)
    with_samples = {name for name, _, _ in samples}
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    rules_text = RULES.read_text()
    in_expressions = set(_METRIC_NAME.findall(_expressions(rules_text)))
    anywhere = set(_METRIC_NAME.findall(rules_text))
    assert len(in_expressions) >= 7
    assert in_expressions - with_samples == set()
    assert anywhere - declared == set()
    assert {"cert_sidecar_haproxy_up", "cert_sidecar_certificate_last_error_info"} <= anywhere
    # The socket as it was configured, answering; deploy counters from 0 for both results,
    # though this run deployed nothing; the failure families declared, with no sample.
    assert f'cert_sidecar_haproxy_up{{socket="{socket}"}} 1' in text.splitlines()
    for result in ("success", "failure"):
        line = f'cert_sidecar_haproxy_deploys_total{{result="{result}",mode="runtime-api"}} 0'
        assert line in text.splitlines()
    assert declared >= _FAILURE_ONLY
    assert not _FAILURE_ONLY & with_samples

    # 3. The unit tests' input series use the real label names.
    assert _check_test_series_labels(text, lambda name: name not in _FAILURE_ONLY) >= 10

    # 4. Replayed into promtool for an hour (timestamps kept relative to the scrape), the
    # healthy sidecar raises no alert.
    input_series = [
        {
            "series": _series_text("up", {"job": "cert-sidecar", "instance": "sc:9102"}),
            "values": "1x70",
        }
    ]
    for name, labels, value in samples:
        number = float(value)
        if name.endswith("_timestamp_seconds"):
            number -= scraped_at
        input_series.append(
            {
                "series": _series_text(
                    name, {**labels, "job": "cert-sidecar", "instance": "sc:9102"}
                ),
                "values": f"{number!r}x70",
            }
        )
    alerts = sorted(_alert_blocks(rules_text))
    replay = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "a real, healthy cert-sidecar",
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": alert, "exp_alerts": []}
                    for eval_time in ("5m", "65m")
                    for alert in alerts
                ],
            }
        ],
    }
    # JSON is YAML: no YAML library needed.
    (tmp_path / "replay.yml").write_text(json.dumps(replay, indent=1))
    replayed = _run_promtool("test", "rules", str(tmp_path / "replay.yml"))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr


@pytest.mark.stepca
@pytest.mark.haproxy
def test_real_scrape_of_a_failing_renewal_and_a_stopped_haproxy(
    step_ca_factory: StepCAFactory,
    haproxy_factory: HAProxyFactory,
    loopback: LoopbackLease,
    tmp_path: Path,
) -> None:
    """What the new alerts read, from a real `run`: the kind of a real CA's refusal, the time
    of the failure, and each HAProxy socket turning 0 when its HAProxy stops between renewals
    (one of two: the other still answers; then both)."""
    _promtool()
    # 10-minute certificates: HAProxy is checked every 6 s (policy.check_interval) and nothing
    # is renewed during the test.
    ca = step_ca_factory(default_duration="10m")
    certs = tmp_path / "certs"
    certs.mkdir()
    haproxy = haproxy_factory(certs)
    socket = f"unix:{haproxy.socket_path}"
    other = haproxy_factory(certs)
    other_socket = str(other.socket_path)  # a bare path: the label keeps it as written
    args = stepca_run_args(
        ca,
        tmp_path,
        loopback,
        # Resolves nowhere: step-ca cannot validate its challenge.
        "--domain",
        "nowhere.invalid",
        "--haproxy-socket",
        socket,
        "--haproxy-socket",
        other_socket,
    )
    up = f'cert_sidecar_haproxy_up{{socket="{socket}"}}'
    other_up = f'cert_sidecar_haproxy_up{{socket="{other_socket}"}}'
    failing = (
        'cert_sidecar_certificate_last_error_info{name="nowhere.invalid",kind="challenge_failed"} 1'
    )
    served = f'cert_sidecar_certificate_served_matches{{name="{loopback.name}"}}'
    started = time.time()

    def metrics_have(sidecar: Sidecar, *lines: str) -> bool:
        status, body = sidecar.get("/metrics")
        return status == 200 and set(lines) <= set(body.splitlines())

    one_served_one_failing = Wait(
        "one certificate served, the other failing",
        lambda sidecar: metrics_have(sidecar, f"{up} 1", f"{other_up} 1", failing, f"{served} 1"),
        timeout=120,
    )
    with running_sidecar(args, tmp_path / "run.log", until=one_served_one_failing) as sidecar:
        status, text = sidecar.get("/metrics")
        assert status == 200
        _check_metrics_clean(text)
        lines = text.splitlines()
        stamps = [
            float(value)
            for name, labels, value in _parse_series(text)
            if name == "cert_sidecar_certificate_last_failure_timestamp_seconds"
            and labels == {"name": "nowhere.invalid"}
        ]
        assert len(stamps) == 1 and started <= stamps[0] <= time.time(), stamps
        assert (
            f'cert_sidecar_certificate_last_failure_timestamp_seconds{{name="{loopback.name}"}}'
            not in text
        )
        assert 'cert_sidecar_haproxy_deploys_total{result="failure",mode="runtime-api"} 0' in lines
        # The CA's words stay out of the labels: only the kind is exported.
        errors = [
            str(event["error"])
            for event in sidecar.events()
            if event.get("event") == "cert_renewal_failed"
            and event.get("cert") == "nowhere.invalid"
        ]
        assert errors and all(error not in text for error in errors)
        assert _check_test_series_labels(text, lambda name: name in _FAILURE_ONLY) >= 1

        # One HAProxy stops between renewals: its socket turns 0 at the next check, while the
        # other still answers and serves the certificate.
        other.stop()
        sidecar.wait_for(
            lambda: metrics_have(sidecar, f"{other_up} 0", f"{up} 1", f"{served} 1"),
            "haproxy_up 0 for the stopped one only",
            timeout=90,
        )
        # Both stopped: served_matches becomes unknown (no sample), which is why the alert
        # reads haproxy_up.
        haproxy.stop()
        sidecar.wait_for(lambda: metrics_have(sidecar, f"{up} 0"), "haproxy_up 0", timeout=90)
        status, text = sidecar.get("/metrics")
        assert status == 200
        _check_metrics_clean(text)
        assert served not in text
        assert "haproxy_check_failed" in sidecar.event_names()
    assert sidecar.exit_code == 0
