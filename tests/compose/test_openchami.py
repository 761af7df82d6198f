"""The OpenCHAMI drop-in (docker/openchami/) on a real Docker Engine, against a stack shaped like
OpenCHAMI's quickstart (tests/compose/openchami/, issue 7 item 4). In file order, one stack:

1. before anything runs, `haproxy-certs` already exists, root-owned, holding a 0600 PEM that
   root wrote (what acme.sh left); cert-sidecar run as its non-root user refuses it in one line;
2. the opt-in one-time fix (`run --rm cert-sidecar-volumes`) gives the volume to cert-sidecar's
   user and HAProxy's group 65532;
3. `up --no-start` + `start` (Compose v2's order) with the override: acme.sh's services do
   not run; HAProxy (uid/gid 65532, `bind :443 ssl crt /etc/haproxy/certs/ strict-sni`)
   serves, on its published port, a certificate that verifies against the step-ca root alone,
   which step-ca (only on cert-internal, as root) copied into its volume with mode 0444;
4. 60-second certificates are renewed and loaded into the same HAProxy process through the
   second `stats socket` on the shared volume: the served serial changes, HAProxy never
   restarts;
5. `down -v` leaves nothing of the project behind.

Needs root, dockerd, docker-compose, podman (the stand-in images are built with podman and moved
into the engine: scripts/compose/build-images.sh, docker-engine.sh). Under CI=true a missing
tool fails the test instead of skipping it. Run:
.venv/bin/python -m pytest -m compose tests/compose/test_openchami.py -s
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.compose.stack import (
    REPO_ROOT,
    SCRIPTS,
    ComposeStack,
    Served,
    docker_cli,
    free_port,
    require,
    wait_for,
)

pytestmark = pytest.mark.compose

PROJECT = "cert-sidecar-openchami"
FQDN = "foobar.openchami.cluster"  # OpenCHAMI's quickstart default SYSTEM_NAME.SYSTEM_DOMAIN
HAPROXY_ID = "65532"  # uid and gid of cgr.dev/chainguard/haproxy
SIDECAR_UID = "10001"
STACK_DIR = "tests/compose/openchami"
FILES = (
    f"{STACK_DIR}/base.yml",
    f"{STACK_DIR}/autocert.yml",
    f"{STACK_DIR}/haproxy-api-gateway.yml",
    "docker/openchami/cert-sidecar.yml",
)
SIDECAR_IMAGE = "localhost/cert-sidecar:openchami-test"
KEEPALIVE = f"{PROJECT}-keepalive"  # holds the shared engine up (hold_engine); no compose label
LIFETIME = "60s"
# Deadlines bound hangs only: first certificate (image start, CA init, one order) and one
# renewal of a 60-second certificate (due after 2/3 of its backdated 2-minute validity).
FIRST_CERT_DEADLINE = 180.0
RENEWAL_DEADLINE = 240.0


class DockerStack(ComposeStack):
    """ComposeStack on docker-engine.sh's engine, with OpenCHAMI's compose file list (the
    quickstart-shaped files, then the drop-in) instead of compose.yaml."""

    def __init__(self, env: dict[str, str], https_port: int) -> None:
        super().__init__(PROJECT, env, https_port, engine="docker")

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for name in FILES for arg in ("-f", str(REPO_ROOT / name))]
        return self.run(
            "docker-compose",
            "--project-directory",
            str(REPO_ROOT / STACK_DIR),
            *files,
            *args,
            timeout=timeout,
            check=check,
        )


def require_tools() -> None:
    missing = [
        tool
        for tool in ("dockerd", "docker-compose", "podman", "debootstrap")
        if shutil.which(tool) is None
    ]
    require(
        not missing,
        f"the OpenCHAMI compose test needs {', '.join(missing)} (scripts/install-deps.sh)",
    )
    require(os.geteuid() == 0, "the OpenCHAMI compose test runs dockerd and podman as root")


def acme_sh_leftover() -> bytes:
    """A PEM like acme.sh's haproxy deploy hook wrote: key and chain for the FQDN, from a CA
    that is not step-ca (so cert-sidecar must replace it, not keep it)."""
    cert = trustme.CA().issue_cert(FQDN)
    return cert.private_key_and_cert_chain_pem.bytes()


def create_root_owned_volume(stack: DockerStack) -> None:
    name = f"{PROJECT}_haproxy-certs"
    stack.cli(
        "volume",
        "create",
        "--label",
        f"com.docker.compose.project={PROJECT}",
        "--label",
        "com.docker.compose.volume=haproxy-certs",
        name,
    )
    pem = f"/certs/{FQDN}.pem"
    result = subprocess.run(
        [
            docker_cli(),
            "-H",
            stack.env["DOCKER_HOST"],
            "run",
            "--rm",
            "-i",
            "--user",
            "0:0",
            "--network",
            "none",
            "-v",
            f"{name}:/certs",
            stack.env["PYTHON_BASE_TAG"],
            "sh",
            "-c",
            f"umask 077 && cat > {pem}",
        ],
        input=acme_sh_leftover(),
        env=stack.env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def stack() -> Iterator[DockerStack]:
    require_tools()
    https_port = free_port()
    env = {
        "SYSTEM_NAME": FQDN.split(".", 1)[0],
        "SYSTEM_DOMAIN": FQDN.split(".", 1)[1],
        "STEP_CA_CERT_LIFETIME": LIFETIME,
        "HAPROXY_HTTPS_PORT": f"127.0.0.1:{https_port}",
        "HAPROXY_HTTP_PORT": f"127.0.0.1:{free_port()}",
        "CERT_SIDECAR_IMAGE": SIDECAR_IMAGE,
    }
    stack = DockerStack(env, https_port)
    engine = str(SCRIPTS / "docker-engine.sh")
    engine_was_running = stack.run("bash", engine, "status", check=False).returncode == 0
    stack.env.update(
        STEP_CA_IMAGE=stack.env["STEP_CA_TEST_IMAGE"],
        HAPROXY_IMAGE=stack.env["HAPROXY_TEST_IMAGE"],
        ACME_SH_IMAGE=stack.env["PYTHON_BASE_TAG"],
    )
    stack.run("bash", str(SCRIPTS / "build-images.sh"), timeout=1200)
    try:
        hold_engine(stack, engine)
        # The image as docker/openchami/README.md builds it (HAProxy's group is 65532), from
        # the offline build context build-images.sh assembles (no index inside containers).
        stack.cli(
            "build",
            "--quiet",
            "--build-arg",
            f"BASE_IMAGE={stack.env['PYTHON_BASE_TAG']}",
            "--build-arg",
            f"HAPROXY_GID={HAPROXY_ID}",
            "--tag",
            SIDECAR_IMAGE,
            stack.env["CERT_SIDECAR_TEST_CONTEXT"],
            timeout=900,
        )
        stack.force_down()  # a run that died half-way must not leave its volumes to this one
        create_root_owned_volume(stack)
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--timestamps", check=False)
        log_file = REPO_ROOT / ".cache" / "compose" / "last-openchami-stack.log"
        log_file.write_text(logs.stdout + logs.stderr)
        stack.force_down()
        for volume in stack.leftovers()["volumes"]:
            stack.cli("volume", "rm", "--force", volume, check=False)
        stack.cli("rm", "--force", KEEPALIVE, check=False)
        if not engine_was_running:
            # Only an engine this test started; someone else's may be between `start` and
            # its first container.
            stack.run("bash", engine, "stop-if-idle", check=False)


def hold_engine(stack: DockerStack, engine: str) -> None:
    """Start the shared engine, load the stand-in images, and keep one container on it for as
    long as this stack lives. Other tests' clean-up (`docker-engine.sh stop-if-idle`) stops an
    engine that has no container, even while this test is between `start` and its first one
    (seen: the engine stopped during this test's image load)."""
    for _attempt in range(3):
        stack.run("bash", engine, "start", timeout=120)
        if stack.run("bash", engine, "load-local", timeout=600, check=False).returncode != 0:
            continue
        stack.cli("rm", "--force", KEEPALIVE, check=False)
        kept = stack.cli(
            "run",
            "--detach",
            "--name",
            KEEPALIVE,
            "--network",
            "none",
            stack.env["PYTHON_BASE_TAG"],
            "sleep",
            "infinity",
            check=False,
        )
        if kept.returncode == 0:
            return
    raise AssertionError("could not start docker-engine.sh's engine and keep it running")


def owner_mode(path: Path) -> tuple[str, str]:
    info = path.stat()
    return f"{info.st_uid}:{info.st_gid}", f"{stat.S_IMODE(info.st_mode):04o}"


def served(stack: DockerStack) -> Served:
    return stack.served(FQDN, stack.root_pem())


# -- 1. the pre-existing volume --------------------------------------------------------------


def test_a_root_owned_certs_volume_is_refused_in_one_line(stack: DockerStack) -> None:
    certs = stack.volume_path("haproxy-certs")
    assert owner_mode(certs)[0] == "0:0"
    assert owner_mode(certs / f"{FQDN}.pem") == ("0:0", "0600")
    result = stack.compose("run", "--rm", "--no-deps", "-T", "cert-sidecar", check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("cert-sidecar:")]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "/etc/haproxy/certs" in lines[0] and "not writable" in lines[0], lines[0]
    # Nothing was changed in the volume.
    assert sorted(p.name for p in certs.iterdir()) == [f"{FQDN}.pem"]


def test_the_opt_in_fix_gives_the_volume_to_the_sidecar_and_haproxy_group(
    stack: DockerStack,
) -> None:
    stack.compose("run", "--rm", "-T", "cert-sidecar-volumes")
    certs = stack.volume_path("haproxy-certs")
    assert owner_mode(certs) == (f"{SIDECAR_UID}:{HAPROXY_ID}", "2750")
    assert owner_mode(certs / f"{FQDN}.pem") == (f"{SIDECAR_UID}:{HAPROXY_ID}", "0640")
    assert owner_mode(stack.volume_path("cert-sidecar-run")) == (
        f"{SIDECAR_UID}:{HAPROXY_ID}",
        "2770",
    )
    # Idempotent: a second run changes nothing and succeeds.
    stack.compose("run", "--rm", "-T", "cert-sidecar-volumes")
    assert owner_mode(certs) == (f"{SIDECAR_UID}:{HAPROXY_ID}", "2750")


# -- 2. the stack with the override ----------------------------------------------------------


def test_haproxy_serves_a_verified_step_ca_certificate(stack: DockerStack) -> None:
    started = time.monotonic()
    # Compose v2's order, which OpenCHAMI's `docker compose` uses: every container is created
    # before any starts (docker-compose 1.29 does the same with these two commands).
    stack.compose("up", "--no-start")
    stack.compose("start")
    first = wait_for(
        f"HAProxy to serve a step-ca certificate for {FQDN}",
        lambda: served(stack),
        deadline_s=FIRST_CERT_DEADLINE,
    )
    print(
        f"\nfirst verified certificate through HAProxy {time.monotonic() - started:.1f} s "
        "after `up --no-start`"
    )
    names = first.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [FQDN]
    assert first.status_line.endswith("200 OK"), first.status_line
    # acme.sh's services were replaced, not run: no container, and nothing owns the FQDN name.
    for service in ("acme-register", "acme-deploy"):
        assert stack.compose("ps", "-q", service).stdout.strip() == ""
    assert stack.cli("ps", "-a", "-q", "--filter", f"name=^/{FQDN}$").stdout.strip() == ""


def test_the_shape_is_openchamis(stack: DockerStack) -> None:
    # The root as local-ca publishes it: written by root, mode 0444.
    assert owner_mode(stack.volume_path("step-root-ca") / "root_ca.crt") == ("0:0", "0444")
    haproxy = json.loads(stack.cli("inspect", stack.container("haproxy")).stdout)[0]
    assert haproxy["Config"]["User"] == f"{HAPROXY_ID}:{HAPROXY_ID}"
    top = stack.cli("top", stack.container("haproxy"), "-o", "pid,uid,gid,comm").stdout
    assert any(
        line.split()[1:3] == [HAPROXY_ID, HAPROXY_ID] and "haproxy" in line
        for line in top.splitlines()
    ), top
    # step-ca is on cert-internal only; cert-sidecar answers to the FQDN there.
    step_ca = json.loads(stack.cli("inspect", stack.container("step-ca")).stdout)[0]
    assert list(step_ca["NetworkSettings"]["Networks"]) == [f"{PROJECT}_cert-internal"]
    sidecar = json.loads(stack.cli("inspect", stack.container("cert-sidecar")).stdout)[0]
    aliases = sidecar["NetworkSettings"]["Networks"][f"{PROJECT}_cert-internal"]["Aliases"]
    assert FQDN in aliases
    pem = stack.volume_path("haproxy-certs") / f"{FQDN}.pem"
    assert owner_mode(pem) == (f"{SIDECAR_UID}:{HAPROXY_ID}", "0640")
    assert owner_mode(stack.volume_path("cert-sidecar-run") / "admin.sock")[0] == (
        f"{HAPROXY_ID}:{HAPROXY_ID}"
    )


def test_renewals_are_loaded_into_the_running_haproxy(stack: DockerStack) -> None:
    before = served(stack)
    state = stack.state("haproxy")
    started_at, restarts = state.get("StartedAt"), state.get("RestartCount")

    def renewal() -> Served | None:
        now = served(stack)
        return now if now.serial != before.serial else None

    renewed = wait_for(
        "a renewed certificate through HAProxy", renewal, deadline_s=RENEWAL_DEADLINE
    )
    assert renewed.certificate.not_valid_after_utc > before.certificate.not_valid_after_utc
    state = stack.state("haproxy")
    assert (state.get("StartedAt"), state.get("RestartCount")) == (started_at, restarts)
    logs = stack.compose("logs", "--no-color", "cert-sidecar").stdout
    updates = [
        json.loads(line.split("|", 1)[1])
        for line in logs.splitlines()
        if '"haproxy_updated"' in line
    ]
    # Loaded through the runtime API (the shared second socket), not by a restart.
    assert any(
        event.get("mode") == "runtime-api"
        and event.get("error") is None
        and int(event.get("serial") or "0", 16) == renewed.serial
        for event in updates
    ), updates[-3:]


def test_down_leaves_nothing(stack: DockerStack) -> None:
    stack.compose("down", "-v", "--remove-orphans")
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
