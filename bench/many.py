"""N certificates: one ``cert-sidecar issue`` with N ``--domain`` flags vs lego run N times.

lego is run one name after another with the same ``--path``, so it registers once and then
reuses its account, as a user scripting lego would. cert-sidecar issues the N certificates in
one process (concurrently, over one connection pool). Both start from empty state for each
measurement. The names ``bN.bench.cert-sidecar.test`` resolve to 127.0.0.1 through the
managed /etc/hosts block. Every certificate is checked (issued by the bench CA, valid now,
right name) before a measurement counts.

``--transports`` (issue 17) runs cert-sidecar once per named connection pool in each repeat:
``http11`` (the console script as installed), ``httpcore`` (httpx's own pool behind a
semaphore, through ``bench/_httpcore_sidecar.py``) and ``httpcore+sniffio`` (the same, with
sniffio importable, as a dependency declaration would make it: httpcore imports it on every
request and without it each failed import searches ``sys.path``). The first named keeps the
client name ``cert-sidecar``; the others are ``cert-sidecar[NAME]``.

Usage: .venv/bin/python bench/many.py [--counts 1,10,100] [--repeats 3] [--json FILE]
           [--transports http11,httpcore,httpcore+sniffio]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import (
    HTTP_ADDRESS,
    OUT_DIR,
    SIDECAR,
    StepCA,
    bench_lock,
    bench_names,
    ca_cpu_seconds,
    check_certificate,
    fmt_ratio,
    machine_summary,
    median,
    run_measured,
    step_ca,
    tool_versions,
)

EMAIL = "bench@cert-sidecar.test"
HTTPCORE_SIDECAR = Path(__file__).resolve().parent / "_httpcore_sidecar.py"
# sniffio, installed apart from the venv (pip install --target) so that only the runs that
# name it can import it.
SNIFFIO_SITE = OUT_DIR / "sniffio-site"
TRANSPORTS = ("http11", "httpcore", "httpcore+sniffio")


@dataclass(frozen=True)
class Batch:
    """N certificates done by one client: total wall and CPU time, worst peak RSS."""

    ok: bool
    wall: float
    cpu: float
    maxrss_mib: float
    detail: str = ""
    ca_cpu: float = float("nan")  # step-ca's CPU during the batch


def _sidecar_command(transport: str) -> tuple[list[str], dict[str, str]]:
    """The command that runs cert-sidecar with ``transport``, and its extra environment."""
    if transport == "http11":
        return [str(SIDECAR)], {}
    command = [sys.executable, str(HTTPCORE_SIDECAR)]
    if transport == "httpcore+sniffio":
        if not (SNIFFIO_SITE / "sniffio").is_dir():
            raise SystemExit(
                f"no sniffio in {SNIFFIO_SITE}: .venv/bin/pip install --target {SNIFFIO_SITE} "
                "sniffio"
            )
        return command, {"PYTHONPATH": str(SNIFFIO_SITE)}
    return command, {}


def sidecar_batch(
    ca: StepCA, names: tuple[str, ...], work: Path, transport: str = "http11"
) -> Batch:
    shutil.rmtree(work, ignore_errors=True)
    (work / "certs").mkdir(parents=True)
    (work / "state").mkdir()
    command, env = _sidecar_command(transport)
    argv = [
        *command, "issue",
        "--directory", ca.directory_url,
        "--ca-bundle", str(ca.root_path),
        "--http-listen", f"{HTTP_ADDRESS}:80",
        "--certs-dir", str(work / "certs"),
        "--state-dir", str(work / "state"),
        "--no-placeholder",
        "--log-format", "json",
    ]  # fmt: skip
    for name in names:
        argv += ["--domain", name]
    run = run_measured(argv, log=work.with_suffix(".log"), env=env)
    if not run.ok:
        return Batch(False, run.wall, run.cpu, run.maxrss_mib, run.detail)
    for name in names:
        problem = check_certificate(work / "certs" / f"{name}.pem", [name], ca)
        if problem is not None:
            return Batch(False, run.wall, run.cpu, run.maxrss_mib, problem)
    return Batch(True, run.wall, run.cpu, run.maxrss_mib)


def lego_batch(ca: StepCA, names: tuple[str, ...], work: Path) -> Batch:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wall = cpu = rss = 0.0
    for index, name in enumerate(names):
        argv = [
            "lego",
            "--server", ca.directory_url,
            "--email", EMAIL,
            "--domains", name,
            "--http", "--http.port", f"{HTTP_ADDRESS}:80",
            "--path", str(work),
            "--accept-tos",
            "run",
        ]  # fmt: skip
        run = run_measured(
            argv,
            log=work.parent / f"{work.name}-{index}.log",
            env={"LEGO_CA_CERTIFICATES": str(ca.root_path)},
        )
        wall += run.wall
        cpu += run.cpu
        rss = max(rss, run.maxrss_mib)
        if not run.ok:
            return Batch(False, wall, cpu, rss, f"{name}: {run.detail}")
        problem = check_certificate(work / "certificates" / f"{name}.crt", [name], ca)
        if problem is not None:
            return Batch(False, wall, cpu, rss, problem)
    return Batch(True, wall, cpu, rss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,10,100", help="comma-separated N (<= 200)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per N and client")
    parser.add_argument("--json", type=Path, help="also write the raw batches as JSON here")
    parser.add_argument(
        "--transports",
        default="http11",
        help=f"comma-separated pools to run cert-sidecar with, of {', '.join(TRANSPORTS)}",
    )
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.counts.split(",")]
    transports = args.transports.split(",")
    if unknown := set(transports) - set(TRANSPORTS):
        parser.error(f"unknown transport(s): {', '.join(sorted(unknown))}")
    sidecars = {
        ("cert-sidecar" if index == 0 else f"cert-sidecar[{name}]"): name
        for index, name in enumerate(transports)
    }

    print(machine_summary())
    for tool, version in tool_versions().items():
        print(f"  {tool}: {version}")
    results: dict[int, dict[str, list[Batch]]] = {
        count: {**{client: [] for client in sidecars}, "lego": []} for count in counts
    }
    base = OUT_DIR / "many"
    with bench_lock(), step_ca("many") as ca:
        print(f"step-ca {ca.directory_url} (24h certificates)")
        for repeat in range(1, args.repeats + 1):
            for count in counts:
                names = bench_names(count)
                # Alternate who goes first, so neither always meets a freshly idle machine.
                order = (*sidecars, "lego")
                if not repeat % 2:
                    order = order[::-1]
                for client in order:
                    work = base / f"{client}-{count}-{repeat}"
                    ca_cpu = ca_cpu_seconds(ca)
                    if client == "lego":
                        batch = lego_batch(ca, names, work)
                    else:
                        batch = sidecar_batch(ca, names, work, sidecars[client])
                    batch = dataclasses.replace(batch, ca_cpu=ca_cpu_seconds(ca) - ca_cpu)
                    results[count][client].append(batch)
                    status = "ok" if batch.ok else f"FAILED: {batch.detail}"
                    print(
                        f"  repeat {repeat} N={count:<4} {client:30} wall {batch.wall:7.3f} s  "
                        f"cpu {batch.cpu:7.3f} s  step-ca cpu {batch.ca_cpu:6.3f} s  "
                        f"peak rss {batch.maxrss_mib:6.1f} MiB  {status}",
                        flush=True,
                    )

    print(f"\nmedian total over {args.repeats} repeats (failed batches excluded)")
    print(
        f"  {'N':>4} {'cert-sidecar s':>15} {'lego xN s':>10} {'speed-up':>9}"
        "   (target N=100: >= 5x)"
    )
    failed = 0
    for count in counts:
        sidecar = [b for b in results[count]["cert-sidecar"] if b.ok]
        lego = [b for b in results[count]["lego"] if b.ok]
        failed += args.repeats * 2 - len(sidecar) - len(lego)
        for client in list(sidecars)[1:]:
            other = [b for b in results[count][client] if b.ok]
            failed += args.repeats - len(other)
            base_cpu = median([b.cpu for b in sidecar])
            other_cpu = median([b.cpu for b in other])
            print(
                f"  {count:>4} {client}: median CPU {other_cpu:.3f} s vs {base_cpu:.3f} s, "
                f"{(other_cpu - base_cpu) / count * 1000:+.2f} ms per certificate; "
                f"wall {median([b.wall for b in other]):.3f} s"
            )
        sidecar_wall = median([b.wall for b in sidecar])
        lego_wall = median([b.wall for b in lego])
        print(
            f"  {count:>4} {sidecar_wall:15.3f} {lego_wall:10.3f} "
            f"{fmt_ratio(lego_wall, sidecar_wall):>9}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    str(count): {k: [asdict(b) for b in v] for k, v in per.items()}
                    for count, per in results.items()
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
