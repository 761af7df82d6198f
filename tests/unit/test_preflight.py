"""sidecar/preflight.py: when cert-sidecar cannot write its directory or use HAProxy's socket,
`run` and the one-shots stop with one line naming the path, its owner and mode, who we are and
the fix (issue 7, item 4).

Root ignores file modes, so every case runs the program as an unprivileged user (`setpriv`),
with uid 10001 and gid 65532: the image's user in OpenCHAMI's HAProxy group. The files live
in a world-traversable temporary directory so that user can reach them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.peers.require import require_unprivileged_python

REPO = Path(__file__).resolve().parents[2]
UID, GID = 10001, 65532
SETPRIV = shutil.which("setpriv")


@pytest.fixture
def work() -> Iterator[Path]:
    # Every case runs `sys.executable` as the unprivileged user: skipped without root, setpriv
    # or an interpreter that user can run, failed for it under CI.
    require_unprivileged_python()
    # Not under pytest's basetemp: /tmp/pytest-of-root is 0700 and reset by every pytest
    # session on the machine, which would lock the unprivileged user out mid-test.
    root = Path(tempfile.mkdtemp(prefix="cert-sidecar-preflight-"))
    try:
        os.chmod(root, 0o755)
        for name in ("certs", "state"):
            (root / name).mkdir()
            os.chown(root / name, UID, GID)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(root / "root_ca.crt"))
        os.chmod(root / "root_ca.crt", 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_sidecar_user(*args: str) -> subprocess.CompletedProcess[str]:
    assert SETPRIV is not None
    return subprocess.run(
        [SETPRIV, f"--reuid={UID}", f"--regid={GID}", "--clear-groups", sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)},
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def root_socket(path: Path, mode: int) -> socket.socket:
    """A listening unix socket owned by root:root with `mode`, like HAProxy's own
    `stats socket /var/run/api.sock` as seen from another uid."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    os.chmod(path, mode)
    return listener


def sidecar_args(work: Path, command: str, socket_path: Path) -> list[str]:
    return [
        "-m",
        "sidecar",
        command,
        "--domain",
        "foobar.openchami.cluster",
        "--ca-bundle",
        str(work / "root_ca.crt"),
        "--certs-dir",
        str(work / "certs"),
        "--state-dir",
        str(work / "state"),
        "--haproxy-socket",
        f"unix:{socket_path}",
        "--reload",
        "runtime-api",
        "--http-listen",
        "127.0.0.1:1",
    ]


@pytest.mark.parametrize("command", ["run", "issue", "renew"])
def test_unusable_haproxy_socket_is_one_line_with_owner_mode_and_fix(
    work: Path, command: str
) -> None:
    path = work / "api.sock"
    with root_socket(path, 0o660):
        line = one_error_line(as_sidecar_user(*sidecar_args(work, command, path)))
    assert line.startswith("cert-sidecar: error: --haproxy-socket: "), line
    assert f"{path} is not writable by uid {UID} gid {GID}" in line, line
    assert "(owner 0:0 mode 0660)" in line, line
    assert f"stats socket {path} mode 660 level admin" in line, line
    # Nothing was written before the check stopped it.
    assert list((work / "certs").iterdir()) == []


def test_socket_behind_an_unsearchable_directory_names_the_directory(work: Path) -> None:
    hidden = work / "run"
    hidden.mkdir(mode=0o700)
    path = hidden / "admin.sock"
    with root_socket(path, 0o666):
        line = one_error_line(as_sidecar_user(*sidecar_args(work, "run", path)))
    assert f"{path} cannot be reached by uid {UID} gid {GID}" in line, line
    assert f"{hidden} is not searchable (owner 0:0 mode 0700)" in line, line
    assert f"chown {UID}:{GID} {hidden} && chmod 2770 {hidden}" in line, line


def test_usable_socket_passes(work: Path) -> None:
    path = work / "admin.sock"
    with root_socket(path, 0o660):
        os.chown(path, 0, GID)  # HAProxy's group, which the sidecar's user is in
        result = as_sidecar_user(*sidecar_args(work, "renew", path), "--dry-run")
    # Past the preflight: renew goes on to the network and fails there (exit 1, not 2),
    # since there is no CA at the default directory URL.
    assert result.returncode != 2, result.stderr
    assert "api.sock" not in result.stderr and "admin.sock" not in result.stderr


PROBE = """
import sys
from pathlib import Path
from sidecar.preflight import Identity, directory_problem
import os
who = Identity(uid=os.geteuid(), gid=os.getegid(), share_gid=int(sys.argv[2]))
print(directory_problem(Path(sys.argv[1]), 0o2750, who))
"""


def test_root_owned_certs_volume_message(work: Path) -> None:
    """What acme.sh left: the haproxy-certs volume root's, 0755 (OpenCHAMI's migration case)."""
    certs = work / "acme-certs"
    certs.mkdir(mode=0o755)
    (certs / "foobar.openchami.cluster.pem").write_text("old\n")
    result = as_sidecar_user("-c", PROBE, str(certs), str(GID))
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert len(result.stdout.splitlines()) == 1
    assert line == (
        f"{certs} is not writable by uid {UID} gid {GID} (owner 0:0 mode 0755); fix once as "
        f"root: chown {UID}:{GID} {certs} && chmod 2750 {certs}, "
        "or see docker/openchami/README.md"
    )


def test_missing_directory_under_a_root_owned_parent(work: Path) -> None:
    parent = work / "etc-haproxy"
    parent.mkdir(mode=0o755)
    certs = parent / "certs"
    result = as_sidecar_user("-c", PROBE, str(certs), str(GID))
    line = result.stdout.strip()
    assert line.startswith(f"{certs} does not exist and {parent} is not writable"), line
    assert f"mkdir -p {certs} && chown {UID}:{GID} {certs}" in line, line


def test_writable_directory_passes_and_leaves_nothing(work: Path) -> None:
    result = as_sidecar_user("-c", PROBE, str(work / "certs"), str(GID))
    assert result.stdout.strip() == "None", result.stderr
    assert list((work / "certs").iterdir()) == []


def test_run_refuses_an_unwritable_certs_dir_in_one_line(work: Path) -> None:
    """The run path end to end: whichever check meets it first, one line naming the path."""
    os.chown(work / "certs", 0, 0)
    os.chmod(work / "certs", 0o755)
    line = one_error_line(as_sidecar_user(*sidecar_args(work, "run", work / "none.sock")))
    assert f"{work / 'certs'} is not writable" in line, line
