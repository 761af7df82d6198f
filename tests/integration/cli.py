"""Running the real `cert-sidecar` command in tests, as a user would: a subprocess, exit code,
stdout and stderr."""

from __future__ import annotations

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
    for child, parent in zip(certificates, certificates[1:], strict=False):
        child.verify_directly_issued_by(parent)
    certificates[-1].verify_directly_issued_by(root)
