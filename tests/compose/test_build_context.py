"""cert-sidecar's default build context (the checkout, filtered by .dockerignore) carries what
the Dockerfile needs and nothing a test run leaves behind: above all no wheels/, which the
Dockerfile would install with --no-index and which were built for the host's Python, not the
image's (a plain `docker compose up --build` on python:3.12-slim then failed on cffi).

Checked with the real Docker Engine's builder on a copy of the checkout that has the leftovers
of a test run (wheels/, .venv/, .cache/), since only the engine applies .dockerignore."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.compose.stack import REPO_ROOT, docker_cli

pytestmark = pytest.mark.compose

PROBE = """FROM {base}
COPY . /src
RUN ls -A1 /src | sed 's/^/context: /'
"""


def test_default_context_has_the_sources_and_no_test_leftovers(
    docker_engine: str, stand_in_images: dict[str, str], tmp_path: Path
) -> None:
    checkout = tmp_path / "checkout"
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, timeout=60
        )
        .stdout.decode()
        .split("\0")
    )
    for relative in filter(None, listed):
        if (REPO_ROOT / relative).is_file():
            (checkout / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / relative, checkout / relative)
    # What the test scripts and a developer leave in a checkout.
    for leftover in (
        "wheels/cffi-2.0.0-cp311-cp311-manylinux2014_x86_64.whl",
        ".venv/bin/python",
        ".cache/compose/x.tar",
        "build/lib/x.py",
    ):
        (checkout / leftover).parent.mkdir(parents=True, exist_ok=True)
        (checkout / leftover).write_text("leftover\n")
    dockerfile = tmp_path / "Dockerfile.probe"
    dockerfile.write_text(PROBE.format(base=stand_in_images["PYTHON_BASE_TAG"]))
    result = subprocess.run(
        [
            docker_cli(),
            "-H",
            docker_engine,
            "build",
            "--no-cache",
            "--rm",
            "-f",
            str(dockerfile),
            "-t",
            "cert-sidecar-test/context-probe",
            str(checkout),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    subprocess.run(
        [docker_cli(), "-H", docker_engine, "image", "rm", "-f", "cert-sidecar-test/context-probe"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    listing = {
        line.removeprefix("context: ").strip()
        for line in result.stdout.splitlines()
        if line.startswith("context: ")
    }
    assert {"pyproject.toml", "README.md", "ca_client", "sidecar"} <= listing, listing
    assert listing & {"wheels", ".venv", ".cache", "build"} == set(), listing
