"""The README's quick start, run as written on a real Docker Engine.

The blocks marked `quick-start`, `tour` and `clean-up` in README.md run in turn with bash
(`set -euo pipefail`) in a fresh copy of the checkout's files, against docker-engine.sh's
engine, with exactly three adaptations to this machine, all outside the commands themselves:
`docker compose` is docker-compose 1.29 (a `docker` shim on the PATH; no Compose v2 here), the
published ports 8443/8080 become free ports (other runs share the machine), and the variables
compose.yaml offers for images point at the local stand-ins (no registry is reachable).
This is the default stack: one name, 24-hour certificates, images built by `up --build`.

Between the blocks the test checks what the README claims: a certificate verified against the
step-ca root through HAProxy's published port, `renew --force` and the one-shot `run` changing
the served certificate without restarting HAProxy, and nothing left after the clean-up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.readme import readme_block
from tests.compose.stack import (
    REPO_ROOT,
    ComposeStack,
    Served,
    docker_cli,
    free_port,
    require,
)

pytestmark = pytest.mark.compose

PROJECT = "cert-sidecar-readme"
NAME = "demo.openchami.cluster"
BUILT_IMAGES = ("cert-sidecar:local", "cert-sidecar/step-ca:local")
SHIM = """#!/bin/sh
# `docker compose` is docker-compose 1.29 here (no Compose v2 on this machine).
if [ "$1" = compose ]; then shift; exec docker-compose "$@"; fi
exec {docker} "$@"
"""


class Readme:
    """Runs README blocks in one shell environment and working directory."""

    def __init__(self, workdir: Path, env: dict[str, str], https_port: int, http_port: int):
        self.workdir = workdir
        self.env = env
        self.https_port = https_port
        self.http_port = http_port

    def run(self, name: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        block = readme_block(name)
        assert "8443" in block or name != "quick-start"
        script = (block.replace("8443", str(self.https_port))
                  .replace("8080", str(self.http_port)))
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.workdir,
                                env=self.env, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, check=False)
        print(f"\n--- README block {name}: exit {result.returncode}\n{result.stdout[-4000:]}"
              f"\n{result.stderr[-4000:]}")
        assert result.returncode == 0, f"README block {name} failed"
        return result


@pytest.fixture(scope="module")
def readme(docker_engine: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Readme, ComposeStack]]:
    require(shutil.which("curl") is not None, "the README's quick start needs curl")
    # A fresh copy of the checkout's files, as a clone would have them (no .venv, .cache,
    # wheels or anything else a test run leaves behind).
    workdir = tmp_path_factory.mktemp("checkout") / "cert-sidecar"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True,
                            check=True, timeout=60).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = REPO_ROOT / relative
        if source.is_file():
            target = workdir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shim_dir = tmp_path_factory.mktemp("bin")
    shim = shim_dir / "docker"
    shim.write_text(SHIM.format(docker=docker_cli()))
    shim.chmod(0o755)

    https_port, http_port = free_port(), free_port()
    # The stack object only observes (volumes, containers, TLS); the README drives.
    stack = ComposeStack(PROJECT, {}, https_port, engine="docker")
    scripts_env = stack.env
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))},
        "PATH": f"{shim_dir}:{os.environ['PATH']}",
        "DOCKER_HOST": docker_engine,
        "DOCKER_BUILDKIT": "0",
        "COMPOSE_DOCKER_CLI_BUILD": "0",
        "COMPOSE_PROJECT_NAME": PROJECT,
        # The variables compose.yaml offers for images, at the local stand-ins.
        "STEP_CA_IMAGE": scripts_env["STEP_CA_TEST_IMAGE"],
        "HAPROXY_IMAGE": scripts_env["HAPROXY_TEST_IMAGE"],
        "CERT_SIDECAR_BASE_IMAGE": scripts_env["PYTHON_BASE_TAG"],
        "CERT_SIDECAR_BUILD_CONTEXT": scripts_env["CERT_SIDECAR_TEST_CONTEXT"],
    }
    for variable in ("HAPROXY_HTTPS_PORT", "HAPROXY_HTTP_PORT", "SYSTEM_NAME", "SYSTEM_DOMAIN",
                     "STEP_CA_CERT_LIFETIME", "CERT_SIDECAR_IMAGE", "STEP_CA_WRAPPED_IMAGE"):
        env.pop(variable, None)
    stack.env.update(env)
    stack.force_down()
    try:
        yield Readme(workdir, env, https_port, http_port), stack
    finally:
        stack.force_down()


def served(stack: ComposeStack) -> Served:
    return stack.served(NAME, stack.root_pem())


@pytest.fixture(scope="module")
def quick_start(readme: tuple[Readme, ComposeStack]) -> tuple[Readme, ComposeStack, Served]:
    runner, stack = readme
    started = time.monotonic()
    result = runner.run("quick-start")
    print(f"\nREADME quick start (build included) took {time.monotonic() - started:.1f} s")
    assert f"cert-sidecar demo: {NAME}" in result.stdout
    return runner, stack, served(stack)


def test_quick_start_serves_a_verified_certificate(
        quick_start: tuple[Readme, ComposeStack, Served]) -> None:
    runner, stack, first = quick_start
    # The block's root_ca.crt is the CA's own root (the volume's), and what HAProxy serves
    # for the name verifies against it (served() trusts only that root).
    assert (runner.workdir / "root_ca.crt").read_bytes() == stack.root_pem()
    assert first.status_line.endswith("200 OK")
    # The default stack: 24-hour certificates.
    lifetime = first.certificate.not_valid_after_utc - first.certificate.not_valid_before_utc
    assert lifetime.total_seconds() > 23 * 3600


def test_tour_renews_in_place_and_issues_one_shot(
        quick_start: tuple[Readme, ComposeStack, Served]) -> None:
    runner, stack, first = quick_start
    haproxy = stack.state("haproxy")
    result = runner.run("tour")
    assert NAME in result.stdout  # status
    assert "cert_sidecar_certificate_not_after_timestamp_seconds" in result.stdout  # metrics
    assert "issued serial" in result.stdout  # the one-shot
    after = served(stack)
    assert after.serial != first.serial
    assert after.status_line.endswith("200 OK")
    now = stack.state("haproxy")
    assert (now.get("StartedAt"), now.get("RestartCount")) == (
        haproxy.get("StartedAt"), haproxy.get("RestartCount"))


def test_clean_up_leaves_nothing(quick_start: tuple[Readme, ComposeStack, Served]) -> None:
    runner, stack, _ = quick_start
    runner.run("clean-up")
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
    for image in BUILT_IMAGES:
        found = stack.cli("image", "inspect", image, check=False)
        assert found.returncode != 0, f"{image} is still there"
    assert not (runner.workdir / "root_ca.crt").exists()
