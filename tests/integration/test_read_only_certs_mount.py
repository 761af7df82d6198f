"""A certs directory on a read-only mount (``haproxy-certs:/etc/haproxy/certs:ro``) is named as
such (issue 16, item 3), not as an ownership problem whose chown fix changes nothing.

A real read-only bind mount (``mount --bind`` then ``mount -o remount,ro,bind``), as root, the
way a ``:ro`` volume reaches the container; the owner and mode are already right, so only the
mount can be the problem. The command runs as root and as an unprivileged user that owns the
directory (the image's case: uid 10001 owning the volume).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.integration.cli import clean_env
from tests.peers.require import require, require_unprivileged_python

OWNER = 65534


@pytest.fixture
def read_only_certs() -> Iterator[Path]:
    require(os.geteuid() == 0 and shutil.which("mount"), "needs root and mount(8)")
    # Not pytest's tmp_path: that is private to root, and the "owner" case runs as nobody.
    root = Path(tempfile.mkdtemp(prefix="cert-sidecar-ro-mount-"))
    root.chmod(0o755)
    source, target = root / "volume", root / "certs"
    source.mkdir(mode=0o2750)
    target.mkdir()
    for path in (source, target):
        os.chown(path, OWNER, OWNER)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)
        shutil.rmtree(root, ignore_errors=True)


def _check_config(
    certs: Path, state: Path, *, unprivileged: bool
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sidecar", "check-config"]
    if unprivileged:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None
        command = [setpriv, f"--reuid={OWNER}", f"--regid={OWNER}", "--clear-groups", *command]
    env = clean_env(
        {
            "CERT_SIDECAR_DOMAINS": "ro.example",
            "CERT_SIDECAR_CERTS_DIR": str(certs),
            "CERT_SIDECAR_STATE_DIR": str(state),
            "CERT_SIDECAR_CA_BUNDLE": str(certs.parent / "root_ca.crt"),
        }
    )
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd="/", timeout=120, check=False
    )


@pytest.mark.parametrize("unprivileged", [False, True], ids=["root", "owner"])
def test_a_read_only_certs_mount_is_named_as_such(
    read_only_certs: Path, unprivileged: bool
) -> None:
    if unprivileged:
        require_unprivileged_python()
    state = read_only_certs.parent / "state"
    state.mkdir(exist_ok=True)
    trustme.CA().cert_pem.write_to_path(str(read_only_certs.parent / "root_ca.crt"))
    os.chown(state, OWNER, OWNER)
    result = _check_config(read_only_certs, state, unprivileged=unprivileged)
    assert result.returncode == 2, result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"CERT_SIDECAR_CERTS_DIR: {read_only_certs} is not writable" in lines[0]
    assert "read-only mount (remove `:ro`" in lines[0]
    assert "chown" not in lines[0]
