"""docker/quadlet/install.sh refuses bad input with one line, exit 2, and changes nothing.

Run on the test machine itself against temporary copies of the RPM's directories (the
installer takes their paths from the environment), so each case is cheap; the whole install is
exercised under a real systemd in test_release_rpm.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.quadlet.host import REPO_ROOT

INSTALL = REPO_ROOT / "docker" / "quadlet" / "install.sh"
RELEASE = REPO_ROOT / "tests" / "quadlet" / "release"


@pytest.fixture
def rpm(tmp_path: Path) -> Path:
    """A host's RPM directories in miniature: units in /usr/share, configs, an empty /etc."""
    vendor = tmp_path / "usr-share-containers-systemd"
    vendor.mkdir()
    for unit in ("haproxy.container", "step-ca.container", "acme-deploy.container"):
        shutil.copy(RELEASE / "systemd" / "containers" / unit, vendor)
    configs = tmp_path / "configs"
    shutil.copytree(RELEASE / "systemd" / "configs", configs)
    (tmp_path / "etc-containers-systemd").mkdir()
    (tmp_path / "etc-systemd-system").mkdir()
    return tmp_path


def run(rpm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "QUADLET_DIR": str(rpm / "etc-containers-systemd"),
        "VENDOR_QUADLET_DIR": str(rpm / "usr-share-containers-systemd"),
        "SYSTEMD_DIR": str(rpm / "etc-systemd-system"),
        "OPENCHAMI_CONFIG_DIR": str(rpm / "configs"),
        "CERT_SIDECAR_INSTALL_RECORD": str(rpm / "record"),
    }
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file()
        else "dir"
        for path in sorted(root.rglob("*"))
    }


def refused(rpm: Path, *args: str, says: str) -> None:
    before = snapshot(rpm)
    result = run(rpm, *args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cert-sidecar install: "), lines[0]
    assert says in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert snapshot(rpm) == before, "a refused install changed files"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_no_rpm_installed(rpm: Path) -> None:
    shutil.rmtree(rpm / "usr-share-containers-systemd")
    refused(rpm, "--dry-run", says="install the openchami RPM first")


def test_units_in_etc_are_found_too(rpm: Path) -> None:
    # The RPM before v0.2 kept its units in /etc/containers/systemd.
    for unit in (rpm / "usr-share-containers-systemd").iterdir():
        shutil.move(unit, rpm / "etc-containers-systemd")
    # Past the unit check, the next one fails: the image named below does not exist.
    refused(
        rpm, "--dry-run", "--image", "localhost/no-such-image:x", says="localhost/no-such-image:x"
    )


def test_missing_system_url(rpm: Path) -> None:
    env = rpm / "configs" / "openchami.env"
    env.write_text(
        "\n".join(
            line for line in env.read_text().splitlines() if not line.startswith("SYSTEM_URL=")
        )
    )
    refused(rpm, "--dry-run", says="no SYSTEM_URL=")


@pytest.mark.parametrize(
    "value", ["demo", "", "demo .openchami.cluster", "-x.example", "a_b.example"]
)
def test_system_url_that_is_not_a_host_name(rpm: Path, value: str) -> None:
    edit(
        rpm / "configs" / "openchami.env",
        "SYSTEM_URL=demo.openchami.cluster",
        f"SYSTEM_URL={value}",
    )
    refused(rpm, "--dry-run", says="SYSTEM_URL")


def test_missing_haproxy_cfg(rpm: Path) -> None:
    (rpm / "configs" / "haproxy.cfg").unlink()
    refused(rpm, "--dry-run", says="haproxy.cfg is missing")


def test_hand_edited_haproxy_cfg_without_a_global_section(rpm: Path) -> None:
    edit(rpm / "configs" / "haproxy.cfg", "\nglobal\n", "\n#global\n")
    refused(rpm, "--dry-run", says="0 'global' sections")


def test_hand_edited_haproxy_cfg_with_two_global_sections(rpm: Path) -> None:
    cfg = rpm / "configs" / "haproxy.cfg"
    cfg.write_text(cfg.read_text() + "\nglobal\n  maxconn 100\n")
    refused(rpm, "--dry-run", says="2 'global' sections")


def test_haproxy_cfg_that_does_not_load_the_certs_directory(rpm: Path) -> None:
    edit(
        rpm / "configs" / "haproxy.cfg", "crt /etc/haproxy/certs/", "crt /etc/ssl/private/site.pem"
    )
    refused(rpm, "--dry-run", says="ssl crt /etc/haproxy/certs/")


def test_haproxy_cfg_with_someone_elses_socket_line(rpm: Path) -> None:
    edit(
        rpm / "configs" / "haproxy.cfg",
        "\nglobal\n",
        "\nglobal\n  stats socket /var/lib/haproxy-run/admin.sock mode 600 level admin\n",
    )
    refused(rpm, "--dry-run", says="did not add")


def test_image_not_in_podmans_storage(rpm: Path) -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (scripts/install-deps.sh)")
    refused(rpm, "--image", "localhost/no-such-image:x", "--dry-run", says="podman load")


def test_uninstall_without_an_install(rpm: Path) -> None:
    refused(rpm, "--uninstall", says="nothing to undo")


@pytest.mark.parametrize("args", [("--bogus",), ("--image",)])
def test_bad_arguments(rpm: Path, args: tuple[str, ...]) -> None:
    refused(rpm, *args, says="")
