"""Running the real `cert-sidecar` command in tests, as a user would: a subprocess, exit code,
stdout and stderr."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

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

    def wait_for(
        self, predicate: object, what: str, timeout: float = 120.0, interval: float = 0.2
    ) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"cert-sidecar exited ({self.process.returncode}) while waiting for {what}:\n"
                    + self.log_path.read_text()[-4000:]
                )
            if predicate():  # type: ignore[operator]
                return
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}:\n" + self.log_path.read_text()[-4000:])

    def stop(self, signum: int = 15, timeout: float = 15.0) -> tuple[int, float]:
        """Send ``signum``; return the exit code and the seconds it took to exit."""
        import time

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
        return code, elapsed

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
