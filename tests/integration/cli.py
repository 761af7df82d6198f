"""Running the real `cert-sidecar` command in tests, as a user would: a subprocess, exit code,
stdout and stderr; and a real `cert-sidecar run` held for the length of a test
(`running_sidecar`)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from sidecar import pem

if TYPE_CHECKING:
    from tests.peers.loopback import LoopbackLease
    from tests.peers.stepca import StepCA

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any CERT_SIDECAR_* setting of the developer's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERT_SIDECAR_")}
    env["CERT_SIDECAR_LOG_FORMAT"] = "json"
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 240,
    cwd: Path | None = None,
) -> Result:
    completed = subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=timeout,
        cwd=cwd or REPO,
        check=False,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def base_args(
    directory_url: str,
    ca_bundle: Path,
    certs_dir: Path,
    state_dir: Path,
    *,
    http_listen: str | None = None,
    tls_alpn_listen: str | None = None,
) -> list[str]:
    args = [
        "--directory",
        directory_url,
        "--ca-bundle",
        str(ca_bundle),
        "--certs-dir",
        str(certs_dir),
        "--state-dir",
        str(state_dir),
    ]
    if http_listen:
        args += ["--http-listen", http_listen]
    if tls_alpn_listen:
        args += ["--tls-alpn-listen", tls_alpn_listen]
    return args


def stepca_run_args(ca: StepCA, work: Path, lease: LoopbackLease, *extra: str) -> list[str]:
    """`run` (or a one-shot) against this step-ca for one certificate, the lease's first name,
    answering http-01 on the lease's address; certificates in ``work/certs``, state in
    ``work/state``; ``extra`` follows."""
    return [
        *base_args(
            ca.directory_url,
            ca.root_path,
            work / "certs",
            work / "state",
            http_listen=f"{lease.address}:80",
        ),
        "--domain",
        lease.name,
        *extra,
    ]


def waiting_run_args(work: Path) -> list[str]:
    """`run` that waits for a CA bundle that never comes (no CA needed): it starts its health
    listener, writes a placeholder and logs ``ca_bundle_waiting``, then does nothing more."""
    return [
        *base_args(
            "https://127.0.0.1:9/acme/acme/directory",
            work / "absent" / "root_ca.crt",
            work / "certs",
            work / "state",
            http_listen=f"127.0.0.1:{free_port()}",
        ),
        "--domain",
        "wait.cert-sidecar.test",
    ]


def real_serial(path: Path) -> int | None:
    """The serial of the certificate in a combined PEM; None while there is none, or only the
    placeholder."""
    try:
        facts = pem.describe_cert(pem.parse_combined(path.read_bytes()).leaf)
    except (OSError, pem.PemError):
        return None
    return None if facts.is_placeholder else facts.serial


def read_pem_blocks(path: Path) -> list[tuple[str, bytes]]:
    """(label, block) for each PEM block of a combined file, in order."""
    text = path.read_text()
    blocks = []
    label = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("-----BEGIN "):
            label = line[len("-----BEGIN ") : -len("-----")]
            lines = [line]
        elif line.startswith("-----END ") and label is not None:
            lines.append(line)
            blocks.append((label, ("\n".join(lines) + "\n").encode()))
            label = None
        elif label is not None:
            lines.append(line)
    return blocks


def verify_chain(leaf: x509.Certificate, chain: list[x509.Certificate], root_pem: bytes) -> None:
    """The leaf chains up to the given root by signatures (raises when it does not)."""
    root = x509.load_pem_x509_certificate(root_pem)
    certificates = [leaf, *chain]
    for child, parent in itertools.pairwise(certificates):
        child.verify_directly_issued_by(parent)
    certificates[-1].verify_directly_issued_by(root)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a plain GET; (0, error) when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


class Sidecar:
    """A `cert-sidecar run` process with its JSON log in a file."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        health_port: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        import time

        self.health_port = health_port
        self.log_path = log_path
        # Set by `stop`: how the process ended and how long it took after the signal.
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None
        # `running_sidecar` attaches the whole log tail to any failure itself.
        self.log_in_errors = True
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar",
                "run",
                *args,
                "--health-listen",
                f"127.0.0.1:{health_port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=clean_env(env),
            cwd=REPO,
        )
        self.started = time.monotonic()

    def get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.health_port}{path}")

    def events(self) -> list[dict[str, object]]:
        result = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                result.append(item)
        return result

    def event_names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events()]

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_for(
        self, predicate: object, what: str, timeout: float = 120.0, interval: float = 0.2
    ) -> None:
        import time

        def log() -> str:
            return ":\n" + self.log_tail() if self.log_in_errors else ""

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"cert-sidecar exited ({self.process.returncode}) while waiting for {what}"
                    + log()
                )
            if predicate():  # type: ignore[operator]
                return
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}" + log())

    def stop(self, signum: int = 15, timeout: float = 15.0) -> tuple[int, float]:
        """Send ``signum``; return the exit code and the seconds it took to exit. Once stopped,
        it returns what the first call found."""
        import time

        if self.exit_code is not None and self.stop_seconds is not None:
            return self.exit_code, self.stop_seconds
        if self.process.poll() is None:
            begun = time.monotonic()
            self.process.send_signal(signum)
            try:
                code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"cert-sidecar did not stop within {timeout} s") from None
            elapsed = time.monotonic() - begun
        else:
            code, elapsed = self.process.returncode, 0.0
        self._log.close()
        self.exit_code, self.stop_seconds = code, elapsed
        return code, elapsed

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@dataclass(frozen=True)
class Wait:
    """A state of a running sidecar to wait for: ``check`` is asked every 0.2 s until it holds,
    for up to ``timeout`` seconds (generous: only a defect needs that long)."""

    what: str
    check: Callable[[Sidecar], bool]
    timeout: float = 120.0


def first_certificate(path: Path, timeout: float = 120.0) -> Wait:
    """A real certificate (not the placeholder) at ``path``."""
    return Wait("the first certificate", lambda _sidecar: real_serial(path) is not None, timeout)


def logged(event: str) -> Wait:
    """An event in the sidecar's log."""
    return Wait(f"the {event} event", lambda sidecar: event in sidecar.event_names())


def readyz_ok() -> Wait:
    """``/readyz`` answering 200."""
    return Wait("ready", lambda sidecar: sidecar.get("/readyz")[0] == 200)


@contextlib.contextmanager
def running_sidecar(
    args: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    until: Wait | None = None,
    health_port: int | None = None,
) -> Iterator[Sidecar]:
    """A real `cert-sidecar run` with ``args`` (``--health-listen`` on a free loopback port is
    added) for the length of the ``with`` block, its JSON log in ``log_path``.

    Starts it, waits for ``until`` when given, and yields it. Whatever happens in the block, the
    process is stopped (SIGTERM, SIGKILL if it does not exit within 15 s) and reaped on the way
    out; its exit code is then ``exit_code``, for the test to assert. A failure, in the block or
    in the stop, carries the log's tail as a note, so the report shows what the sidecar did.
    """
    sidecar = Sidecar(args, log_path, health_port=health_port or free_port(), env=env)
    sidecar.log_in_errors = False
    try:
        if until is not None:
            condition = until
            sidecar.wait_for(lambda: condition.check(sidecar), until.what, timeout=until.timeout)
        yield sidecar
        sidecar.stop()
    except BaseException as error:
        # Also pytest-timeout's failure and KeyboardInterrupt: no sidecar outlives its test.
        with contextlib.suppress(AssertionError):
            sidecar.stop()  # a no-op when the block or the stop above already stopped it
        error.add_note(f"cert-sidecar run log ({log_path}), its end:\n{sidecar.log_tail()}")
        raise
