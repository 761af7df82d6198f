"""Failure lines say what to do (issue 16, item 7), against the real step-ca 0.19.

The certificate's name resolves to a loopback address where nothing answers on port 80 (the
responder listens on another port), so step-ca says "The server could not connect to
validation target": the usual compose mistake of a name without a network alias.

- the failure carries a hint: the CA must resolve the name to this container;
- a one-shot failure prints no "(next retry ...)": nothing will retry it;
- ``healthcheck`` on a placeholder says why it is one (the last error);
- after a reload that fixes the configuration, the old error and its backoff are not kept:
  the certificate is ordered at once, instead of after the backoff that the earlier failures
  built up (several minutes here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.cli import Wait, free_port, run_cli, running_sidecar
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA, StepCAFactory

pytestmark = [pytest.mark.stepca]

HINT = "hint: the CA must resolve the name to this container (a network alias in compose"
# Failures recorded before `run` starts: its backoff is then 5 s * 2**7 (at least 320 s).
EARLY_FAILURES = 8


def _config(ca: StepCA, lease: LoopbackLease, tmp_path: Path, http_listen: str, port: int) -> str:
    return "\n".join(
        [
            "[acme]",
            f'directory = "{ca.directory_url}"',
            f'ca_bundle = "{ca.root_path}"',
            f'http_listen = "{http_listen}"',
            "[files]",
            f'certs_dir = "{tmp_path / "certs"}"',
            f'state_dir = "{tmp_path / "state"}"',
            "[service]",
            f'health_listen = "127.0.0.1:{port}"',
            "[[certificates]]",
            f'domains = ["{lease.name}"]',
            "",
        ]
    )


def _write(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.rename(path)


def test_failures_say_what_to_do_and_a_fixed_configuration_is_tried_at_once(
    step_ca_factory: StepCAFactory,
    loopback_factory: Callable[[], LoopbackLease],
    tmp_path: Path,
) -> None:
    ca, lease = step_ca_factory(), loopback_factory()
    port = free_port()
    config = tmp_path / "cert-sidecar.toml"
    unreachable = f"{lease.address}:{free_port()}"  # step-ca asks port 80: nothing there
    _write(config, _config(ca, lease, tmp_path, unreachable, port))
    ask = ["--config", str(config)]

    for _ in range(EARLY_FAILURES):
        failed = run_cli(["issue", *ask])
        assert failed.code == 1
    line = next(x for x in failed.stderr.splitlines() if x.startswith(f"{lease.name}: failed"))
    assert "could not connect to validation target" in line
    assert HINT in line
    assert "next retry" not in line

    not_ready = Wait("not ready (placeholder)", lambda sidecar: sidecar.get("/readyz")[0] == 503)
    with running_sidecar(ask, tmp_path / "run.log", health_port=port, until=not_ready) as sidecar:
        health = run_cli(["healthcheck", *ask])
        assert health.code == 1
        assert "placeholder certificate, not yet issued by the CA; last error:" in health.stderr
        assert "could not connect to validation target" in health.stderr
        # Whole, hint included, within what podman keeps of a probe's output.
        assert HINT in health.stderr and len(health.stderr) <= 500, health.stderr

        _write(config, _config(ca, lease, tmp_path, f"{lease.address}:80", port))
        sidecar.wait_for(lambda: "config_reloaded" in sidecar.event_names(), "the reload")
        # Well within the backoff the earlier failures left (over five minutes).
        sidecar.wait_for(lambda: "cert_issued" in sidecar.event_names(), "the order", timeout=90)
        status = run_cli(["status", "--json", *ask])
        assert status.code == 0, status.stderr
        (record,) = status.json()["certificates"]  # type: ignore[index]
        assert record["state"] == "valid" and record["last_error"] is None
        assert run_cli(["healthcheck", *ask]).code == 0
