"""From a renewed certificate written to disk to a real HAProxy serving it (runtime API).

Setup: a step-ca, and ``--rotations + 1`` certificates for one name obtained from it with
``cert-sidecar issue --force`` (each a new key and serial). HAProxy 2.6 starts serving the
first from ``bind ... ssl crt <dir>``; its admin stats socket is the runtime API.

Each rotation then does what the sidecar does after a renewal: write the combined PEM
atomically (``sidecar.storage.atomic_write``), then ``sidecar.deploy.Deployer.deploy`` in
``runtime-api`` mode (``set ssl cert`` + ``commit ssl cert``, then ``show ssl cert`` must
report the new serial). The clock starts when the file is in place and stops when a TLS
handshake with the name as SNI shows the new serial (polled: first handshake usually). Printed:
median and max of that latency, and of the ``deploy()`` call alone.

Usage: .venv/bin/python bench/deploy_latency.py [--rotations 20]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    HTTP_ADDRESS,
    OUT_DIR,
    SIDECAR,
    StepCA,
    bench_lock,
    bench_names,
    check_certificate,
    machine_summary,
    step_ca,
    tool_versions,
)
from cryptography import x509

from sidecar.deploy import DeployConfig, Deployer, fetch_served_certificate
from sidecar.storage import atomic_write
from tests.peers.processes import PeerProcess, free_port, peer_environment

PEM_MODE = 0o640


def issue_certificates(ca: StepCA, name: str, count: int, work: Path) -> list[bytes]:
    """``count`` distinct combined PEMs for ``name`` from the real CA, via the real CLI."""
    staging = work / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "certs").mkdir(parents=True)
    (staging / "state").mkdir()
    pems: list[bytes] = []
    for index in range(count):
        argv = [
            str(SIDECAR), "issue", "--force",
            "--directory", ca.directory_url,
            "--ca-bundle", str(ca.root_path),
            "--domain", name,
            "--http-listen", f"{HTTP_ADDRESS}:80",
            "--certs-dir", str(staging / "certs"),
            "--state-dir", str(staging / "state"),
            "--no-placeholder",
            "--log-format", "json",
        ]  # fmt: skip
        result = subprocess.run(
            argv, capture_output=True, env=peer_environment(), check=False, timeout=120
        )
        path = staging / "certs" / f"{name}.pem"
        problem = check_certificate(path, [name], ca)
        if result.returncode != 0 or problem is not None:
            tail = result.stderr.decode(errors="replace").strip()[-400:]
            raise RuntimeError(
                f"issue #{index} failed (exit {result.returncode}): {problem} {tail}"
            )
        pems.append(path.read_bytes())
    return pems


def haproxy_config(work: Path, certs_dir: Path, port: int) -> Path:
    config = work / "haproxy.cfg"
    config.write_text(
        "\n".join(
            [
                "global",
                f"    stats socket {work / 'admin.sock'} mode 600 level admin",
                "defaults",
                "    mode http",
                "    timeout connect 5s",
                "    timeout client 5s",
                "    timeout server 5s",
                "frontend bench",
                f"    bind 127.0.0.1:{port} ssl crt {certs_dir} strict-sni",
                "    http-request return status 200 content-type text/plain string ok",
                "",
            ]
        )
    )
    return config


def leaf(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem)[0]


async def served_serial(port: int, name: str) -> int | None:
    try:
        certificate = await fetch_served_certificate("127.0.0.1", port, name, time_limit=5.0)
    except (OSError, ssl.SSLError, TimeoutError):
        return None
    return certificate.serial_number


async def rotate(
    deployer: Deployer, pem_path: Path, name: str, pems: list[bytes], port: int
) -> tuple[list[float], list[float], int]:
    """Deploy ``pems[1:]`` in turn; (write-to-served latencies, deploy() durations, failures)."""
    latencies: list[float] = []
    deploy_times: list[float] = []
    failures = 0
    for index, pem in enumerate(pems[1:], start=1):
        certificate = leaf(pem)
        atomic_write(pem_path, pem, mode=PEM_MODE)
        written = time.perf_counter()
        result = await deployer.deploy(
            name,
            pem_path,
            pem,
            serial_hex=format(certificate.serial_number, "X"),
            not_after=certificate.not_valid_after_utc,
            names=[name],
        )
        deployed = time.perf_counter()
        if not result.ok:
            failures += 1
            print(f"  rotation {index:2}: deploy FAILED: {result.summary()}")
            continue
        # The deployer already saw the serial in ``show ssl cert``; a client handshake is the
        # proof that counts. Poll briefly in case the first handshake still races the commit.
        deadline = deployed + 10.0
        handshakes = 1
        while await served_serial(port, name) != certificate.serial_number:
            if time.perf_counter() > deadline:
                break
            handshakes += 1
            await asyncio.sleep(0.001)
        served = time.perf_counter()
        if served > deadline:
            failures += 1
            print(f"  rotation {index:2}: new serial not served within 10 s of deploy()")
            continue
        latencies.append(served - written)
        deploy_times.append(deployed - written)
        print(
            f"  rotation {index:2}: deploy() {1000 * (deployed - written):6.1f} ms, "
            f"served after {1000 * (served - written):6.1f} ms ({handshakes} handshake"
            f"{'s' if handshakes > 1 else ''})"
        )
    return latencies, deploy_times, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rotations", type=int, default=20)
    args = parser.parse_args(argv)

    print(machine_summary())
    versions = tool_versions()
    print(f"  cert-sidecar: {versions['cert-sidecar']}")
    haproxy_version = subprocess.run(
        ["haproxy", "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    print(f"  haproxy: {haproxy_version[0] if haproxy_version else 'unknown'}")
    work = OUT_DIR / "deploy"
    name = bench_names(1)[0]
    with bench_lock(), step_ca("deploy") as ca:
        print(f"step-ca {ca.directory_url}; issuing {args.rotations + 1} certificates for {name}")
        pems = issue_certificates(ca, name, args.rotations + 1, work)

        certs_dir = work / "certs"
        shutil.rmtree(certs_dir, ignore_errors=True)
        certs_dir.mkdir(parents=True)
        pem_path = certs_dir / f"{name}.pem"
        atomic_write(pem_path, pems[0], mode=PEM_MODE)
        port = free_port()
        config = haproxy_config(work, certs_dir, port)
        (work / "admin.sock").unlink(missing_ok=True)
        haproxy = PeerProcess(
            "haproxy", ["haproxy", "-db", "-f", str(config)], work / "haproxy.log"
        )
        haproxy.start()
        try:
            first = leaf(pems[0]).serial_number
            haproxy.wait_ready(
                lambda: asyncio.run(served_serial(port, name)) == first, "serving the first PEM"
            )
            deployer = Deployer(
                DeployConfig.build(
                    sockets=[f"unix:{work / 'admin.sock'}"],
                    certs_dir=certs_dir,
                    reload="runtime-api",
                )
            )
            latencies, deploy_times, failures = asyncio.run(
                rotate(deployer, pem_path, name, pems, port)
            )
        finally:
            haproxy.stop()

    print(f"\n{len(latencies)}/{args.rotations} rotations served (runtime API, HAProxy 2.6)")
    if latencies:
        print(
            f"  written -> served: median {1000 * statistics.median(latencies):.1f} ms, "
            f"max {1000 * max(latencies):.1f} ms"
        )
        print(
            f"  deploy() alone:    median {1000 * statistics.median(deploy_times):.1f} ms, "
            f"max {1000 * max(deploy_times):.1f} ms"
        )
    return 1 if failures or not latencies else 0


if __name__ == "__main__":
    sys.exit(main())
