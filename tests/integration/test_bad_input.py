"""Malformed input, table-driven (issue 2, section 5): each case exits with the contract's code
and one clear line, and leaves an existing PEM in the certs directory byte-for-byte unchanged.

Exit 2 for what is wrong before any network I/O; exit 1 for what the CA or the network says.
Every case runs ``python -m sidecar issue`` as a real process. Permission cases run as an
unprivileged user (``setpriv``), since root ignores file modes; their files live in a
world-traversable directory so that user can reach them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme

from tests.peers.require import require_unprivileged_python

if TYPE_CHECKING:
    from tests.peers.stepca import StepCA

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
SETPRIV = shutil.which("setpriv")


@dataclass(frozen=True)
class Work:
    root: Path
    bundle: Path
    certs: Path
    state: Path
    pem: Path

    def flags(self) -> list[str]:
        return [
            "--ca-bundle",
            str(self.bundle),
            "--certs-dir",
            str(self.certs),
            "--state-dir",
            str(self.state),
        ]


@dataclass(frozen=True)
class Case:
    id: str
    message: str  # a fragment of the one error line
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Changes the work directory and returns extra flags.
    setup: Callable[[Work], list[str]] | None = None
    unprivileged: bool = False
    domains: list[str] = field(default_factory=lambda: ["--domain", "a.example"])


def _write(name: str, content: bytes | str, mode: int | None = None) -> Callable[[Work], list[str]]:
    def setup(work: Work) -> list[str]:
        path = work.root / name
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
        if mode is not None:
            path.chmod(mode)
        return []

    return setup


def _bundle(content: bytes, mode: int | None = None) -> Callable[[Work], list[str]]:
    write = _write("bundle.pem", content, mode)

    def setup(work: Work) -> list[str]:
        write(work)
        return ["--ca-bundle", str(work.root / "bundle.pem")]

    return setup


def _config(text: str) -> Callable[[Work], list[str]]:
    write = _write("sidecar.toml", text)

    def setup(work: Work) -> list[str]:
        write(work)
        return ["--config", str(work.root / "sidecar.toml")]

    return setup


def _read_only(name: str) -> Callable[[Work], list[str]]:
    def setup(work: Work) -> list[str]:
        (work.root / name).chmod(0o555)
        return []

    return setup


def _unreadable_bundle(work: Work) -> list[str]:
    work.bundle.chmod(0o000)
    return []


def _certs_dir_is_a_file(work: Work) -> list[str]:
    blocker = work.root / "not-a-dir"
    blocker.write_text("")
    return ["--certs-dir", str(blocker)]


CORRUPT_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBnotreallybase64!!\n-----END CERTIFICATE-----\n"

CASES = [
    # names and certificates
    Case("invalid-name", "empty label", domains=["--domain", "a..example"]),
    Case("underscore-name", "letters, digits", domains=["--domain", "a_b.example"]),
    Case("label-too-long", "longer than 63", domains=["--domain", "x" * 64 + ".example"]),
    Case("name-too-long", "longer than 253", domains=["--domain", ".".join(["abcdefghi"] * 26)]),
    Case("bad-ip", "neither a valid IP", domains=["--domain", "10.0.0.300"]),
    Case("inner-wildcard", "leftmost", domains=["--domain", "a.*.example"]),
    Case("wildcard-http01", "only dns-01", domains=["--domain", "*.a.example"]),
    Case(
        "wildcard-tlsalpn01",
        "only dns-01",
        args=["--challenge", "tls-alpn-01"],
        domains=["--domain", "*.a.example"],
    ),
    Case(
        "ip-dns01",
        "dns-01 cannot",
        args=["--challenge", "dns-01", "--dns-hook", "true"],
        domains=["--domain", "127.0.0.1"],
    ),
    Case("empty-domain", "at least one name", domains=["--domain", ""]),
    Case("empty-name-in-list", "empty name", domains=["--domain", "a.example,,b.example"]),
    Case(
        "empty-certificate-in-env",
        "at least one name",
        domains=[],
        env={"CERT_SIDECAR_DOMAINS": "a.example;;b.example"},
    ),
    Case("no-certificates", "no certificates configured", domains=[]),
    Case(
        "duplicate-names",
        "used twice",
        domains=["--domain", "a.example", "--domain", "a.example,b.example"],
    ),
    Case("unknown-key-type", "'ec-p521' is not one of", args=["--key-type", "ec-p521"]),
    Case("unknown-challenge", "'http-02' is not one of", args=["--challenge", "http-02"]),
    Case("dns01-without-hook", "dns-01 needs a hook", args=["--challenge", "dns-01"]),
    Case(
        "dns-hook-missing",
        "not found in PATH",
        args=["--challenge", "dns-01", "--dns-hook", "no-such-hook-xyz present"],
    ),
    # the CA bundle
    Case("bundle-missing", "does not exist", setup=lambda w: ["--ca-bundle", str(w.root / "no")]),
    Case("bundle-empty", "no PEM certificate", setup=_bundle(b"")),
    Case("bundle-not-pem", "no PEM certificate", setup=_bundle(b"just some text\n")),
    Case("bundle-der", "not a PEM file", setup=_bundle(b"\x30\x82\x01\x0a\x02\x82\xff\x00")),
    Case("bundle-corrupt-pem", "cannot parse", setup=_bundle(CORRUPT_PEM)),
    Case("bundle-unreadable", "Permission denied", unprivileged=True, setup=_unreadable_bundle),
    # directories
    Case("certs-dir-read-only", "is not writable", unprivileged=True, setup=_read_only("certs")),
    Case("state-dir-read-only", "is not writable", unprivileged=True, setup=_read_only("state")),
    Case("certs-dir-is-a-file", "is not a directory", setup=_certs_dir_is_a_file),
    # the config file
    Case(
        "config-missing",
        "does not exist",
        setup=lambda w: ["--config", str(w.root / "missing.toml")],
    ),
    Case("bad-toml", "not valid TOML", setup=_config("[acme\ndirectory = 1\n")),
    Case(
        "unknown-toml-key",
        "unknown key 'renew_after'",
        setup=_config("[renewal]\nrenew_after = 0.5\n"),
    ),
    Case("unknown-toml-table", "unknown table", setup=_config("[acme_server]\nurl = 'x'\n")),
    Case("toml-wrong-type", "must be a number", setup=_config("[renewal]\nrenew_at = true\n")),
    Case(
        "toml-certificate-unknown-key",
        "unknown key 'domain'",
        domains=[],
        setup=_config('[[certificates]]\ndomain = ["a.example"]\n'),
    ),
    # modes, groups and other values
    Case("mode-world-readable", "mode 0644 is refused", args=["--pem-mode", "0644"]),
    Case("mode-group-writable", "mode 0660 is refused", env={"CERT_SIDECAR_PEM_MODE": "0660"}),
    Case("mode-not-octal", "not an octal mode", args=["--pem-mode", "rw-r-----"]),
    Case("mode-too-big", "0000 to 0777", args=["--pem-mode", "4640"]),
    Case("group-not-a-member", "not in group '0'", args=["--pem-group", "0"], unprivileged=True),
    Case("group-unknown", "no group named", args=["--pem-group", "no-such-group-xyz"]),
    Case("renew-at-out-of-range", "between 0 and 1", args=["--renew-at", "1.5"]),
    Case("listen-ipv6-unbracketed", "brackets", args=["--http-listen", "::1:80"]),
    Case("listen-bad-port", "1 to 65535", args=["--tls-alpn-listen", "0.0.0.0:70000"]),
    Case(
        "directory-plain-http",
        "https:// URL",
        args=["--directory", "http://step-ca:9000/acme/acme/directory"],
    ),
    Case("eab-kid-without-key", "needs the HMAC key", args=["--eab-kid", "kid-1"]),
    Case(
        "eab-key-not-base64url",
        "not base64url",
        env={"CERT_SIDECAR_EAB_KID": "k", "CERT_SIDECAR_EAB_HMAC_KEY": "abc$def"},
    ),
    Case("reload-signal-without-pid", "needs --reload-pid-file", args=["--reload", "signal"]),
    Case("runtime-api-without-socket", "needs --haproxy-socket", args=["--reload", "runtime-api"]),
    Case("bad-env-boolean", "not a boolean", env={"CERT_SIDECAR_SYSTEM_TRUST": "maybe"}),
    Case(
        "misspelt-env",
        "did you mean CERT_SIDECAR_DOMAINS",
        env={"CERT_SIDECAR_DOMIANS": "a.example"},
    ),
    Case("bad-log-level", "'loud' is not one of", args=["--log-level", "loud"]),
]


@pytest.fixture
def work() -> Iterator[Work]:
    # Not pytest's tmp_path: that is private to root, and some cases run as nobody.
    root = Path(tempfile.mkdtemp(prefix="cert-sidecar-bad-input-"))
    try:
        root.chmod(0o755)
        ca = trustme.CA()
        bundle = root / "root.pem"
        ca.cert_pem.write_to_path(str(bundle))
        certs, state = root / "certs", root / "state"
        certs.mkdir()
        state.mkdir()
        leaf = ca.issue_cert("a.example")
        pem = certs / "a.example.pem"
        pem.write_bytes(
            b"".join(b.bytes() for b in leaf.cert_chain_pems) + leaf.private_key_pem.bytes()
        )
        pem.chmod(0o640)
        yield Work(root, bundle, certs, state, pem)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _give_to_nobody(work: Work) -> None:
    for path in (work.root, work.bundle, work.certs, work.state, *work.root.iterdir()):
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


def run_issue(
    work: Work, args: list[str], env: dict[str, str], *, unprivileged: bool = False
) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(work.root),
        **env,
    }
    command = [sys.executable, "-m", "sidecar", "issue", *args]
    if unprivileged:
        assert SETPRIV is not None
        command = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        cwd=work.root,
        timeout=180,
        check=False,
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "PRIVATE KEY" not in result.stderr + result.stdout
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_config_level_bad_input_exits_2(work: Work, case: Case) -> None:
    if case.unprivileged:
        require_unprivileged_python()
    before_pem = work.pem.read_bytes()
    before_dir = snapshot(work.certs)
    extra = case.setup(work) if case.setup else []
    if case.unprivileged:
        _give_to_nobody(work)
    args = [*case.domains, *work.flags(), *extra, *case.args]
    result = run_issue(work, args, case.env, unprivileged=case.unprivileged)
    line = assert_one_error_line(result, 2)
    assert line.startswith("cert-sidecar: error: "), line
    assert case.message in line, line
    assert result.stdout == ""
    # Nothing written: the PEM is byte-for-byte what it was and nothing was added.
    assert work.pem.read_bytes() == before_pem
    assert snapshot(work.certs) == before_dir
    assert list(work.state.iterdir()) == []


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


# --- cases that need the CA or the network to answer (exit 1) ---------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ca_case(work: Work, directory: str, bundle: Path) -> subprocess.CompletedProcess[str]:
    # --force: the existing PEM is valid and not due, so without it nothing would be ordered.
    args = [
        "--force",
        "--domain",
        "a.example",
        *work.flags(),
        "--ca-bundle",
        str(bundle),
        "--directory",
        directory,
        "--http-listen",
        f"127.0.0.1:{_closed_port()}",
    ]
    return run_issue(work, args, {})


def _assert_unchanged_after(
    work: Work, run: Callable[[], subprocess.CompletedProcess[str]], fragments: tuple[str, ...]
) -> None:
    before_pem = work.pem.read_bytes()
    before_dir = snapshot(work.certs)
    result = run()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "PRIVATE KEY" not in result.stderr + result.stdout
    # stderr also carries the structured log (JSON lines, since it is not a terminal); the
    # human-readable outcome is exactly one other line.
    human = []
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            json.loads(line)
        elif line.strip():
            human.append(line)
    assert len(human) == 1, result.stderr
    assert any(f.lower() in human[0].lower() for f in fragments), human[0]
    assert work.pem.read_bytes() == before_pem
    assert snapshot(work.certs) == before_dir


@pytest.mark.stepca
def test_wrong_root_exits_1(work: Work, step_ca: StepCA) -> None:
    # work.bundle is a trustme root: not the one that signed step-ca's TLS certificate.
    _assert_unchanged_after(
        work,
        lambda: _ca_case(work, step_ca.directory_url, work.bundle),
        ("certificate", "verify", "tls", "trust"),
    )


@pytest.mark.stepca
def test_directory_that_is_not_acme_exits_1(work: Work, step_ca: StepCA) -> None:
    not_acme = step_ca.directory_url.split("/acme/")[0] + "/health"
    _assert_unchanged_after(
        work,
        lambda: _ca_case(work, not_acme, step_ca.root_path),
        ("acme", "directory"),
    )


def test_unreachable_directory_exits_1(work: Work) -> None:
    url = f"https://127.0.0.1:{_closed_port()}/acme/acme/directory"
    _assert_unchanged_after(
        work,
        lambda: _ca_case(work, url, work.bundle),
        ("unreachable", "connect", "refused", "reach"),
    )
