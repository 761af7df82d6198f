"""The compose stack on a real Docker Engine (scripts/compose/docker-engine.sh: Debian's
dockerd on its own socket), with the stand-in images podman built, in both orders in which
Compose creates containers:

- "up": `docker-compose up -d` (1.29 creates and starts each service in turn), fresh volumes,
  two certificates and three names (tests/compose/compose.test.yaml);
- "create-start": `up --no-start`, then `start` (Compose v2 creates every container before it
  starts any), on volumes that already exist, empty and root's (as a stack of an earlier
  version left them), with docs/compose.md's "add a name" and "master-cli" overrides (so renewals
  reach HAProxy through its master CLI and a reload).

Each must give every shared volume the owner and mode its writer needs (Docker copies a mount
point's owner and mode into an empty volume at every container creation; docker/README.md),
serve a certificate that verifies against the step-ca root through HAProxy's published port,
report HAProxy healthy by asking the running process, renew 60-second certificates in place
(HAProxy not restarted), and leave nothing after `down -v`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.readme import readme_block
from tests.compose.stack import (
    VOLUME_RULES,
    ComposeStack,
    Served,
    free_port,
    require,
    wait_for,
)

pytestmark = pytest.mark.compose

LIFETIME = "60s"
FIRST_CERT_DEADLINE = 240.0
RENEWAL_DEADLINE = 240.0

ORDERS = {
    # order: (project, documented blocks used as overrides (none: the test override), names,
    #         how cert-sidecar updates HAProxy)
    "up": (
        "cert-sidecar-docker-up",
        (),
        ("demo.openchami.cluster", "api.openchami.cluster", "auth.openchami.cluster"),
        "runtime-api",
    ),
    "create-start": (
        "cert-sidecar-docker-v2",
        ("add-a-name", "master-cli"),
        ("demo.openchami.cluster", "api.openchami.cluster"),
        "master-reload",
    ),
}


class DockerRun:
    def __init__(self, stack: ComposeStack, order: str, names: tuple[str, ...], mode: str) -> None:
        self.stack = stack
        self.order = order
        self.names = names
        self.mode = mode
        self.first_served: dict[str, Served] = {}


@pytest.fixture(scope="module", params=list(ORDERS))
def run(
    request: pytest.FixtureRequest, docker_engine: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockerRun]:
    order: str = request.param
    project, overrides, names, mode = ORDERS[order]
    files = "compose.yaml"
    if not overrides:
        files += ":tests/compose/compose.test.yaml"
    for block in overrides:
        # docs/compose.md's recipes, exactly as written there, as compose overrides.
        path = tmp_path_factory.mktemp(order) / f"{block}.yaml"
        path.write_text(readme_block(block))
        files += f":{path}"
    https_port = free_port()
    env = {
        "COMPOSE_FILES": files,
        "STEP_CA_CERT_LIFETIME": LIFETIME,
        "HAPROXY_HTTPS_PORT": f"127.0.0.1:{https_port}",
        "HAPROXY_HTTP_PORT": f"127.0.0.1:{free_port()}",
    }
    stack = ComposeStack(project, env, https_port, engine="docker")
    stack.force_down()
    try:
        if order == "up":
            stack.up_started = time.monotonic()
            stack.compose("up", "-d")
        else:
            for volume in VOLUME_RULES:
                stack.cli(
                    "volume",
                    "create",
                    "--label",
                    f"com.docker.compose.project={project}",
                    "--label",
                    f"com.docker.compose.volume={volume}",
                    f"{project}_{volume}",
                )
            stack.compose("up", "--no-start")
            stack.up_started = time.monotonic()
            stack.compose("start")
        yield DockerRun(stack, order, names, mode)
    finally:
        if any(stack.leftovers().values()):
            logs = stack.compose("logs", "--no-color", "--timestamps", check=False)
            log_file = Path(stack.env["CACHE_DIR"]) / f"last-test-{project}.log"
            log_file.write_text(logs.stdout + logs.stderr)
            print(f"\ncompose logs of {project}: {log_file}")
        stack.force_down()


def served_all(run: DockerRun) -> dict[str, Served]:
    root = run.stack.root_pem()
    return {name: run.stack.served(name, root) for name in run.names}


def test_shared_volumes_belong_to_their_writers(run: DockerRun) -> None:
    stack = run.stack
    wait_for(
        "step-ca's root in the step-root-ca volume",
        lambda: True if (stack.volume_path("step-root-ca") / "root_ca.crt").exists() else None,
        deadline_s=120,
    )
    assert stack.volume_owners() == VOLUME_RULES


def test_verified_certificate_through_haproxy(run: DockerRun) -> None:
    def all_valid() -> dict[str, Served] | None:
        served = served_all(run)
        return served if all(s.status_line.endswith("200 OK") for s in served.values()) else None

    served = wait_for(
        "a verified certificate for every name", all_valid, deadline_s=FIRST_CERT_DEADLINE
    )
    elapsed = time.monotonic() - run.stack.up_started
    print(
        f"\nDocker Engine, {run.order}: first verified certificate for every name"
        f" {elapsed:.1f} s after {'up' if run.order == 'up' else 'start'}"
    )
    for name, result in served.items():
        assert f"cert-sidecar demo: {name}" in result.body
    run.first_served = served


def test_haproxy_health_is_the_running_process(run: DockerRun) -> None:
    stack = run.stack
    wait_for(
        "HAProxy healthy",
        lambda: True if stack.health("haproxy") == "healthy" else None,
        deadline_s=120,
    )
    # The same check, in the same image, with no HAProxy running: it must say unhealthy
    # (a check of the config file alone would pass here).
    inspected = json.loads(stack.cli("inspect", stack.container("haproxy")).stdout)[0]
    test = inspected["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD" and "haproxy -c" not in " ".join(test), test
    idle = stack.cli(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        test[1],
        stack.env["HAPROXY_TEST_IMAGE"],
        *test[2:],
        check=False,
    )
    assert idle.returncode != 0, idle
    running = stack.cli("exec", stack.container("haproxy"), *test[1:], check=False)
    assert running.returncode == 0, running


def test_renews_in_place(run: DockerRun) -> None:
    require(bool(run.first_served), "no verified certificate was served")
    stack = run.stack
    before = {name: served.serial for name, served in run.first_served.items()}
    haproxy_state = stack.state("haproxy")
    started = (haproxy_state.get("StartedAt"), haproxy_state.get("RestartCount"))
    failures = 0
    seen: dict[str, set[int]] = {name: set() for name in run.names}
    end = time.monotonic() + RENEWAL_DEADLINE
    root = stack.root_pem()
    while time.monotonic() < end:
        for name in run.names:
            try:
                served = stack.served(name, root)
            except OSError as error:  # ssl.SSLError is an OSError
                failures += 1
                print(f"serving check failed for {name}: {error!r}")
                continue
            if not served.status_line.endswith("200 OK"):
                failures += 1
            seen[name].add(served.serial)
        if all(seen[name] - {before[name]} for name in run.names):
            break
        time.sleep(1.0)
    renewed = {name: len(seen[name] - {before[name]}) for name in run.names}
    print(f"\nDocker Engine, {run.order}: renewals seen {renewed}, {failures} failed checks")
    assert all(renewed.values()), (before, seen)
    assert failures == 0
    haproxy_state = stack.state("haproxy")
    assert (haproxy_state.get("StartedAt"), haproxy_state.get("RestartCount")) == started
    # Through the mode this run configured (the master-cli recipe: a master CLI reload).
    logs = stack.cli("logs", stack.container("cert-sidecar"))
    events = [
        json.loads(line)
        for line in (logs.stdout + logs.stderr).splitlines()
        if line.startswith("{") and '"haproxy_updated"' in line
    ]
    # The deploys of new certificates name their mode (a re-deploy of an unchanged one does
    # not).
    modes = {event["mode"] for event in events if "mode" in event}
    assert modes == {run.mode}, events[-3:]


def test_down_v_leaves_nothing(run: DockerRun) -> None:
    run.stack.compose("down", "-v", timeout=180)
    assert run.stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
