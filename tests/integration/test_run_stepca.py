"""`cert-sidecar run` against the real step-ca 0.19 and a real HAProxy 2.6.

step-ca issues 60-second certificates here (backdated one minute, so a 2-minute span), which
the sidecar renews about 15-20 s after issuance: several rotations fit in a couple of minutes.
"""

from __future__ import annotations

import json
import signal
import ssl
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from sidecar import pem
from tests.integration.cli import (
    base_args,
    first_certificate,
    logged,
    readyz_ok,
    real_serial,
    run_cli,
    running_sidecar,
    stepca_run_args,
)
from tests.peers.haproxy import handshake
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA, StepCAFactory

pytestmark = [pytest.mark.stepca, pytest.mark.haproxy]


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    temp.rename(path)


def _pem_facts(path: Path) -> pem.CertFacts | None:
    try:
        return pem.describe_cert(pem.parse_combined(path.read_bytes()).leaf)
    except (OSError, pem.PemError):
        return None


def _metric(text: str, metric: str, /, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(metric):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


class Handshaker(threading.Thread):
    """TLS handshakes through HAProxy in a loop, verifying against the CA root only."""

    def __init__(self, port: int, sni: str, root_pem: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.sni, self.root_pem = port, sni, root_pem
        self.stop_event = threading.Event()
        self.count = 0
        self.failures: list[str] = []
        self.serials: list[int] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                leaf = handshake("127.0.0.1", self.port, self.sni, self.root_pem)
            except (OSError, ssl.SSLError, ValueError) as error:
                self.failures.append(f"{type(error).__name__}: {error}")
            else:
                self.count += 1
                if not self.serials or self.serials[-1] != leaf.serial_number:
                    self.serials.append(leaf.serial_number)
            time.sleep(0.02)


def test_run_renews_and_haproxy_serves_every_serial_without_restart(
    step_ca_factory: StepCAFactory,
    haproxy_factory: object,
    loopback: LoopbackLease,
    tmp_path: Path,
) -> None:
    ca = step_ca_factory(default_duration="60s")
    certs = tmp_path / "certs"
    certs.mkdir()
    # HAProxy first, on an empty directory with strict-sni: it must start without a cert.
    haproxy = haproxy_factory(certs)  # type: ignore[operator]
    # A reload fallback is configured, so "without restart" is a claim the sidecar could break:
    # a reload (SIGUSR2 to the master) keeps the master's pid but starts a new worker and is
    # counted in the master's `show proc`; a restart replaces both. So the worker's pid and the
    # reload count are what tell a hot update from either.
    worker = haproxy.worker_pid()
    args = stepca_run_args(
        ca,
        tmp_path,
        loopback,
        "--haproxy-socket",
        f"unix:{haproxy.socket_path}",
        "--reload-pid-file",
        str(haproxy.pid_file),
    )
    with running_sidecar(
        args, tmp_path / "run.log", until=logged("cert_placeholder_written")
    ) as sidecar:
        pem_path = certs / f"{loopback.name}.pem"
        root = ca.root_pem.encode()

        def served_real() -> bool:
            try:
                handshake("127.0.0.1", haproxy.port, loopback.name, root)
            except (OSError, ssl.SSLError, ValueError):
                return False
            return True

        sidecar.wait_for(served_real, "HAProxy serving the first real certificate", timeout=60)
        assert sidecar.get("/readyz")[0] == 200
        watcher = Handshaker(haproxy.port, loopback.name, root)
        watcher.start()
        try:
            sidecar.wait_for(
                lambda: len(watcher.serials) >= 4,
                "three renewals served by HAProxy",
                timeout=180,
                interval=1.0,
            )
        finally:
            watcher.stop_event.set()
            watcher.join()
        assert watcher.failures == [], watcher.failures[:5]
        assert watcher.count > 100
        # Every rotation went in through the runtime API: the same worker serves, and the
        # master never reloaded.
        assert haproxy.running()
        assert haproxy.worker_pid() == worker, "HAProxy's worker changed: reloaded or restarted"
        assert haproxy.restart_count() == 0, "HAProxy's master counted a reload"
        assert real_serial(pem_path) is not None
        names = sidecar.event_names()
        assert names.count("cert_issued") >= 4
        assert "haproxy_updated" in names
        # The placeholder went into the running HAProxy through the runtime API first.
        assert names.index("haproxy_placeholder_loaded") < names.index("cert_issued")
        status, metrics = sidecar.get("/metrics")
        assert status == 200
        assert (_metric(metrics, "cert_sidecar_renewals_total", result="success") or 0) >= 4
    assert sidecar.exit_code == 0
    # The stop at the block's end: within docker stop's default grace, after which it SIGKILLs.
    assert sidecar.stop_seconds is not None and sidecar.stop_seconds < 10.0
    assert not [p for p in certs.iterdir() if p.name != f"{loopback.name}.pem"]


def test_bundle_appears_late_then_rotates_to_a_new_root(
    step_ca_factory: StepCAFactory, loopback: LoopbackLease, tmp_path: Path
) -> None:
    ca1 = step_ca_factory()
    bundle = tmp_path / "root_ca" / "root_ca.crt"
    certs = tmp_path / "certs"
    args = [
        *base_args(
            ca1.directory_url,
            bundle,
            certs,
            tmp_path / "state",
            http_listen=f"{loopback.address}:80",
        ),
        "--domain",
        loopback.name,
    ]
    pem_path = certs / f"{loopback.name}.pem"
    with running_sidecar(args, tmp_path / "run.log", until=logged("ca_bundle_waiting")) as sidecar:
        assert sidecar.get("/healthz")[0] == 200
        assert sidecar.get("/readyz")[0] == 503  # the placeholder is not ready
        facts = _pem_facts(pem_path)
        assert facts is not None and facts.is_placeholder
        time.sleep(1.0)
        assert sidecar.event_names().count("ca_bundle_waiting") == 1  # logged once, not looped

        _write_atomically(bundle, ca1.root_pem.encode())
        sidecar.wait_for(lambda: real_serial(pem_path) is not None, "the first certificate")
        sidecar.wait_for(lambda: sidecar.get("/readyz")[0] == 200, "ready")

        # A second CA with a new root takes over the same address.
        ca2 = step_ca_factory()
        ca1.stop()
        ca2.stop()
        ca2.port = ca1.port
        ca2._write_config()
        ca2.start()
        _write_atomically(bundle, ca2.root_pem.encode())
        root2 = x509.load_pem_x509_certificate(ca2.root_pem.encode())

        def issued_by_new_root() -> bool:
            try:
                bundle_pem = pem.parse_combined(pem_path.read_bytes())
                bundle_pem.chain[-1].verify_directly_issued_by(root2)
            except Exception:
                return False
            return True

        sidecar.wait_for(issued_by_new_root, "re-issue under the new root", timeout=60)
        assert "cert_untrusted_by_new_root" in sidecar.event_names()
    assert sidecar.exit_code == 0


def test_ca_outage_keeps_old_certificate_and_recovers(
    step_ca_factory: StepCAFactory, loopback: LoopbackLease, tmp_path: Path
) -> None:
    # 2-minute certificates (3 minutes from the backdated notBefore) renewed at 0.45 of their
    # lifetime: due 12-21 s after issuance (the jitter takes up to 9 s off), with about 100 s
    # left, far above the 1/20 (9 s) under which /readyz turns 503. So the outage below is
    # tested on a certificate that is still good by construction, not by the machine being
    # fast (60-second certificates left 40 s, and the check ran only if 10 s remained).
    ca = step_ca_factory(default_duration="2m")
    certs = tmp_path / "certs"
    args = stepca_run_args(ca, tmp_path, loopback, "--renew-at", "0.45")
    pem_path = certs / f"{loopback.name}.pem"
    with running_sidecar(args, tmp_path / "run.log", until=first_certificate(pem_path)) as sidecar:
        first = real_serial(pem_path)
        ca.stop()

        def failed_once() -> bool:
            status, text = sidecar.get("/metrics")
            return (
                status == 200
                and (_metric(text, "cert_sidecar_renewals_total", result="failure") or 0) >= 1
            )

        sidecar.wait_for(failed_once, "a failed renewal in /metrics", timeout=90, interval=0.5)
        # The old certificate is still there and still counts as ready (CA errors alone do
        # not make /readyz fail), with the error in its body.
        assert real_serial(pem_path) == first
        status, body = sidecar.get("/readyz")
        facts = _pem_facts(pem_path)
        assert facts is not None
        lifetime = facts.not_after - facts.not_before
        assert facts.not_after - datetime.now(UTC) > lifetime / 20, "set-up: not a good cert"
        assert status == 200, body
        ready = json.loads(body)
        assert ready["ca"]["reachable"] is False and ready["ca"]["error"], ready["ca"]
        (record,) = ready["certificates"]
        assert record["consecutive_failures"] >= 1 and record["last_error"], record
        assert "cert_renewal_failed" in sidecar.event_names()
        ca.start()
        sidecar.wait_for(
            lambda: real_serial(pem_path) not in (None, first),
            "renewal after the CA is back",
            timeout=120,
            interval=0.5,
        )
    assert sidecar.exit_code == 0


def test_haproxy_missing_then_back(
    step_ca_factory: StepCAFactory,
    haproxy_factory: object,
    loopback: LoopbackLease,
    tmp_path: Path,
) -> None:
    ca = step_ca_factory(default_duration="60s")
    certs = tmp_path / "certs"
    certs.mkdir()
    haproxy = haproxy_factory(certs)  # type: ignore[operator]
    haproxy.stop()
    args = stepca_run_args(
        ca, tmp_path, loopback, "--haproxy-socket", f"unix:{haproxy.socket_path}"
    )
    pem_path = certs / f"{loopback.name}.pem"
    # The PEM is written anyway.
    with running_sidecar(args, tmp_path / "run.log", until=first_certificate(pem_path)) as sidecar:

        def deploy_failed() -> bool:
            # The failure series exists from the start at 0 (metrics pre-creates it): wait for a
            # counted failure, not for the line.
            _, text = sidecar.get("/metrics")
            failures = _metric(text, "cert_sidecar_haproxy_deploys_total", result="failure")
            return failures is not None and failures >= 1

        sidecar.wait_for(deploy_failed, "a failed deploy in /metrics", timeout=30)
        assert "haproxy_update_failed" in sidecar.event_names()
        haproxy.start()
        root = ca.root_pem.encode()

        def served() -> bool:
            try:
                leaf = handshake("127.0.0.1", haproxy.port, loopback.name, root)
            except (OSError, ssl.SSLError, ValueError):
                return False
            return leaf.serial_number == real_serial(pem_path)

        sidecar.wait_for(served, "HAProxy serving after it came back", timeout=60)
    assert sidecar.exit_code == 0


def _account_url(state: Path) -> str:
    (account,) = (state / "account").iterdir()
    return str(json.loads((account / "account.json").read_text())["url"])


def test_renew_force_is_handed_to_the_running_sidecar_which_survives_a_ca_reset(
    step_ca_factory: StepCAFactory, loopback: LoopbackLease, tmp_path: Path
) -> None:
    ca = step_ca_factory()
    certs = tmp_path / "certs"
    args = stepca_run_args(ca, tmp_path, loopback)
    pem_path = certs / f"{loopback.name}.pem"
    with running_sidecar(args, tmp_path / "run.log", until=first_certificate(pem_path)) as sidecar:
        first = real_serial(pem_path)
        account = _account_url(tmp_path / "state")
        # The CA forgets every account while the running sidecar's client still holds its
        # account URL and nonces: the next order must register again, and the new URL be kept.
        ca.reset_database()
        # The one-shot could not bind :80 itself (run holds it): it must hand over.
        result = run_cli(["renew", "--force", *args])
        assert result.code == 0, result.stderr
        assert "done by the running cert-sidecar" in result.stderr
        assert real_serial(pem_path) not in (None, first)
        assert "control_request" in sidecar.event_names()
        assert "acme_account_reregistered" in sidecar.event_names()
        assert _account_url(tmp_path / "state") != account
    assert sidecar.exit_code == 0


def test_sigterm_during_an_order_stops_cleanly(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    # A dns-01 hook that hangs: the order is in flight when SIGTERM arrives.
    hook = f'{sys.executable} -c "import time; time.sleep(60)"'
    args = [
        *base_args(step_ca.directory_url, step_ca.root_path, certs, tmp_path / "state"),
        "--domain",
        loopback.name,
        "--challenge",
        "dns-01",
        "--dns-hook",
        hook,
    ]
    pem_path = certs / f"{loopback.name}.pem"
    with running_sidecar(
        args, tmp_path / "run.log", until=logged("cert_renewal_started")
    ) as sidecar:
        time.sleep(1.0)
        code, elapsed = sidecar.stop(signal.SIGTERM)
    assert code == 0
    assert elapsed < 10.0  # within docker stop's default grace, after which it SIGKILLs
    facts = _pem_facts(pem_path)
    assert facts is not None and facts.is_placeholder  # whole, and still the placeholder
    assert [p.name for p in certs.iterdir()] == [pem_path.name]


def test_config_file_change_adds_and_removes_certificates(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    config = tmp_path / "conf" / "cert-sidecar.toml"

    def write_config(names: list[str]) -> None:
        text = "\n".join(
            [
                "[acme]",
                f'directory = "{step_ca.directory_url}"',
                f'ca_bundle = "{step_ca.root_path}"',
                f'http_listen = "{loopback.address}:80"',
                "[files]",
                f'certs_dir = "{certs}"',
                f'state_dir = "{tmp_path / "state"}"',
                *(f'[[certificates]]\nname = "{n}"\ndomains = ["{n}"]' for n in names),
                "",
            ]
        )
        _write_atomically(config, text.encode())

    first, second = loopback.names[0], loopback.names[1]
    write_config([first])
    with running_sidecar(
        ["--config", str(config)],
        tmp_path / "run.log",
        until=first_certificate(certs / f"{first}.pem"),
    ) as sidecar:
        write_config([first, second])
        sidecar.wait_for(lambda: real_serial(certs / f"{second}.pem") is not None, "added")
        kept = (certs / f"{first}.pem").read_bytes()
        write_config([second])
        sidecar.wait_for(
            lambda: any(
                e.get("event") == "config_reloaded" and e.get("removed") == [first]
                for e in sidecar.events()
            ),
            "the removal",
        )
        # A removed certificate stays on disk (and loaded); `revoke --remove` deletes it.
        assert (certs / f"{first}.pem").read_bytes() == kept
        # Other files in the same directory, and a rewrite with the same content, are ignored.
        reloads = sidecar.event_names().count("config_reloaded")
        (config.parent / "unrelated.log").write_text("noise\n")
        write_config([second])
        time.sleep(1.5)
        assert sidecar.event_names().count("config_reloaded") == reloads
        # A broken file is reported and the running configuration kept.
        _write_atomically(config, b"[acme\n")
        sidecar.wait_for(
            lambda: "config_reload_failed" in sidecar.event_names(), "the reload failure"
        )
        assert sidecar.get("/healthz")[0] == 200
    assert sidecar.exit_code == 0


def test_run_status_and_metrics_show_the_same_next_renewal(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    """docs/commands.md ("How renewal works"): the jitter comes from the serial, so the running
    service (its /readyz body), `status` (another process) and /metrics all show the same time."""
    args = stepca_run_args(step_ca, tmp_path, loopback)
    pem_path = tmp_path / "certs" / f"{loopback.name}.pem"
    with running_sidecar(args, tmp_path / "run.log", until=readyz_ok()) as sidecar:
        status, body = sidecar.get("/readyz")
        assert status == 200, body
        (ready,) = json.loads(body)["certificates"]
        from_run = datetime.fromisoformat(ready["next_renewal"]).timestamp()
        status, text = sidecar.get("/metrics")
        assert status == 200
        from_metrics = _metric(
            text, "cert_sidecar_certificate_next_renewal_timestamp_seconds", name=loopback.name
        )
        result = run_cli(["status", "--json", *args])
        assert result.code == 0, result.stderr
        (record,) = result.json()["certificates"]  # type: ignore[index]
        from_status = datetime.fromisoformat(record["next_renewal"]).timestamp()
    assert sidecar.exit_code == 0
    assert from_metrics is not None
    assert abs(from_run - from_status) < 1.0, (from_run, from_status)
    assert abs(from_run - from_metrics) < 1.0, (from_run, from_metrics)
    # And it is the documented time: renew_at (0.66) of the lifetime, minus up to 1/20 of it.
    facts = _pem_facts(pem_path)
    assert facts is not None and not facts.is_placeholder
    start, lifetime = facts.not_before.timestamp(), (facts.not_after - facts.not_before)
    latest = start + 0.66 * lifetime.total_seconds()
    assert latest - lifetime.total_seconds() / 20 - 1 <= from_run <= latest + 1
