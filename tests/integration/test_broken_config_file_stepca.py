"""A typo saved into the watched config file (issue 16, items 4 and 5), against the real step-ca.

`run` keeps its last good settings and logs ``config_reload_failed``. Before, ``healthcheck``
and ``status`` exited 2 on the file like ``check-config``: Docker marked a healthy container
unhealthy, and the operator lost ``status``. Now both ask the running sidecar, which is where
the file says (its health listener and state directory, read from what of the file still
reads), and ``check-config`` still exits 2: finding the typo is its job.

Item 5 rides on the same running sidecar: a one-shot whose settings differ from the running
sidecar's is refused (exit 2, one line naming the setting) instead of being done with the
running sidecar's settings under ``(done by the running cert-sidecar)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.cli import Sidecar, free_port, readyz_ok, run_cli, running_sidecar
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA, StepCAFactory

pytestmark = [pytest.mark.stepca]


def _write(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.rename(path)


class _Running:
    """A `run --config FILE` sidecar with one issued certificate (health listener set in the
    file, not the default, so that healthcheck must read it there)."""

    sidecar: Sidecar  # set by the fixture once it runs

    def __init__(self, ca: StepCA, lease: LoopbackLease, tmp_path: Path) -> None:
        self.ca, self.lease = ca, lease
        self.config = tmp_path / "cert-sidecar.toml"
        self.port = port = free_port()
        self.good = "\n".join(
            [
                "[acme]",
                f'directory = "{ca.directory_url}"',
                f'ca_bundle = "{ca.root_path}"',
                f'http_listen = "{lease.address}:80"',
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
        _write(self.config, self.good)
        self.ask = ["--config", str(self.config)]


@pytest.fixture
def running(
    step_ca_factory: StepCAFactory,
    loopback_factory: Callable[[], LoopbackLease],
    tmp_path: Path,
) -> Iterator[_Running]:
    setup = _Running(step_ca_factory(), loopback_factory(), tmp_path)
    with running_sidecar(
        setup.ask, tmp_path / "run.log", health_port=setup.port, until=readyz_ok()
    ) as sidecar:
        setup.sidecar = sidecar
        yield setup


def test_a_one_shot_with_other_settings_is_refused_not_done_with_the_running_ones(
    running: _Running,
) -> None:
    ask, ca = running.ask, running.ca
    other = ca.directory_url.replace("/acme/acme/", "/acme/other/")
    refused = run_cli(["renew", "--dry-run", "--force", *ask, "--directory", other])
    assert refused.code == 2, refused.stdout + refused.stderr
    assert "done by the running cert-sidecar" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(
        "cert-sidecar: error: --directory: differs from the running cert-sidecar's setting"
    )
    assert "check-config --online" in line
    refused = run_cli(["issue", *ask, "--key-type", "rsa-2048"])
    assert refused.code == 2 and "--key-type: differs" in refused.stderr, refused.stderr
    # The same settings are handed over as before.
    same = run_cli(["renew", "--dry-run", "--force", *ask])
    assert same.code == 0, same.stderr
    assert "done by the running cert-sidecar" in same.stderr


def test_a_broken_config_file_leaves_healthcheck_and_status_with_the_running_sidecar(
    running: _Running,
) -> None:
    ask, ca, sidecar, config = running.ask, running.ca, running.sidecar, running.config
    assert run_cli(["healthcheck", *ask]).code == 0
    typos = [
        running.good.replace("directory =", "directoy ="),  # valid TOML, an unknown key
        running.good.replace(f'ca_bundle = "{ca.root_path}"', f'ca_bundle = "{ca.root_path}'),
    ]
    for number, broken in enumerate(typos, start=1):
        _write(config, broken)
        sidecar.wait_for(
            lambda n=number: sidecar.event_names().count("config_reload_failed") >= n,  # type: ignore[misc]
            "the failed reload",
        )
        health = run_cli(["healthcheck", *ask])
        assert health.code == 0, health.stdout + health.stderr

        status = run_cli(["status", *ask])
        assert status.code == 0, status.stderr
        assert running.lease.name in status.stdout and "LAST ERROR" in status.stdout
        (warning,) = status.stderr.strip().splitlines()
        assert warning.startswith("cert-sidecar: warning: the configuration does not load (")
        assert str(config) in warning and "running sidecar" in warning

        checked = run_cli(["check-config", *ask])
        assert checked.code == 2
        assert str(config) in checked.stderr
    sidecar.stop()
    # With nothing running, the file's error is the answer again.
    assert run_cli(["status", *ask]).code == 2
