"""An idle ``cert-sidecar run``: CPU and RSS with 10 certificates; a 1,000-certificate pass.

Part 1: ``run`` with 10 certificates. Once ``/readyz`` says all are issued, CPU time (utime +
stime from /proc/<pid>/stat) and RSS are sampled over ``--idle`` seconds (default 60).
Targets: under 0.5 s CPU per minute, under 60 MiB RSS.

Part 2: ``run`` with 1,000 certificates from a TOML file (names ``c0001`` .. ``c1000``, each
for one of the 200 bench names that resolve to 127.0.0.1: several certificates share a DNS
name, which ACME allows). Measured: time from start to ready (the first pass issues all
1,000), RSS, and one full renewal pass: ``cert-sidecar renew --force`` handed to the running
sidecar over its control socket, timed to its exit, after which every certificate's serial
must have changed.

Usage: .venv/bin/python bench/idle.py [--idle 60] [--count 1000] [--skip-1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator, Sequence
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

from tests.peers.processes import free_port, http_get, peer_environment

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB: resident now, and the peak so far."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values["VmRSS"], values["VmHWM"]


def readyz(port: int) -> str:
    """``/readyz``'s verdict, for the record (not a criterion here: see `wait_issued`)."""
    try:
        http_get(f"http://127.0.0.1:{port}/readyz", timeout=5.0)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable ({exc})"
    return "200"


@contextlib.contextmanager
def sidecar_run(args: Sequence[str], work: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``cert-sidecar run`` with ``args``; yields the process and its health port; stops it."""
    port = free_port()
    argv = [
        str(SIDECAR), "run", *args,
        "--health-listen", f"127.0.0.1:{port}",
        "--log-format", "json",
    ]  # fmt: skip
    with (work / "run.log").open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=peer_environment()
        )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_issued(
    process: subprocess.Popen[bytes],
    ca: StepCA,
    files: dict[Path, str],
    deadline: float,
) -> float:
    """Seconds from now until every file holds a real certificate for its name.

    The files, not ``/readyz``, are the criterion: they are what HAProxy loads, and readiness
    also depends on deploy checks that are not what this bench measures. Placeholders (self-
    signed) do not count. Raises if the sidecar dies or ``deadline`` passes.
    """
    start = time.perf_counter()
    pending = dict(files)
    while pending:
        pending = {
            path: name
            for path, name in pending.items()
            if check_certificate(path, [name], ca) is not None
        }
        if not pending:
            break
        if process.poll() is not None:
            raise RuntimeError(f"cert-sidecar run exited with {process.returncode}")
        if time.perf_counter() - start > deadline:
            raise RuntimeError(f"{len(pending)} certificates still missing after {deadline:.0f} s")
        time.sleep(0.05 if len(pending) < 50 else 0.5)
    return time.perf_counter() - start


def common_flags(ca: StepCA, work: Path) -> list[str]:
    shutil.rmtree(work, ignore_errors=True)
    (work / "certs").mkdir(parents=True)
    (work / "state").mkdir()
    return [
        "--directory", ca.directory_url,
        "--ca-bundle", str(ca.root_path),
        "--http-listen", f"{HTTP_ADDRESS}:80",
        "--certs-dir", str(work / "certs"),
        "--state-dir", str(work / "state"),
    ]  # fmt: skip


def idle_ten(ca: StepCA, idle_seconds: float) -> bool:
    work = OUT_DIR / "idle" / "ten"
    flags = common_flags(ca, work)
    names = bench_names(10)
    for name in names:
        flags += ["--domain", name]
    print(f"\n[10 certificates] cert-sidecar run, then {idle_seconds:.0f} s idle")
    with sidecar_run(flags, work) as (process, port):
        files = {work / "certs" / f"{name}.pem": name for name in names}
        took = wait_issued(process, ca, files, deadline=120)
        print(f"  start to all 10 issued: {took:.2f} s; /readyz {readyz(port)}")
        time.sleep(2.0)  # let the last responses and log writes finish before the window
        cpu_start = cpu_seconds(process.pid)
        rss_max = 0.0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < idle_seconds:
            rss_max = max(rss_max, memory_mib(process.pid)[0])
            time.sleep(min(1.0, idle_seconds - elapsed))
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(process.pid) - cpu_start
        rss, hwm = memory_mib(process.pid)
        rss_max = max(rss_max, rss)
        per_minute = cpu * 60.0 / elapsed
        print(f"  idle {elapsed:.1f} s: CPU {cpu:.3f} s ({per_minute:.3f} s/min; target < 0.5)")
        print(
            f"  RSS: {rss:.1f} MiB at the end, {rss_max:.1f} MiB max while idle, "
            f"{hwm:.1f} MiB peak since start (target < 60)"
        )
    return True


def certificates(count: int) -> list[tuple[str, str]]:
    """(certificate name, DNS name): ``c0001`` .. with the 200 bench names round-robin."""
    names = bench_names(200)
    return [(f"c{index + 1:04d}", names[index % len(names)]) for index in range(count)]


def toml_config(ca: StepCA, work: Path, count: int) -> Path:
    lines = [
        "[acme]",
        f'directory = "{ca.directory_url}"',
        f'ca_bundle = "{ca.root_path}"',
        f'http_listen = "{HTTP_ADDRESS}:80"',
        "[files]",
        f'certs_dir = "{work / "certs"}"',
        f'state_dir = "{work / "state"}"',
    ]
    for name, domain in certificates(count):
        lines += ["[[certificates]]", f'name = "{name}"', f'domains = ["{domain}"]']
    # Alone in its directory: the sidecar watches the config file's directory for changes, so
    # the run log or the certificates next to it would trigger reloads (see RESULTS.md).
    path = work / "config" / "sidecar.toml"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    return path


def serials(certs_dir: Path, count: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for index in range(count):
        path = certs_dir / f"c{index + 1:04d}.pem"
        with contextlib.suppress(OSError, ValueError, IndexError):
            found[path.stem] = x509.load_pem_x509_certificates(path.read_bytes())[0].serial_number
    return found


def thousand(ca: StepCA, count: int) -> bool:
    work = OUT_DIR / "idle" / "thousand"
    common_flags(ca, work)  # only for the fresh directories; the TOML holds the settings
    config = toml_config(ca, work, count)
    print(f"\n[{count} certificates] cert-sidecar run --config {config.name}")
    with sidecar_run(["--config", str(config)], work) as (process, port):
        files = {work / "certs" / f"{name}.pem": domain for name, domain in certificates(count)}
        took = wait_issued(process, ca, files, deadline=600)
        before = serials(work / "certs", count)
        rss, hwm = memory_mib(process.pid)
        cpu = cpu_seconds(process.pid)
        print(
            f"  start to all {len(before)} issued (first pass): {took:.1f} s, "
            f"CPU {cpu:.1f} s; RSS {rss:.1f} MiB (peak {hwm:.1f}); /readyz {readyz(port)}"
        )
        if len(before) != count:
            print(f"  FAILED: only {len(before)} of {count} certificate files parse")
            return False
        time.sleep(2.0)
        rss_idle, _ = memory_mib(process.pid)
        print(f"  RSS idle after the first pass: {rss_idle:.1f} MiB")
        cpu_start = cpu_seconds(process.pid)
        start = time.perf_counter()
        renew = subprocess.run(
            [str(SIDECAR), "renew", "--force", "--config", str(config), "--log-format", "json"],
            capture_output=True,
            env=peer_environment(),
            check=False,
            timeout=900,
        )
        took = time.perf_counter() - start
        cpu = cpu_seconds(process.pid) - cpu_start
        (work / "renew.log").write_bytes(renew.stdout + renew.stderr)
        after = serials(work / "certs", count)
        unchanged = [name for name, serial in before.items() if after.get(name) == serial]
        rss, hwm = memory_mib(process.pid)
        status = "ok" if renew.returncode == 0 and not unchanged else "FAILED"
        print(
            f"  renew --force through the running sidecar: {took:.1f} s wall "
            f"({count / took:.0f} certificates/s), run's CPU {cpu:.1f} s, exit "
            f"{renew.returncode}, {count - len(unchanged)}/{count} serials changed: {status}"
        )
        print(f"  RSS after the renewal pass: {rss:.1f} MiB (peak since start {hwm:.1f})")
        # Each reload re-checks every certificate; with nothing edited there must be none.
        reloads = (work / "run.log").read_bytes().count(b'"config_reloaded"')
        print(f"  configuration reloads during the run: {reloads} (expected 0)")
        if status != "ok":
            tail = (renew.stderr or renew.stdout).decode(errors="replace").strip()[-400:]
            print(f"  renew output: {tail}")
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=60.0, help="idle window in seconds")
    parser.add_argument("--count", type=int, default=1000, help="certificates in part 2")
    parser.add_argument("--skip-1000", action="store_true", help="only part 1")
    args = parser.parse_args(argv)

    print(machine_summary())
    print(f"  cert-sidecar: {tool_versions()['cert-sidecar']}")
    ok = True
    with bench_lock(), step_ca("idle") as ca:
        print(f"step-ca {ca.directory_url} (24h certificates)")
        ok = idle_ten(ca, args.idle) and ok
        if not args.skip_1000:
            ok = thousand(ca, args.count) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
