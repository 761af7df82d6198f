"""A systemd host for the quadlet test: Debian trixie (systemd 257, podman 5.4) booted with
systemd as PID 1 in a privileged container of the test machine's podman, rootful podman inside.

Everything the test claims is checked from inside the host, the way an operator would: with
`systemctl`, `journalctl`, `podman` and a TLS client on the host's own published port.

Facts this rests on (shared/TEST-PEERS.md, checked here): the outer podman needs the runc
runtime and the sandbox's ulimits; the inner podman keeps its storage on a directory of the
test machine (overlay on overlay does not work); images come in with `podman load`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts" / "quadlet"
# Where the test mounts things inside the host.
SRC = "/src"  # this checkout, read-only: the documented commands run from here
RELEASE = "/release"  # the OpenCHAMI/release tree under test, read-only
IMAGES = "/images"  # the image archive

# The host's name is the RPM's default system name: its bootstrap takes SYSTEM_URL from it.
FQDN = "demo.openchami.cluster"

# A TLS client run inside the host: the serial HAProxy serves for a name on :8443, verified
# against step-ca's root and the name, or the error. One line of JSON.
_PROBE = r"""
import json, socket, ssl, sys
name, root = sys.argv[1], sys.argv[2]
try:
    context = ssl.create_default_context(cafile=root)
    with socket.create_connection(("127.0.0.1", 8443), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    from hashlib import sha256
    import subprocess
    text = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial", "-enddate"],
                          input=der, capture_output=True, check=True).stdout.decode()
    fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
    print(json.dumps({"serial": fields["serial"].upper(), "not_after": fields["notAfter"]}))
except Exception as error:
    print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
"""


def wait_for(
    what: str, probe: Callable[[], T | None], *, deadline_s: float, interval_s: float = 1.0
) -> T:
    """Poll until `probe` returns something other than None. The deadline only bounds a hang."""
    end = time.monotonic() + deadline_s
    last: object = None
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what} ({last})")
        time.sleep(interval_s)


@dataclass
class Served:
    serial: str
    not_after: str


@dataclass
class Host:
    name: str
    image: str
    storage: Path
    release_dir: Path
    archive: Path
    unit_dir: str
    log_dir: Path
    started: bool = field(default=False, init=False)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["podman", "rm", "--force", "--time", "0", self.name], check=False, capture_output=True
        )
        run = [
            "podman", "--runtime", "runc", "run", "--detach", "--name", self.name,
            "--privileged", "--systemd=always", "--hostname", FQDN,
            "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
            "--volume", f"{self.storage}:/var/lib/containers",
            "--volume", f"{REPO_ROOT}:{SRC}:ro",
            "--volume", f"{self.release_dir}:{RELEASE}:ro",
            "--volume", f"{self.archive.parent}:{IMAGES}:ro",
            self.image, "/sbin/init",
        ]  # fmt: skip
        subprocess.run(run, check=True, capture_output=True, text=True)
        self.started = True
        wait_for("systemd to boot", self._booted, deadline_s=120)

    def _booted(self) -> bool | None:
        state = self.sh("systemctl is-system-running", check=False).stdout.strip()
        return True if state in ("running", "degraded") else None

    def stop(self) -> None:
        if not self.started:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        journal = self.sh("journalctl --no-pager -o short-precise", check=False, timeout=120)
        (self.log_dir / f"{self.name}.journal.txt").write_text(journal.stdout)
        subprocess.run(
            ["podman", "rm", "--force", "--time", "5", self.name], check=False, capture_output=True
        )
        self.started = False

    # -- commands inside the host --------------------------------------------------------------

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash script inside the host as root; a failure shows its output."""
        result = subprocess.run(
            [
                "podman",
                "exec",
                "-e",
                "PODMAN_IGNORE_CGROUPSV1_WARNING=1",
                self.name,
                "bash",
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the host, `{script}` exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {shlex.quote(unit)} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def active(self, unit: str) -> bool:
        return self.sh(f"systemctl is-active --quiet {unit}", check=False).returncode == 0

    def container_pid(self, container: str) -> str:
        return self.sh(f"podman inspect --format '{{{{.State.Pid}}}}' {container}").stdout.strip()

    def container_id(self, container: str) -> str:
        return self.sh(f"podman inspect --format '{{{{.Id}}}}' {container}").stdout.strip()

    def step_root(self) -> bool:
        """Copy step-ca's root out of its volume to /run/quadlet-test/root_ca.crt, where the
        probes read it; False while step-ca has not published it yet."""
        result = self.sh(
            "mkdir -p /run/quadlet-test && podman volume mount step-root-ca >/dev/null"
            " && dir=\"$(podman volume inspect --format '{{.Mountpoint}}' step-root-ca)\""
            ' && cp "$dir/root_ca.crt" /run/quadlet-test/root_ca.crt',
            check=False,
        )
        return result.returncode == 0

    def served(self, name: str = FQDN) -> Served | None:
        """What HAProxy serves on :8443 for `name`, verified against step-ca's root; else None."""
        out = self.sh(
            f"python3 -c {shlex.quote(_PROBE)} {shlex.quote(name)} /run/quadlet-test/root_ca.crt",
            check=False,
        ).stdout.strip()
        try:
            answer = json.loads(out.splitlines()[-1])
        except (ValueError, IndexError):
            return None
        if "serial" not in answer:
            return None
        return Served(answer["serial"], answer["not_after"])

    def journal(self, unit: str, since: str = "") -> str:
        since_arg = f"--since {shlex.quote(since)}" if since else ""
        return self.sh(f"journalctl --no-pager -o cat -u {unit} {since_arg}", check=False).stdout

    def volume_file(self, volume: str, path: str) -> str:
        """`stat` of a file in a named volume: "mode uid:gid"."""
        return self.sh(
            f"dir=\"$(podman volume inspect --format '{{{{.Mountpoint}}}}' {volume})\""
            f" && stat -c '%a %u:%g' \"$dir/{path}\""
        ).stdout.strip()
