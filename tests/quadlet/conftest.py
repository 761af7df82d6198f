"""Set-up for the quadlet test: the host image, the images it runs, one booted host per module.

`OPENCHAMI_RELEASE_DIR` names a checkout of OpenCHAMI/release to test instead of the stand-in
tree in tests/quadlet/release/; `QUADLET_TEST_UNIT_DIR` where the RPM's units go (default
/usr/share/containers/systemd, as the RPM has them since v0.2.0).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.require import require
from tests.quadlet.host import FQDN, IMAGES, RELEASE, REPO_ROOT, SCRIPTS, SRC, Host

# Building the host and the images on a fresh machine takes minutes; only a hang gets near this.
QUADLET_TIMEOUT = 3600
STAND_IN = REPO_ROOT / "tests" / "quadlet" / "release"
LOG_DIR = REPO_ROOT / ".cache" / "quadlet" / "logs"
VENDOR_UNIT_DIR = "/usr/share/containers/systemd"
ADMIN_UNIT_DIR = "/etc/containers/systemd"
# Test-only settings, as drop-ins: short-lived certificates so that renewals happen within the
# test, and a short watchdog so that a hung sidecar is restarted within it.
TEST_DROP_INS = {
    "step-ca.container.d/90-quadlet-test.conf": (
        "[Container]\nEnvironment=STEP_CA_CERT_LIFETIME=60s\n"
    ),
    "cert-sidecar.container.d/90-quadlet-test.conf": (
        "[Container]\nEnvironment=WATCHDOG_USEC=10000000\n\n[Service]\nWatchdogSec=10\n"
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(QUADLET_TIMEOUT))


def _script(*args: str, timeout: float = 2400) -> str:
    result = subprocess.run(
        ["bash", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result.stdout


def release_dir() -> Path:
    chosen = os.environ.get("OPENCHAMI_RELEASE_DIR")
    return Path(chosen).resolve() if chosen else STAND_IN


@contextlib.contextmanager
def booted_host(unit_dir: str) -> Iterator[Host]:
    """A host with the release tree installed as the RPM does, units in `unit_dir`."""
    missing = [tool for tool in ("podman", "debootstrap") if shutil.which(tool) is None]
    require(not missing, f"the quadlet test needs {', '.join(missing)} (scripts/install-deps.sh)")
    require(os.geteuid() == 0, "the quadlet test runs podman as root")
    release = release_dir()
    assert (release / "systemd" / "containers" / "haproxy.container").is_file(), (
        f"{release} is not an OpenCHAMI/release tree (no systemd/containers/haproxy.container)"
    )
    _script(str(SCRIPTS / "build-host.sh"))
    archive = Path(_script(str(SCRIPTS / "build-images.sh"), str(release)).strip().splitlines()[-1])
    name = f"cert-sidecar-quadlet-{uuid.uuid4().hex[:8]}"
    storage = REPO_ROOT / ".cache" / "quadlet" / "storage" / name
    the_host = Host(
        name=name,
        image=os.environ.get(
            "QUADLET_HOST_IMAGE", "localhost/cert-sidecar-test/trixie-systemd:latest"
        ),
        storage=storage,
        release_dir=release,
        archive=archive,
        unit_dir=unit_dir,
        log_dir=LOG_DIR,
    )
    try:
        the_host.start()
        the_host.sh(f"podman load --quiet --input {IMAGES}/{archive.name}", timeout=900)
        the_host.sh(f"{SRC}/tests/quadlet/install-release.sh {RELEASE} {unit_dir}", timeout=300)
        for path, text in TEST_DROP_INS.items():
            target = f"/etc/containers/systemd/{path}"
            the_host.sh(f"mkdir -p \"$(dirname {target})\" && cat > {target} <<'EOF'\n{text}EOF")
        the_host.sh("systemctl daemon-reload")
        assert the_host.sh("hostname").stdout.strip() == FQDN
        yield the_host
    finally:
        the_host.stop()
        # The inner podman's storage belongs to root-owned overlay mounts that died with the
        # host; removing it frees gigabytes per run.
        shutil.rmtree(storage, ignore_errors=True)


def spec_unit_dir(release: Path) -> str | None:
    """Where the tree's own openchami.spec installs its quadlet units, when it says."""
    spec = release / "openchami.spec"
    if not spec.is_file():
        return None
    match = re.search(
        r"^cp .*systemd/containers/\*\s+%\{buildroot\}(\S+?)/?$", spec.read_text(), re.MULTILINE
    )
    return match[1] if match else None


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """The RPM's units where QUADLET_TEST_UNIT_DIR says, else where the tree's openchami.spec
    puts them, else (the stand-in, shaped as the RPM is since v0.2.0) in /usr/share. A real
    tree goes where its spec says: an older one rewrites its acme.sh units in /etc at install
    (`-d ${SYSTEM_URL}` is otherwise empty), so it only works there."""
    unit_dir = (
        os.environ.get("QUADLET_TEST_UNIT_DIR") or spec_unit_dir(release_dir()) or VENDOR_UNIT_DIR
    )
    with booted_host(unit_dir) as the_host:
        yield the_host


@pytest.fixture(scope="module")
def host_units_in_etc() -> Iterator[Host]:
    """The RPM before v0.2.0: its units in /etc/containers/systemd, beside cert-sidecar's."""
    with booted_host(ADMIN_UNIT_DIR) as the_host:
        yield the_host
