"""Docker Engine: from `docker-compose up -d` to the first verified certificate through HAProxy.

The default stack (compose.yaml alone: one name, 24-hour certificates) on the Docker Engine of
scripts/compose/docker-engine.sh, with the stand-in images already built and loaded (image
builds are not part of the time; `scripts/compose/build-images.sh` and the podman build of
compose.yaml's two images run first, cached when unchanged). Each run starts from nothing
(`down -v` before and after: a new CA, new volumes, new account) and records, from the moment
`up -d` is started:

- `up`: when the `up -d` command returned (containers created and started),
- `root`: when step-ca's root appeared in the step-root-ca volume,
- `verified`: when a TLS client on HAProxy's published port, trusting only that root, got a
  certificate for the name that verifies, and an HTTP 200 through it (polled every 50 ms).

Usage: .venv/bin/python bench/compose_first_cert.py [--runs 5] [--json FILE]
Needs: root, scripts/install-deps.sh (podman, docker.io, docker-compose, debootstrap).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.compose.stack import (  # noqa: E402 - after the path set-up above
    SCRIPTS,
    ComposeStack,
    free_port,
    scripts_environment,
)

NAME = "demo.openchami.cluster"
PROJECT = "cert-sidecar-bench"
DEADLINE_S = 300.0


def sh(*args: str, env: dict[str, str], timeout: float = 1800) -> None:
    result = subprocess.run(list(args), env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr[-2000:]}")


def prepare() -> dict[str, str]:
    env = scripts_environment()
    sh("bash", str(SCRIPTS / "build-images.sh"), env=env)
    sh("bash", str(SCRIPTS / "stack.sh"), "build", env={**env, "STACK_ENGINE": "podman"})
    sh("bash", str(SCRIPTS / "docker-engine.sh"), "start", env=env)
    sh("bash", str(SCRIPTS / "docker-engine.sh"), "load", env["PYTHON_BASE_TAG"],
       env["HAPROXY_TEST_IMAGE"], env["STEP_CA_TEST_IMAGE"], env["CERT_SIDECAR_TEST_IMAGE"],
       env["STEP_CA_WRAPPED_TEST_IMAGE"], env=env)
    return env


def one_run(stack: ComposeStack) -> dict[str, float]:
    stack.force_down()
    root_file: Path | None = None
    marks: dict[str, float] = {}
    start = time.monotonic()
    # Popen, not run: the volume and the port are watched while `up` is still working.
    up = subprocess.Popen(["bash", str(SCRIPTS / "stack.sh"), "up", "-d"], env=stack.env,
                          cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL)
    try:
        while "verified" not in marks:
            now = time.monotonic() - start
            if now > DEADLINE_S:
                raise RuntimeError(f"no verified certificate within {DEADLINE_S:.0f} s")
            if "up" not in marks and up.poll() is not None:
                if up.returncode != 0:
                    raise RuntimeError(f"up -d failed: {up.stderr.read().decode()[-2000:]}"
                                       if up.stderr else "up -d failed")
                marks["up"] = now
            if "root" not in marks:
                if root_file is None:
                    # AssertionError: the volume does not exist yet.
                    with contextlib.suppress(AssertionError):
                        root_file = stack.volume_path("step-root-ca") / "root_ca.crt"
                if root_file is not None and root_file.exists() and root_file.stat().st_size:
                    marks["root"] = now
            else:
                try:
                    served = stack.served(NAME, root_file.read_bytes())  # type: ignore[union-attr]
                except OSError:
                    served = None
                if served is not None and served.status_line.endswith("200 OK"):
                    marks["verified"] = time.monotonic() - start
            time.sleep(0.05)
        if "up" not in marks:
            up.wait(timeout=120)
            marks["up"] = time.monotonic() - start
        return marks
    finally:
        if up.poll() is None:
            up.wait(timeout=120)
        stack.force_down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("compose_first_cert: run as root (podman and dockerd)")
    env = prepare()
    https_port = free_port()
    stack = ComposeStack(PROJECT, {
        "COMPOSE_FILES": "compose.yaml",
        "HAPROXY_HTTPS_PORT": f"127.0.0.1:{https_port}",
        "HAPROXY_HTTP_PORT": f"127.0.0.1:{free_port()}",
    }, https_port, engine="docker")
    assert stack.env["DOCKER_HOST"] == env["DOCKER_ENGINE_HOST"]
    runs = []
    for index in range(args.runs):
        marks = one_run(stack)
        runs.append(marks)
        print(f"run {index + 1}: up returned {marks['up']:.2f} s, root {marks['root']:.2f} s,"
              f" verified certificate {marks['verified']:.2f} s", flush=True)
    verified = [marks["verified"] for marks in runs]
    print(f"\nfrom `up -d` to the first verified certificate through HAProxy, {args.runs} runs:"
          f" median {statistics.median(verified):.2f} s, min {min(verified):.2f} s,"
          f" max {max(verified):.2f} s")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    subprocess.run(["bash", str(SCRIPTS / "docker-engine.sh"), "stop-if-idle"], env=env,
                   capture_output=True, timeout=180, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
