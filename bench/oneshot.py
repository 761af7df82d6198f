"""One certificate, whole process, cold: cert-sidecar vs lego vs certbot against one step-ca.

Cold means every run starts from an empty state directory: a new ACME account, a new account
key and a new certificate key. The three clients are interleaved (the order rotates each
round) so that a slow patch of a shared machine hits all of them alike. Every run must produce
a certificate for the name, issued by the bench CA and valid now, or it is reported as failed
and left out of the statistics.

Usage: .venv/bin/python bench/oneshot.py [--runs 7] [--json FILE]
Needs: root (port 80), scripts/build-step-ca.sh, scripts/install-bench-deps.sh.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import (
    HTTP_ADDRESS,
    OUT_DIR,
    SIDECAR,
    Measured,
    StepCA,
    bench_lock,
    bench_names,
    check_certificate,
    fmt_ratio,
    machine_summary,
    median,
    run_measured,
    step_ca,
    tool_versions,
)

EMAIL = "bench@cert-sidecar.test"


@dataclass(frozen=True)
class Client:
    """How to run one ACME client cold, and where it leaves the certificate."""

    name: str
    argv: Callable[[StepCA, str, Path], list[str]]
    env: Callable[[StepCA], dict[str, str]]
    cert_path: Callable[[str, Path], Path]


def _sidecar_argv(ca: StepCA, domain: str, work: Path) -> list[str]:
    return [
        str(SIDECAR), "issue",
        "--directory", ca.directory_url,
        "--ca-bundle", str(ca.root_path),
        "--domain", domain,
        "--http-listen", f"{HTTP_ADDRESS}:80",
        "--certs-dir", str(work / "certs"),
        "--state-dir", str(work / "state"),
        "--no-placeholder",
        "--log-format", "json",
    ]  # fmt: skip


def _lego_argv(ca: StepCA, domain: str, work: Path) -> list[str]:
    return [
        "lego",
        "--server", ca.directory_url,
        "--email", EMAIL,
        "--domains", domain,
        "--http", "--http.port", f"{HTTP_ADDRESS}:80",
        "--path", str(work),
        "--accept-tos",
        "run",
    ]  # fmt: skip


def _certbot_argv(ca: StepCA, domain: str, work: Path) -> list[str]:
    # --http-01-address: certbot's standalone server binds every address by default, which
    # would collide with test runs holding 127.0.1.N:80 on this shared machine.
    return [
        "certbot", "certonly", "--standalone",
        "--server", ca.directory_url,
        "--config-dir", str(work / "config"),
        "--work-dir", str(work / "work"),
        "--logs-dir", str(work / "logs"),
        "--agree-tos", "--register-unsafely-without-email",
        "-d", domain,
        "--non-interactive",
        "--http-01-address", HTTP_ADDRESS, "--http-01-port", "80",
    ]  # fmt: skip


CLIENTS = (
    Client(
        "cert-sidecar",
        _sidecar_argv,
        lambda ca: {},
        lambda domain, work: work / "certs" / f"{domain}.pem",
    ),
    Client(
        "lego",
        _lego_argv,
        lambda ca: {"LEGO_CA_CERTIFICATES": str(ca.root_path)},
        lambda domain, work: work / "certificates" / f"{domain}.crt",
    ),
    Client(
        "certbot",
        _certbot_argv,
        lambda ca: {"REQUESTS_CA_BUNDLE": str(ca.root_path)},
        lambda domain, work: work / "config" / "live" / domain / "fullchain.pem",
    ),
)


def prepare(work: Path) -> None:
    """An empty working directory (cold state), with the dirs cert-sidecar expects to exist."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "certs").mkdir(parents=True)
    (work / "state").mkdir()


def run_once(client: Client, ca: StepCA, domain: str, work: Path) -> Measured:
    prepare(work)
    measured = run_measured(
        client.argv(ca, domain, work), log=work.with_suffix(".log"), env=client.env(ca)
    )
    if measured.ok:
        problem = check_certificate(client.cert_path(domain, work), [domain], ca)
        if problem is not None:
            return Measured(False, measured.wall, measured.cpu, measured.maxrss_mib, 0, problem)
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per client (default 7)")
    parser.add_argument("--json", type=Path, help="also write the raw runs as JSON here")
    args = parser.parse_args(argv)

    print(machine_summary())
    for tool, version in tool_versions().items():
        print(f"  {tool}: {version}")
    results: dict[str, list[Measured]] = {client.name: [] for client in CLIENTS}
    base = OUT_DIR / "oneshot"
    with bench_lock(), step_ca("oneshot") as ca:
        print(f"step-ca {ca.directory_url} (24h certificates)")
        # Each run gets its own name so that no run can be served by an earlier order; the
        # warm-up round fills the page cache alike for all three and is not counted.
        names = iter(bench_names(3 * (args.runs + 1)))
        for round_index in range(args.runs + 1):
            shift = round_index % len(CLIENTS)
            for client in CLIENTS[shift:] + CLIENTS[:shift]:
                work = base / f"{client.name}-{round_index}"
                measured = run_once(client, ca, next(names), work)
                label = "warm-up" if round_index == 0 else f"run {round_index}"
                status = "ok" if measured.ok else f"FAILED: {measured.detail}"
                print(
                    f"  {label:8} {client.name:12} wall {measured.wall:6.3f} s  "
                    f"cpu {measured.cpu:6.3f} s  rss {measured.maxrss_mib:6.1f} MiB  {status}",
                    flush=True,
                )
                if round_index > 0:
                    results[client.name].append(measured)

    print(f"\nmedians over {args.runs} cold runs (failed runs excluded)")
    print(f"  {'client':12} {'ok':>5} {'wall s':>8} {'cpu s':>8} {'peak RSS MiB':>13}")
    summary: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        good = [m for m in runs if m.ok]
        summary[name] = {
            "wall": median([m.wall for m in good]),
            "cpu": median([m.cpu for m in good]),
            "rss": median([m.maxrss_mib for m in good]),
            "rss_max": max((m.maxrss_mib for m in good), default=float("nan")),
        }
        row = summary[name]
        print(
            f"  {name:12} {len(good):>2}/{len(runs):<2} {row['wall']:8.3f} {row['cpu']:8.3f} "
            f"{row['rss']:13.1f}"
        )
    sidecar, lego, certbot = summary["cert-sidecar"], summary["lego"], summary["certbot"]
    print(
        "\nratios (cert-sidecar / other; targets: wall <= 2x lego, < 0.1x certbot, RSS < certbot)"
    )
    for metric in ("wall", "cpu", "rss"):
        print(
            f"  {metric:5} vs lego {fmt_ratio(sidecar[metric], lego[metric]):>8}   "
            f"vs certbot {fmt_ratio(sidecar[metric], certbot[metric]):>8}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {name: [asdict(m) for m in runs] for name, runs in results.items()}, indent=2
            )
        )
    failed = sum(not m.ok for runs in results.values() for m in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
