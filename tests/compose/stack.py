"""Drive the compose stack for tests/compose/, under podman or the Docker Engine of
scripts/compose/docker-engine.sh: docker-compose through scripts/compose/stack.sh, container
state through the engine's own CLI, TLS checks from the host.

Kept apart from the test modules so the checks read as a list of claims about the stack.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509

# Re-exported for the compose tests: skip locally, fail under CI.
from tests.peers.require import require  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts" / "compose"

T = TypeVar("T")

# Every shared volume's owner and mode, whatever the engine and the order of creation
# (docker/README.md, "Shared volumes"): the writer's image sets it up.
VOLUME_RULES = {
    "step-root-ca": "1000:1000 755",  # step-ca's user writes the root; others read it
    "haproxy-certs": "10001:99 2750",  # cert-sidecar writes, HAProxy's group reads
    "haproxy-run": "10001:99 2770",  # HAProxy (group 99) makes its socket, cert-sidecar uses it
    "state": "10001:99 750",  # cert-sidecar's own
    "step-ca": "1000:1000 755",  # step-ca's own
}

ENGINES = ("podman", "docker")


def docker_cli() -> str:
    """Debian's docker client (the engine's own version) when there, else any on the PATH."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def free_port() -> int:
    """An ephemeral port that is free on 127.0.0.1 now (podman publishes on it next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(
    what: str, probe: Callable[[], T | None], *, deadline_s: float, interval_s: float = 1.0
) -> T:
    """Poll `probe` until it returns something other than None; fail after the deadline.

    The deadline only bounds a hang: no check depends on how fast the machine is.
    """
    end = time.monotonic() + deadline_s
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
        except (OSError, ssl.SSLError, subprocess.SubprocessError, ValueError) as error:
            last_error, result = error, None
        if result is not None:
            return result
        if time.monotonic() > end:
            raise AssertionError(
                f"timed out after {deadline_s:.0f} s waiting for {what}"
                f" (last error: {last_error!r})"
            )
        time.sleep(interval_s)


def scripts_environment() -> dict[str, str]:
    """This process's environment plus what scripts/compose/env.sh sets (CONTAINERS_CONF with
    runc and the sandbox's ulimits, DOCKER_HOST, image names): podman run from Python must see
    the same settings as podman run from the scripts."""
    dump = subprocess.run(
        ["bash", "-c", f'source "{SCRIPTS / "env.sh"}" && env -0'],
        check=True,
        capture_output=True,
        timeout=30,
    )
    pairs = (item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)
    return dict(pairs)


@dataclass(frozen=True)
class Served:
    """What HAProxy's published port presented for one name, verified against the root."""

    name: str
    certificate: x509.Certificate
    status_line: str
    body: str

    @property
    def serial(self) -> int:
        return self.certificate.serial_number


class ComposeStack:
    """One compose project of compose.yaml (plus overrides) on the local images, under one
    engine: "podman" (its Docker API service) or "docker" (docker-engine.sh's engine)."""

    def __init__(
        self, project: str, env: Mapping[str, str], https_port: int, engine: str = "podman"
    ) -> None:
        assert engine in ENGINES, engine
        self.engine = engine
        self.project = project
        self.https_port = https_port
        self.env = {
            **scripts_environment(),
            **env,
            "COMPOSE_PROJECT_NAME": project,
            "STACK_ENGINE": engine,
        }
        if engine == "docker":
            self.env["DOCKER_HOST"] = self.env["DOCKER_ENGINE_HOST"]
        self.sidecar_image = self.env["CERT_SIDECAR_TEST_IMAGE"]
        self.up_started = 0.0  # monotonic time of `up`, set by the fixture
        self.serving = False  # set once every name was served a valid certificate

    # -- processes -------------------------------------------------------------------------

    def run(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(args),
            check=False,
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run("bash", str(SCRIPTS / "stack.sh"), *args, timeout=timeout, check=check)

    def cli(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The engine's own CLI: podman, or the docker client on the engine's socket."""
        if self.engine == "podman":
            return self.run("podman", *args, timeout=timeout, check=check)
        return self.run(
            docker_cli(), "-H", self.env["DOCKER_HOST"], *args, timeout=timeout, check=check
        )

    # The podman e2e was written against podman's CLI; both CLIs take the same arguments here.
    podman = cli

    # -- containers and volumes ------------------------------------------------------------

    def container(self, service: str) -> str:
        """The container id of a service (one replica each)."""
        out = self.compose("ps", "-q", service).stdout.split()
        assert len(out) == 1, f"expected one container for {service}, got {out}"
        return out[0]

    def state(self, service: str) -> dict[str, object]:
        data = json.loads(self.podman("inspect", self.container(service)).stdout)[0]
        state: dict[str, object] = data["State"]
        state["RestartCount"] = data.get("RestartCount", 0)
        return state

    def health(self, service: str) -> str:
        state = self.state(service)
        health = state.get("Health") or state.get("Healthcheck") or {}
        assert isinstance(health, dict)
        return str(health.get("Status", ""))

    def volume_path(self, volume: str) -> Path:
        mountpoint = self.cli(
            "volume", "inspect", f"{self.project}_{volume}", "--format", "{{.Mountpoint}}"
        ).stdout.strip()
        return Path(mountpoint)

    def volume_owners(self) -> dict[str, str]:
        """Owner and mode of each shared volume's top directory, as "uid:gid mode" (octal)."""
        found = {}
        for volume in VOLUME_RULES:
            info = self.volume_path(volume).stat()
            found[volume] = f"{info.st_uid}:{info.st_gid} {info.st_mode & 0o7777:o}"
        return found

    def root_pem(self) -> bytes:
        """The CA root as published in the step-root-ca volume: the test's only trust anchor."""
        return (self.volume_path("step-root-ca") / "root_ca.crt").read_bytes()

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, args in (
            ("containers", ("ps", "-a", "-q")),
            ("volumes", ("volume", "ls", "-q")),
            ("networks", ("network", "ls", "-q")),
        ):
            found[kind] = self.cli(*args, "--filter", label).stdout.split()
        return found

    def force_down(self) -> None:
        """Remove the project whatever its state. `down -v` alone can miss a container that
        is between two restarts of a crash loop, and then cannot remove its network."""
        self.compose("down", "-v", "--remove-orphans", check=False)
        containers = self.leftovers()["containers"]
        if containers:
            self.cli("rm", "--force", *containers, check=False)
            self.compose("down", "-v", "--remove-orphans", check=False)

    # -- TLS from the host -----------------------------------------------------------------

    def served(self, name: str, root_pem: bytes) -> Served:
        """Connect to HAProxy's published port with SNI `name`, trusting only `root_pem`,
        verify chain and name, and make one HTTP request through the TLS connection."""
        context = ssl.create_default_context(cadata=root_pem.decode())
        with (
            socket.create_connection(("127.0.0.1", self.https_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
        response = b"".join(chunks).decode(errors="replace")
        head, _, body = response.partition("\r\n\r\n")
        return Served(name, x509.load_der_x509_certificate(der), head.splitlines()[0], body)
