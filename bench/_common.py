"""Shared plumbing for the bench scripts: a private step-ca, measured child runs, checks.

Not a test module and not part of the package: plain Python run as
``.venv/bin/python bench/<script>.py``. The step-ca comes from the test peers
(``tests/peers/stepca.py``) so the benchmark and the integration tests talk to the same CA.

Why ``os.wait4`` and not ``resource.getrusage(RUSAGE_CHILDREN)``: the latter accumulates every
child ever reaped (step-ca included once it stops), and its ``ru_maxrss`` is the maximum over
all of them; ``wait4`` gives exactly one child's user/sys time. Peak RSS needs GNU time in
between (see ``run_measured``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # ``tests.peers`` is imported as a package from the repository root, as pytest does.
    sys.path.insert(0, str(REPO_ROOT))

from cryptography import x509  # noqa: E402

from tests.peers.loopback import hosts_block_names  # noqa: E402
from tests.peers.processes import peer_environment  # noqa: E402
from tests.peers.stepca import StepCA, create_step_ca  # noqa: E402

__all__ = [
    "OUT_DIR",
    "REPO_ROOT",
    "SIDECAR",
    "Measured",
    "StepCA",
    "bench_lock",
    "bench_names",
    "ca_cpu_seconds",
    "check_certificate",
    "fmt_ratio",
    "machine_summary",
    "median",
    "run_measured",
    "step_ca",
    "tool_versions",
]

OUT_DIR = REPO_ROOT / "bench" / "out"  # git-ignored scratch space
SIDECAR = REPO_ROOT / ".venv" / "bin" / "cert-sidecar"
BENCH_LOCK = Path("/tmp/cert-sidecar-loopback/bench.lock")
# The bench names resolve to 127.0.0.1 (tests lease 127.0.1.N instead), so the challenge
# responders of every client under test bind here.
HTTP_ADDRESS = "127.0.0.1"
GNU_TIME = "/usr/bin/time"  # Debian package ``time``


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """One bench script at a time on this machine: they all need 127.0.0.1:80."""
    BENCH_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(BENCH_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another bench script to finish ...", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def step_ca(name: str, **kwargs: str) -> Iterator[StepCA]:
    """A fresh step-ca in ``bench/out/<name>/ca``, always stopped at the end."""
    directory = OUT_DIR / name / "ca"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    ca = create_step_ca(directory, **kwargs)  # type: ignore[arg-type]
    try:
        yield ca
    finally:
        ca.stop()


def ca_cpu_seconds(ca: StepCA) -> float:
    """step-ca's user+sys CPU so far: on 2 cores the CA's own work bounds any client."""
    process = ca._process  # the peer fixture exposes no public pid
    pid = process.pid if process is not None else None
    if pid is None:
        return float("nan")
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_names(count: int) -> tuple[str, ...]:
    """``count`` (<= 200) names resolving to 127.0.0.1 through the managed /etc/hosts block."""
    return hosts_block_names(count)


@dataclass(frozen=True)
class Measured:
    """One child process's run: wall clock, CPU (user+sys, from ``wait4``) and peak RSS."""

    ok: bool
    wall: float
    cpu: float
    maxrss_mib: float
    returncode: int
    detail: str = ""


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def run_measured(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    cwd: Path | None = None,
) -> Measured:
    """Run ``argv`` to completion; ``ok`` means exit status 0 (callers check the output too).

    Output goes to ``log`` (a file, never a pipe, so the child cannot block on a full pipe and
    the parent does no reading while the clock runs).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = peer_environment(env)  # no proxies: everything here is on loopback
    rss_file = log.with_name(log.name + ".maxrss")
    rss_file.unlink(missing_ok=True)
    # Linux carries a process's peak RSS across fork and exec (signal->maxrss), so a child
    # forked from this ~45 MiB interpreter would report at least that much whatever it really
    # used. GNU time, a small C program, forks the real child from its own tiny image and
    # reports that child's ru_maxrss; CPU still comes from wait4 (time adds ~1 ms to it).
    wrapped = [GNU_TIME, "--quiet", "-f", "%M", "-o", str(rss_file), *argv]
    with log.open("wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            wrapped,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd,
            start_new_session=True,  # a timeout kills time and the client together
        )
        killer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
    returncode = os.waitstatus_to_exitcode(status)
    process.returncode = returncode  # reaped by wait4; keeps Popen from waiting again
    try:
        maxrss_kib = float(rss_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        maxrss_kib = float("nan")
    return Measured(
        ok=returncode == 0,
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        maxrss_mib=maxrss_kib / 1024.0,
        returncode=returncode,
        detail="" if returncode == 0 else _tail(log),
    )


def check_certificate(path: Path, names: Sequence[str], ca: StepCA) -> str | None:
    """None when ``path`` starts with a currently valid leaf for ``names`` issued by ``ca``.

    Otherwise a one-line reason. The leaf is the first certificate in the file (the layout of
    cert-sidecar's combined PEM, lego's ``.crt`` and certbot's ``fullchain.pem``).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"no certificate file: {exc}"
    try:
        leaf = x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError) as exc:
        return f"{path.name}: not a PEM certificate ({exc})"
    issuer = ca.intermediate.certificate
    try:
        leaf.verify_directly_issued_by(issuer)
    except Exception as exc:
        return f"{path.name}: not issued by the bench CA ({type(exc).__name__})"
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return f"{path.name}: not valid now"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    missing = set(names) - set(san.get_values_for_type(x509.DNSName))
    if missing:
        return f"{path.name}: names missing from the SAN: {sorted(missing)}"
    return None


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_ratio(numerator: float, denominator: float) -> str:
    if not denominator or denominator != denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def _first_line(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def tool_versions() -> dict[str, str]:
    """Versions of everything compared, for the results file."""
    # Debian's lego binary calls itself "dev"; the package version is the real one.
    packages = _first_line(
        ["dpkg-query", "-W", "-f", "${Package}=${Version} ", "lego", "certbot", "haproxy"]
    )
    return {
        "cert-sidecar": _first_line([str(SIDECAR), "--version"]),
        "lego": _first_line(["lego", "--version"]),
        "certbot": _first_line(["certbot", "--version"]),
        "debian packages": packages,
        "python": platform.python_version(),
    }


def machine_summary() -> str:
    """nproc, CPU model, memory and the date: the context every number needs."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    load = os.getloadavg()
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()}; {model}; "
        f"{mem_kib / 1024 / 1024:.1f} GiB RAM; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
