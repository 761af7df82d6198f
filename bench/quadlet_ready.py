"""How HAProxy's unit should wait for cert-sidecar under systemd: READY=1 from cert-sidecar
(`Notify=true`, what docker/quadlet/ ships) against podman's `Notify=healthy` with
`HealthCmd=cert-sidecar healthcheck`, measured on the quadlet test's host.

For each mode, `--runs` times from nothing (no certificate, no account, step-ca already up):
the seconds from `systemctl start haproxy.service` to the start job's end (HAProxy running), and
to HAProxy serving a certificate for SYSTEM_URL that verifies against step-ca's root.

    .venv/bin/python bench/quadlet_ready.py [--runs 3]

Needs what tests/quadlet needs (root, podman, debootstrap); builds the same host and images.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.quadlet.conftest import STAND_IN, TEST_DROP_INS  # noqa: E402
from tests.quadlet.host import IMAGES, RELEASE, SCRIPTS, SRC, Host  # noqa: E402

MODES = {
    "ready": "",  # the shipped unit: Notify=true, READY=1 once a file is on disk
    "healthy": "[Container]\nNotify=healthy\nHealthInterval=2s\nHealthStartPeriod=0s\n",
}


def script(*args: str) -> str:
    done = subprocess.run(["bash", *args], capture_output=True, text=True, check=True)
    return done.stdout


def once(host: Host, mode: str) -> tuple[float, float | None]:
    host.sh(
        "systemctl stop haproxy.service cert-sidecar.service cert-sidecar-prepare.service"
        " haproxy-certs-volume.service cert-sidecar-state-volume.service; "
        "podman volume rm --force haproxy-certs cert-sidecar-state >/dev/null; "
        "rm -f /etc/containers/systemd/cert-sidecar.container.d/80-bench.conf"
    )
    if MODES[mode]:
        host.sh(
            "cat > /etc/containers/systemd/cert-sidecar.container.d/80-bench.conf <<'EOF'\n"
            f"{MODES[mode]}EOF"
        )
    host.sh("systemctl daemon-reload")
    start = time.monotonic()
    started = host.sh("timeout 300 systemctl start haproxy.service", check=False)
    job_done = time.monotonic() - start
    if started.returncode != 0:
        return job_done, None
    end = start + 300
    while time.monotonic() < end:
        if host.served() is not None:
            return job_done, time.monotonic() - start
        time.sleep(0.2)
    return job_done, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    script(str(SCRIPTS / "build-host.sh"))
    archive = Path(script(str(SCRIPTS / "build-images.sh")).strip().splitlines()[-1])
    name = f"cert-sidecar-bench-{uuid.uuid4().hex[:8]}"
    host = Host(
        name=name,
        image="localhost/cert-sidecar-test/trixie-systemd:latest",
        storage=REPO / ".cache" / "quadlet" / "storage" / name,
        release_dir=STAND_IN,
        archive=archive,
        unit_dir="/usr/share/containers/systemd",
        log_dir=REPO / ".cache" / "quadlet" / "logs",
    )
    try:
        host.start()
        host.sh(f"podman load --quiet --input {IMAGES}/{archive.name}", timeout=900)
        host.sh(f"{SRC}/tests/quadlet/install-release.sh {RELEASE} /usr/share/containers/systemd")
        for path, text in TEST_DROP_INS.items():
            target = f"/etc/containers/systemd/{path}"
            host.sh(f"mkdir -p \"$(dirname {target})\" && cat > {target} <<'EOF'\n{text}EOF")
        host.sh(f"cd {SRC} && docker/quadlet/install.sh >/dev/null")
        host.sh(
            "systemctl start step-ca.service opaal.service smd.service bss.service"
            " cloud-init-server.service",
            timeout=600,
        )
        while not host.step_root():
            time.sleep(0.5)
        results: dict[str, list[tuple[float, float | None]]] = {mode: [] for mode in MODES}
        for _ in range(args.runs):
            for mode in MODES:
                results[mode].append(once(host, mode))
        print(f"{'mode':<8} {'start job (s)':>24} {'verified on :8443 (s)':>28}")
        for mode, runs in results.items():
            jobs = [job for job, _ in runs]
            served = [s for _, s in runs if s is not None]
            failed = len(runs) - len(served)
            print(
                f"{mode:<8} {statistics.median(jobs):>10.1f} ({min(jobs):.1f}-{max(jobs):.1f})"
                f" {statistics.median(served) if served else float('nan'):>14.1f}"
                + (f" ({min(served):.1f}-{max(served):.1f})" if served else "")
                + (f"  {failed} of {len(runs)} never served" if failed else "")
            )
    finally:
        host.stop()
        subprocess.run(["rm", "-rf", str(host.storage)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
