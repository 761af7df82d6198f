"""A wrong CA directory URL shows at once (issue 16, item 2), against the real step-ca 0.19.

The URL is step-ca's with one letter wrong in the path (``/acme/acmee/directory``), which step-ca
answers with a 404 problem document. A valid certificate is already deployed, so nothing is due:
before, `run` stayed quiet (``cert_sidecar_ca_reachable`` had no sample, the 404 was logged at
info as "no renewal information"), ``renew --dry-run`` printed ``unchanged``, and ``renew
--force`` failed with the CA's bare ``notFound``, naming neither the URL nor the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.cli import Sidecar, Wait, logged, run_cli, running_sidecar
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA, StepCAFactory

pytestmark = [pytest.mark.stepca]


def _wrong(ca: StepCA) -> str:
    return ca.directory_url.replace("/acme/acme/", "/acme/acmee/")


def _env(ca: StepCA, lease: LoopbackLease, tmp_path: Path, directory: str) -> dict[str, str]:
    return {
        "CERT_SIDECAR_DIRECTORY": directory,
        "CERT_SIDECAR_CA_BUNDLE": str(ca.root_path),
        "CERT_SIDECAR_CERTS_DIR": str(tmp_path / "certs"),
        "CERT_SIDECAR_STATE_DIR": str(tmp_path / "state"),
        "CERT_SIDECAR_DOMAINS": lease.name,
        "CERT_SIDECAR_HTTP_LISTEN": f"{lease.address}:80",
    }


def _ca_reachable(sidecar: Sidecar) -> str | None:
    _, text = sidecar.get("/metrics")
    for line in text.splitlines():
        if line.startswith("cert_sidecar_ca_reachable "):
            return line.split()[1]
    return None


def _warnings(sidecar: Sidecar) -> list[dict[str, object]]:
    return [e for e in sidecar.events() if e.get("event") == "ca_directory_unusable"]


def test_a_wrong_directory_is_reported_at_start_by_one_shots_and_by_check_config(
    step_ca_factory: StepCAFactory,
    loopback_factory: Callable[[], LoopbackLease],
    tmp_path: Path,
) -> None:
    ca, lease = step_ca_factory(), loopback_factory()
    good = _env(ca, lease, tmp_path, ca.directory_url)
    issued = run_cli(["issue"], env=good)
    assert issued.code == 0, issued.stderr
    bad = _env(ca, lease, tmp_path, _wrong(ca))
    wrong = bad["CERT_SIDECAR_DIRECTORY"]

    warned = Wait("the warning about the directory", lambda sidecar: bool(_warnings(sidecar)))
    with running_sidecar([], tmp_path / "run.log", env=bad, until=warned) as sidecar:
        (warning,) = _warnings(sidecar)
        assert warning["level"] == "warning"
        assert warning["setting"] == "CERT_SIDECAR_DIRECTORY"
        assert warning["url"] == wrong
        assert "404" in str(warning["error"])
        assert _ca_reachable(sidecar) == "0"
        # The running sidecar stays ready: the deployed certificate is valid.
        assert sidecar.get("/readyz")[0] == 200

        # One-shots (handed to the running sidecar or not) name the setting and the URL.
        for argv in (["renew", "--dry-run"], ["renew", "--force"]):
            result = run_cli(argv, env=bad)
            assert result.code == 1, (argv, result.stdout, result.stderr)
            assert "unchanged" not in result.stdout
            line = result.stderr.strip().splitlines()[-1]
            assert line.startswith(
                f"cert-sidecar: error: CERT_SIDECAR_DIRECTORY: the ACME directory {wrong} "
            )
            assert "HTTP 404" in line and "/acme/<provisioner name>/directory" in line

    online = run_cli(["check-config", "--online"], env=bad)
    assert online.code == 1
    assert len(online.stderr.strip().splitlines()) == 1, online.stderr
    assert (
        f"CERT_SIDECAR_DIRECTORY: the ACME directory {wrong} could not be fetched" in online.stderr
    )

    fine = run_cli(["check-config", "--online"], env=good)
    assert fine.code == 0, fine.stderr
    assert f"# ACME directory {ca.directory_url}: reachable, TLS verified" in fine.stdout
    assert "renewal_info = (none: the CA has no ARI)" in fine.stdout


def test_a_reload_to_a_wrong_directory_is_reported(
    step_ca_factory: StepCAFactory,
    loopback_factory: Callable[[], LoopbackLease],
    tmp_path: Path,
) -> None:
    ca, lease = step_ca_factory(), loopback_factory()
    config = tmp_path / "cert-sidecar.toml"

    def write(directory: str) -> None:
        temp = tmp_path / ".cert-sidecar.toml.tmp"
        temp.write_text(
            "\n".join(
                [
                    "[acme]",
                    f'directory = "{directory}"',
                    f'ca_bundle = "{ca.root_path}"',
                    f'http_listen = "{lease.address}:80"',
                    "[files]",
                    f'certs_dir = "{tmp_path / "certs"}"',
                    f'state_dir = "{tmp_path / "state"}"',
                    "[[certificates]]",
                    f'domains = ["{lease.name}"]',
                    "",
                ]
            )
        )
        temp.rename(config)

    write(ca.directory_url)
    with running_sidecar(
        ["--config", str(config)], tmp_path / "run.log", until=logged("cert_issued")
    ) as sidecar:
        sidecar.wait_for(lambda: _ca_reachable(sidecar) == "1", "ca_reachable 1")
        write(_wrong(ca))
        sidecar.wait_for(lambda: _warnings(sidecar), "the warning after the reload")
        (warning,) = _warnings(sidecar)
        assert warning["setting"] == f"acme.directory in {config}"
        assert warning["url"] == _wrong(ca)
        assert _ca_reachable(sidecar) == "0"
