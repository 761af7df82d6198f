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
    """Runs README blocks in one shell environment and working directory, with the published
    ports of the README (`ports`) replaced by free ones."""

    def __init__(self, workdir: Path, env: dict[str, str], ports: dict[str, int]) -> None:
        self.workdir = workdir
        self.env = env
        self.ports = ports

    def run(self, name: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        script = readme_block(name)
        for readme_port, port in self.ports.items():
            script = script.replace(readme_port, str(port))
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        print(
            f"\n--- README block {name}: exit {result.returncode}\n{result.stdout[-4000:]}"
            f"\n{result.stderr[-4000:]}"
        )
        assert result.returncode == 0, f"README block {name} failed"
        return result


def copy_checkout(target: Path) -> Path:
    """A fresh copy of the checkout's files, as a clone would have them (no .venv, .cache,
    wheels or anything else a test run leaves behind)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, timeout=60
        )
        .stdout.decode()
        .split("\0")
    )
    for relative in filter(None, listed):
        source = REPO_ROOT / relative
        if source.is_file():
            copied = target / relative
            copied.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copied)
    return target


def clean_environment() -> dict[str, str]:
    """This process's environment without the compose and image settings a test may carry."""
    dropped = (
        "HAPROXY_HTTPS_PORT",
        "HAPROXY_HTTP_PORT",
        "SYSTEM_NAME",
        "SYSTEM_DOMAIN",
        "STEP_CA_CERT_LIFETIME",
        "CERT_SIDECAR_IMAGE",
        "STEP_CA_WRAPPED_IMAGE",
        "STEP_CA_IMAGE",
        "HAPROXY_IMAGE",
        "CERT_SIDECAR_BASE_IMAGE",
        "CERT_SIDECAR_BUILD_CONTEXT",
        "STACK_ENGINE",
    )
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("COMPOSE_", "DOCKER_")) and key not in dropped
    }


@pytest.fixture(scope="module")
def readme(
    docker_engine: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Readme, ComposeStack]]:
    require(shutil.which("curl") is not None, "the README's quick start needs curl")
    workdir = copy_checkout(tmp_path_factory.mktemp("checkout") / "cert-sidecar")
    shim_dir = tmp_path_factory.mktemp("bin")
    shim = shim_dir / "docker"
    shim.write_text(SHIM.format(docker=docker_cli()))
    shim.chmod(0o755)

    https_port, http_port = free_port(), free_port()
    # The stack object only observes (volumes, containers, TLS); the README drives.
    stack = ComposeStack(PROJECT, {}, https_port, engine="docker")
    scripts_env = stack.env
    env = {
        **clean_environment(),
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
    stack.env.update(env)
    stack.force_down()
    try:
        yield Readme(workdir, env, {"8443": https_port, "8080": http_port}), stack
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
    quick_start: tuple[Readme, ComposeStack, Served],
) -> None:
    runner, stack, first = quick_start
    # The block's root_ca.crt is the CA's own root (the volume's), and what HAProxy serves
    # for the name verifies against it (served() trusts only that root).
    assert (runner.workdir / "root_ca.crt").read_bytes() == stack.root_pem()
    assert first.status_line.endswith("200 OK")
    # The default stack: 24-hour certificates.
    lifetime = first.certificate.not_valid_after_utc - first.certificate.not_valid_before_utc
    assert lifetime.total_seconds() > 23 * 3600


def test_tour_renews_in_place_and_issues_one_shot(
    quick_start: tuple[Readme, ComposeStack, Served],
) -> None:
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
        haproxy.get("StartedAt"),
        haproxy.get("RestartCount"),
    )


def test_clean_up_leaves_nothing(quick_start: tuple[Readme, ComposeStack, Served]) -> None:
    runner, stack, _ = quick_start
    runner.run("clean-up")
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
    for image in BUILT_IMAGES:
        found = stack.cli("image", "inspect", image, check=False)
        assert found.returncode != 0, f"{image} is still there"
    # The build stage the classic builder kept untagged (Dockerfile's label) is gone too.
    stages = stack.cli("image", "ls", "--quiet", "--filter", "label=cert-sidecar.stage=build")
    assert stages.stdout.split() == []
    assert not (runner.workdir / "root_ca.crt").exists()


def test_podman_first_run(
    stand_in_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """docs/podman.md: the block as written, in a fresh copy of the checkout,
    from the package install to a verified certificate and back to nothing. Adaptations: free
    ports instead of 10443/10080, this checkout's build cache (.cache: the debootstrap tarball
    and step-ca binary, minutes to rebuild), and a project name of its own."""
    require(shutil.which("curl") is not None, "the README's podman first run needs curl")
    workdir = copy_checkout(tmp_path_factory.mktemp("checkout") / "cert-sidecar")
    (workdir / ".cache").symlink_to((REPO_ROOT / ".cache").resolve())
    project = "cert-sidecar-readme-podman"
    https_port, http_port = free_port(), free_port()
    env = {
        **clean_environment(),
        "COMPOSE_PROJECT_NAME": project,
        "CERT_SIDECAR_TEST_CONTEXT": str(tmp_path_factory.mktemp("context") / "cert-sidecar"),
    }
    observer = ComposeStack(project, {}, https_port, engine="podman")
    observer.force_down()
    try:
        result = Readme(workdir, env, {"10443": https_port, "10080": http_port}).run(
            "podman-quick-start", timeout=1800
        )
        assert f"cert-sidecar demo: {NAME}" in result.stdout
        assert observer.leftovers() == {"containers": [], "volumes": [], "networks": []}
        assert not (workdir / "root_ca.crt").exists()
    finally:
        observer.force_down()
