"""`cert-sidecar run` recovering what others left behind: an interrupted write's temporary in the
certs directory, and an HAProxy that restarted after it was serving (docs/commands.md "Files"
and "How renewal works")."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tests.integration.cli import (
    Wait,
    base_args,
    logged,
    real_serial,
    running_sidecar,
    stepca_run_args,
)
from tests.peers.haproxy import HAProxyFactory, handshake
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCAFactory


def test_run_removes_leftover_temporaries_when_it_starts(tmp_path: Path) -> None:
    # docs/commands.md: "Leftover dot-files are removed when `run` starts." No CA is needed: the
    # clean-up comes before the placeholder, long before the (missing) CA bundle matters.
    certs = tmp_path / "certs"
    certs.mkdir()
    name = "left.example"
    # What a kill during storage.atomic_write leaves: ".<name>.<16 hex digits>".
    leftovers = [certs / f".{name}.pem.0123456789abcdef", certs / ".other.pem.fedcba9876543210"]
    for leftover in leftovers:
        leftover.write_bytes(b"-----BEGIN CERTIFICATE-----\nhalf a PEM")
    not_ours = certs / ".keep-me"  # an operator's dot-file is not ours to delete
    not_ours.write_bytes(b"keep")
    args = [
        *base_args(
            "https://127.0.0.1:9/acme/directory",
            tmp_path / "root_ca" / "root_ca.crt",
            certs,
            tmp_path / "state",
        ),
        "--domain",
        name,
    ]
    with running_sidecar(
        args, tmp_path / "run.log", until=logged("cert_placeholder_written")
    ) as sidecar:
        assert [p for p in leftovers if p.exists()] == []
        assert not_ours.exists()
        (removed,) = [e for e in sidecar.events() if e.get("event") == "stale_temp_files_removed"]
        assert removed["count"] == len(leftovers)
        assert sorted(p.name for p in certs.iterdir()) == [".keep-me", f"{name}.pem"]
    assert sidecar.exit_code == 0


@pytest.mark.stepca
@pytest.mark.haproxy
def test_an_haproxy_restarted_after_serving_gets_the_certificate_back(
    step_ca_factory: StepCAFactory,
    haproxy_factory: HAProxyFactory,
    loopback: LoopbackLease,
    tmp_path: Path,
) -> None:
    """docs/commands.md: "HAProxy is checked to still serve the right serial (a restarted
    HAProxy gets it back)".

    An HAProxy that reads the sidecar's directory at its start would get the certificate
    back by itself, and the test could not tell whether the sidecar did anything. So this
    HAProxy loads its own, empty, directory (``--haproxy-certs-dir``): everything it serves
    came through the runtime API, and after a restart only the sidecar's periodic check can
    bring the certificate back. 5-minute certificates: checked every 3.6 s, renewed only
    after about 3 minutes, long after the test's deadline.
    """
    ca = step_ca_factory(default_duration="5m")
    certs = tmp_path / "certs"
    haproxy_view = tmp_path / "haproxy-view"  # stays empty: HAProxy starts with nothing
    haproxy_view.mkdir()
    haproxy = haproxy_factory(haproxy_view)
    args = stepca_run_args(
        ca,
        tmp_path,
        loopback,
        "--haproxy-socket",
        f"unix:{haproxy.socket_path}",
        "--haproxy-certs-dir",
        str(haproxy_view),
    )
    root = ca.root_pem.encode()
    pem_path = certs / f"{loopback.name}.pem"

    def served() -> int | None:
        try:
            return handshake("127.0.0.1", haproxy.port, loopback.name, root).serial_number
        except (OSError, ssl.SSLError, ValueError):
            return None

    first_served = Wait(
        "HAProxy serving the first certificate",
        lambda _: real_serial(pem_path) is not None and served() == real_serial(pem_path),
        timeout=60,
    )
    with running_sidecar(args, tmp_path / "run.log", until=first_served) as sidecar:
        before_restart = len(sidecar.events())
        haproxy.stop()
        haproxy.start()
        assert list(haproxy_view.iterdir()) == []  # nothing on HAProxy's side to load
        sidecar.wait_for(
            lambda: served() is not None and served() == real_serial(pem_path),
            "the restarted HAProxy serving the certificate again",
            timeout=60,
        )
        after = [e.get("event") for e in sidecar.events()[before_restart:]]
        # The sidecar noticed and put it back; it was not a renewal that happened to deploy.
        assert "haproxy_serves_other" in after, after
        assert "cert_issued" not in after, after
        status, metrics = sidecar.get("/metrics")
        assert status == 200
        served_matches = [
            line
            for line in metrics.splitlines()
            if line.startswith("cert_sidecar_certificate_served_matches{")
        ]
        assert served_matches and served_matches[0].endswith(" 1"), served_matches
    assert sidecar.exit_code == 0
