"""Crash safety of the files HAProxy reads, the cross-process certificate lock, and permissions.

- A writer that atomic-writes a combined PEM in a loop is SIGKILLed at random moments, many
  times: the target must always be one of the two complete bundles, and the leftover dot-files
  must all be removed by ``clean_stale_temp_files``.
- ``cert-sidecar issue`` against step-ca is SIGKILLed before, around and after its write, each
  kill timed from its own JSON log: the PEM is always whole, and ``run`` then removes the
  leftover dot-files at start.
- Two processes contend for one certificate's lock: they never hold it together, a waiter that
  times out is told who holds it, and a holder killed with SIGKILL leaves no stale lock.
- As an unprivileged user (uid/gid 65534, no supplementary groups), a read-only directory gives
  one clear error naming the path, and leaves the existing file as it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar import pem, storage
from sidecar.storage import LockTimeout, StateStore, StorageError
from tests.integration.cli import clean_env, readyz_ok, run_cli, running_sidecar, stepca_run_args
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
KILLS = 200
# How long a child may take to reach the point a test waits for. Every wait ends on an event
# (a byte or line from the child, its exit); this only turns a hang into a failure, and is
# generous for a loaded 2-core machine.
DEADLINE = 60.0


def _bundle(ca: trustme.CA, name: str) -> bytes:
    leaf = ca.issue_cert(name)
    blobs = [blob.bytes() for blob in leaf.cert_chain_pems]
    return pem.combined_pem(blobs[0], blobs[1:], leaf.private_key_pem.bytes())


# -- SIGKILL during writes -----------------------------------------------------------------------


def _write_forever(target: Path, bundles: tuple[bytes, bytes], progress: int) -> None:
    """The child: what the sidecar does on every renewal, as fast as it can, writing one byte
    to ``progress`` after each complete (renamed and synced) write."""
    while True:
        for data in bundles:
            storage.atomic_write(target, data, mode=0o640)
            os.write(progress, b".")


def _read(fd: int, what: str, *, until: Callable[[bytes], bool], end: float | None = None) -> bytes:
    """Bytes from a pipe until ``until`` holds for them or the stream ends; fails at ``end``
    (monotonic; DEADLINE from now by default) instead of hanging. Reads one byte at a time, so
    nothing past the point is consumed."""
    end = time.monotonic() + DEADLINE if end is None else end
    data = b""
    while not until(data):
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}: {data!r}")
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


def _read_exactly(fd: int, count: int, what: str) -> bytes:
    data = _read(fd, what, until=lambda data: len(data) >= count)
    assert len(data) == count, f"end of stream while waiting for {what}"
    return data


def _read_line(process: subprocess.Popen[bytes], what: str) -> bytes:
    assert process.stdout is not None
    return _read(process.stdout.fileno(), what, until=lambda data: data.endswith(b"\n"))


def test_sigkill_during_writes_never_leaves_a_partial_pem(tmp_path: Path):
    intermediate = trustme.CA().create_child_ca()
    bundles = (_bundle(intermediate, "a.example"), _bundle(intermediate, "a.example"))
    assert bundles[0] != bundles[1]
    target = tmp_path / "a.example.pem"
    storage.atomic_write(target, bundles[0], mode=0o640)
    rng = random.Random(20261128)
    kills_with_leftovers = 0
    seen = set()
    for attempt in range(KILLS):
        # fork, not a new interpreter: 200 interpreter start-ups would take most of a minute,
        # and the child runs exactly the code the sidecar runs.
        progress_read, progress_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                os.close(progress_read)
                _write_forever(target, bundles, progress_write)
            finally:
                os._exit(1)
        os.close(progress_write)
        # Kill only once the writer has replaced the file once or twice (so either bundle can
        # be the last whole one, however slow the machine), then at a random phase of the
        # cycles that follow.
        try:
            _read_exactly(progress_read, rng.choice((1, 2)), "the writer's complete writes")
            _sleep_seconds(rng.uniform(0, 0.02))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.close(progress_read)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"the writer ended by itself on attempt {attempt}: it failed"
        )
        data = target.read_bytes()
        assert data in bundles, f"attempt {attempt}: the PEM is not one of the two bundles"
        seen.add(data)
        pem.validate_for_deploy(data, ["a.example"], datetime.now(UTC))
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        kills_with_leftovers += bool(leftovers)
        removed = storage.clean_stale_temp_files(tmp_path)
        assert sorted(removed) == sorted(leftovers)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.example.pem"]
    # Evidence that the kills did land mid-write (a temporary was open) and that both bundles
    # were the whole file at a kill: otherwise this test would prove nothing. The temporary
    # exists for most of a write cycle (from its creation through its fsync), so 200 kills at
    # random phases leave one behind many times over.
    print(f"{KILLS} kills, {kills_with_leftovers} left a temporary behind")
    assert kills_with_leftovers > 0
    assert seen == set(bundles)


def _sleep_seconds(seconds: float) -> None:
    # select() with no descriptors: a plain sub-millisecond-precision pause.
    select.select([], [], [], seconds)


# -- SIGKILL of a whole `issue` against step-ca --------------------------------------------------

# Where each kill of `issue --force` lands, timed from its own JSON log on stderr rather than
# from its start (interpreter start-up and an issuance take anywhere from tenths of a second to
# seconds on a loaded machine):
# - "ordering": at cert_renewal_started, before anything is written: the old PEM stays;
# - "writing": at ca_client's "certificate issued" line, which comes just before the write,
#   then a random 0-20 ms: the old PEM or the new one, whole (a debug line in the sidecar's
#   log, where cert_issued says the same at info: hence --log-level debug);
# - "written": at cert_issued, which comes after the write: the new PEM.
KILL_POINTS = {
    "ordering": lambda event: event.get("event") == "cert_renewal_started",
    "writing": lambda event: str(event.get("event", "")).startswith("certificate issued for "),
    "written": lambda event: event.get("event") == "cert_issued",
}


def _wait_for_event(
    process: subprocess.Popen[bytes], wanted: Callable[[dict[str, object]], bool], what: str
) -> None:
    """Read the child's JSON log lines until one is ``wanted``; fail after DEADLINE."""
    assert process.stderr is not None
    end = time.monotonic() + DEADLINE
    seen: list[object] = []
    while True:
        line = _read(process.stderr.fileno(), what, until=lambda d: d.endswith(b"\n"), end=end)
        if not line:
            raise AssertionError(
                f"`issue` exited ({process.wait()}) before {what}; its events: {seen}"
            )
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            seen.append(event.get("event"))
            if wanted(event):
                return


def _serial(path: Path) -> int:
    data = path.read_bytes()
    return pem.describe_cert(pem.parse_combined(data).leaf).serial


@pytest.mark.stepca
def test_sigkill_of_issue_at_each_stage_leaves_a_whole_pem(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    args = stepca_run_args(step_ca, tmp_path, loopback)
    pem_path = certs / f"{loopback.name}.pem"
    assert run_cli(["issue", *args]).code == 0
    rng = random.Random(1234)
    for stage in [*KILL_POINTS] * 4:
        before = _serial(pem_path)
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "issue", "--force", "--log-level", "debug", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=clean_env(),
            cwd=REPO,
        )
        try:
            _wait_for_event(process, KILL_POINTS[stage], f"the {stage!r} kill point")
            if stage == "writing":
                _sleep_seconds(rng.uniform(0, 0.02))
        finally:
            process.kill()
            process.wait()
            assert process.stderr is not None
            process.stderr.close()
        data = pem_path.read_bytes()
        bundle = pem.validate_for_deploy(
            data, [loopback.name], pem.describe_cert(pem.parse_combined(data).leaf).not_before
        )
        assert bundle.leaf is not None
        after = _serial(pem_path)
        if stage == "ordering":
            assert after == before, "killed before the write, yet the PEM changed"
        elif stage == "written":
            assert after != before, "cert_issued was logged before the new PEM was in place"
        # Only dot-files (which HAProxy skips) may be left beside the PEM.
        assert all(p.name.startswith(".") for p in certs.iterdir() if p != pem_path)
    # A kill leaves a temporary only when it lands mid-write; one more in their pattern makes
    # sure the start-up clean-up below always has something to remove.
    (certs / f".{pem_path.name}.{secrets.token_hex(8)}").write_bytes(b"half a PEM")
    with running_sidecar(args, tmp_path / "run.log", until=readyz_ok()):
        assert [p.name for p in certs.iterdir()] == [pem_path.name]


# -- the lock across processes -------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import asyncio, os, sys
    from sidecar.storage import StateStore

    async def main() -> None:
        store = StateStore(sys.argv[1])
        async with store.lock(sys.argv[2], holder=f"issue pid {os.getpid()}"):
            print("locked", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print("released", flush=True)

    asyncio.run(main())
    """
)

_CONTENDER = textwrap.dedent(
    """
    import asyncio, os, sys
    from sidecar.storage import StateStore

    async def main() -> None:
        store = StateStore(sys.argv[1])
        log = sys.argv[2]
        for _ in range(int(sys.argv[3])):
            async with store.lock("a.example", timeout=60, holder=f"contender {os.getpid()}"):
                with open(log, "a") as f:
                    f.write(f"in {os.getpid()}\\n")
                await asyncio.sleep(0.002)
                with open(log, "a") as f:
                    f.write(f"out {os.getpid()}\\n")
            await asyncio.sleep(0)

    asyncio.run(main())
    """
)


def _python(script: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,  # unbuffered: _read_line reads the pipe itself, with a deadline
        cwd=REPO,
        env=env,
    )


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = _python(_HOLDER, str(tmp_path / "state"), "a.example")
    try:
        assert _read_line(process, "the holder to take the lock") == b"locked\n"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.anyio
async def test_a_second_process_times_out_naming_the_holder(tmp_path, holder):
    store = StateStore(tmp_path / "state")
    with pytest.raises(LockTimeout) as caught:
        async with store.lock("a.example", timeout=0.2, holder="renew"):
            pytest.fail("two processes held the same certificate's lock")
    assert f"issue pid {holder.pid}" in str(caught.value)
    assert caught.value.holder.startswith(f"issue pid {holder.pid} since ")
    # Released by the holder: the lock is free at once.
    assert holder.stdin is not None
    holder.stdin.close()
    assert _read_line(holder, "the holder to release the lock") == b"released\n"
    async with store.lock("a.example", timeout=30):
        pass


@pytest.mark.anyio
async def test_a_sigkilled_holder_leaves_no_stale_lock(tmp_path, holder):
    store = StateStore(tmp_path / "state")
    acquired = asyncio.Event()

    async def wait_for_it() -> None:
        async with store.lock("a.example", timeout=60, holder="waiter"):
            acquired.set()

    waiter = asyncio.create_task(wait_for_it())
    await asyncio.sleep(0.05)
    assert not acquired.is_set()
    holder.kill()
    await asyncio.get_running_loop().run_in_executor(None, holder.wait)
    await waiter
    assert acquired.is_set()


def test_two_processes_never_hold_the_lock_together(tmp_path: Path):
    StateStore(tmp_path / "state")
    log = tmp_path / "log"
    rounds = 30
    contenders = [
        _python(_CONTENDER, str(tmp_path / "state"), str(log), str(rounds)) for _ in range(2)
    ]
    for process in contenders:
        assert process.wait(timeout=120) == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 2 * rounds
    for entered, left in zip(lines[::2], lines[1::2], strict=True):
        assert entered.startswith("in ") and left == "out " + entered[3:], (entered, left)
    assert {line.split()[1] for line in lines} == {str(p.pid) for p in contenders}


# -- permissions as an unprivileged user ---------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="cert-sidecar-perm-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _as_nobody(action: Callable[[], object]) -> dict[str, object]:
    """Run ``action`` in a child that has dropped to uid/gid 65534 with no supplementary groups.

    This is what ``setpriv --reuid=65534 --regid=65534 --clear-groups`` does, done after the
    imports: the project's interpreter may live under /root (mode 0700, e.g. pyenv), where the
    unprivileged user could not even start it.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        result: dict[str, object]
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            identity = [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()]
            try:
                result = {"identity": identity, "value": repr(action())}
            except Exception as error:  # reported to the parent, which asserts on it
                result = {
                    "identity": identity,
                    "error": type(error).__name__,
                    "message": str(error),
                }
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        output = _read(read_end, "the unprivileged child's result", until=lambda data: False)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    result = json.loads(output)
    assert result["identity"] == [NOBODY, NOBODY, NOBODY, []], "privileges were not dropped"
    return result


def test_read_only_certs_dir_is_a_clear_error_and_keeps_the_old_pem(shared_dir: Path):
    certs = shared_dir / "certs"
    certs.mkdir(mode=0o755)
    target = certs / "a.example.pem"
    target.write_bytes(b"the good old certificate\n")
    result = _as_nobody(lambda: storage.atomic_write(target, b"new", mode=0o640))
    assert result.get("error") == "StorageError"
    assert result["message"] == f"cannot write {target}: Permission denied"
    assert target.read_bytes() == b"the good old certificate\n"
    assert sorted(p.name for p in certs.iterdir()) == ["a.example.pem"]


def test_read_only_state_dir_is_a_clear_error(shared_dir: Path):
    state = shared_dir / "state"
    state.mkdir(mode=0o755)
    result = _as_nobody(lambda: StateStore(state))
    assert result.get("error") == "StorageError"
    assert result["message"] == f"cannot create {state / 'account'}: Permission denied"
    missing = shared_dir / "not-yet"
    result = _as_nobody(lambda: StateStore(missing))
    assert result["message"] == f"cannot create {missing}: Permission denied"


def test_a_group_the_user_is_not_in_is_refused_and_leaves_nothing(shared_dir: Path):
    certs = shared_dir / "certs"
    certs.mkdir()
    os.chown(certs, NOBODY, NOBODY)
    target = certs / "a.example.pem"
    result = _as_nobody(lambda: storage.atomic_write(target, b"x", mode=0o640, group=0))
    assert result.get("error") == "StorageError"
    assert result["message"] == f"cannot set group 0 on {target}: Operation not permitted"
    assert list(certs.iterdir()) == []


def test_unreadable_key_and_unwritable_lock_are_clear_errors(shared_dir: Path):
    state = shared_dir / "state"
    store = StateStore(state)
    store.save_issued(
        "a.example", b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n", []
    )
    store.save_key("a.example", ec.generate_private_key(ec.SECP256R1()))
    # Open the directories (the store makes them 0700), so that only the files' own modes count.
    for path in [state, *state.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    key_file = store.cert_dir("a.example") / "key.pem"
    result = _as_nobody(lambda: store.load_key("a.example"))
    assert result["message"] == f"cannot read {key_file}: Permission denied"
    assert "BEGIN" not in str(result["message"])

    async def lock() -> None:
        async with store.lock("a.example", timeout=1):
            pass

    result = _as_nobody(lambda: asyncio.run(lock()))
    assert result["message"] == f"cannot open {store.lock_path('a.example')}: Permission denied"
    # The certificate itself is public (0644 in a 0700 state directory): readable when reached.
    assert _as_nobody(lambda: store.load_cert("a.example")).get("error") is None


def test_storage_error_is_what_the_cli_reports(shared_dir: Path):
    error = StorageError("cannot write x: Permission denied", shared_dir)
    assert str(error) == "cannot write x: Permission denied" and error.exit_code == 1
