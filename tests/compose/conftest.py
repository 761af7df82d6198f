"""Set-up shared by the compose tests (every engine): the tools they need, the stand-in images
built once per session, and the Docker Engine those images are moved into.

Building is the expensive part (minutes on a fresh machine, seconds when cached): podman builds
every image once, and the Docker Engine gets copies (`podman save | docker load`, skipped when
it already has the same image ID), so both engines run the very same images.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.stack import SCRIPTS, docker_cli, require, scripts_environment

# pytest-timeout for the compose tests, instead of the suite's 300 s (pyproject.toml): a test's
# time includes the session fixtures it is the first to need, and building the images on a
# fresh machine is allowed 1800 s on its own (build-images.sh, the README's quick start), more
# with the stack build and the copy into the Docker Engine. Only a hang ever gets near it.
COMPOSE_TIMEOUT = 3600
# How long the image fixture waits for scripts/build-test-images.sh (about 4-6 minutes on a
# fresh 2-core machine); then it fails naming the lock, rather than waiting out the timeout.
BACKGROUND_BUILD_WAIT = 1500


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(COMPOSE_TIMEOUT))


def _run(*args: str, env: dict[str, str], timeout: float) -> None:
    result = subprocess.run(
        list(args),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


@pytest.fixture(scope="session")
def compose_tools() -> None:
    missing = [
        tool for tool in ("podman", "docker-compose", "debootstrap") if shutil.which(tool) is None
    ]
    require(not missing, f"compose tests need {', '.join(missing)} (scripts/install-deps.sh)")
    require(os.geteuid() == 0, "compose tests run podman and dockerd as root")


def _wait_for_background_build(cache_dir: Path) -> None:
    """Wait for scripts/build-test-images.sh, which scripts/test starts in the background, to
    finish: building beside it would race it for the same tags (and `podman image prune` below
    could remove the layers it is building on). Its lock is free when nothing is building."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / ".lock-build-test-images"
    deadline = time.monotonic() + BACKGROUND_BUILD_WAIT
    with open(path, "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{path} still held after {BACKGROUND_BUILD_WAIT} s: a build (or a"
                        f" process it started) holds it; `fuser {path}` names it"
                    ) from None
                time.sleep(1)


@pytest.fixture(scope="session")
def stand_in_images(compose_tools: None) -> dict[str, str]:
    """The stand-in images (build-images.sh) and the two images compose.yaml builds, built by
    podman under their test names; returns the scripts' environment."""
    env = scripts_environment()
    _wait_for_background_build(Path(env["CACHE_DIR"]))
    _run("bash", str(SCRIPTS / "build-images.sh"), env=env, timeout=1800)
    _run(
        "bash",
        str(SCRIPTS / "stack.sh"),
        "build",
        env={**env, "STACK_ENGINE": "podman"},
        timeout=1200,
    )
    # Each build of the changed project leaves the previous image untagged: drop those.
    subprocess.run(
        ["podman", "image", "prune", "--force"],
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    return env


@pytest.fixture(scope="session")
def docker_engine(stand_in_images: dict[str, str]) -> Iterator[str]:
    """A running Docker Engine holding the stand-in images; yields its DOCKER_HOST. Left
    running when another user's containers are on it (the engine is per machine)."""
    require(
        shutil.which("dockerd") is not None,
        "Docker Engine tests need dockerd (docker.io, scripts/install-deps.sh)",
    )
    env = stand_in_images
    engine = str(SCRIPTS / "docker-engine.sh")
    _run("bash", engine, "start", env=env, timeout=180)
    try:
        _run(
            "bash",
            engine,
            "load",
            env["PYTHON_BASE_TAG"],
            env["HAPROXY_TEST_IMAGE"],
            env["STEP_CA_TEST_IMAGE"],
            env["CERT_SIDECAR_TEST_IMAGE"],
            env["STEP_CA_WRAPPED_TEST_IMAGE"],
            env=env,
            timeout=900,
        )
        yield env["DOCKER_ENGINE_HOST"]
    finally:
        # Builds on this engine (`up --build` with the classic builder) leave cert-sidecar's
        # build stage untagged: about 280 MB each, labelled by the Dockerfile.
        subprocess.run(
            [
                docker_cli(),
                "-H",
                env["DOCKER_ENGINE_HOST"],
                "image",
                "prune",
                "--force",
                "--filter",
                "label=cert-sidecar.stage=build",
            ],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        subprocess.run(
            ["bash", engine, "stop-if-idle"], env=env, capture_output=True, timeout=180, check=False
        )
