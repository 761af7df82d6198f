"""Atomic writes, the state directory and its records, and the per-certificate lock."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from structlog.testing import capture_logs

from sidecar import storage
from sidecar.errors import OperationError
from sidecar.storage import CertMeta, LockTimeout, StateStore, StateVersionError, StorageError

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DIRECTORY = "https://step-ca:9000/acme/acme/directory"


@pytest.fixture
def umask() -> Iterator[None]:
    """A permissive umask, so a test sees that the mode is the one asked for, not the umask's."""
    previous = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# -- atomic_write --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_atomic_write_sets_exactly_the_mode_whatever_the_umask(tmp_path, mode, mask):
    previous = os.umask(mask)
    try:
        storage.atomic_write(tmp_path / "a.pem", b"data\n", mode=mode)
    finally:
        os.umask(previous)
    assert (tmp_path / "a.pem").read_bytes() == b"data\n"
    assert mode_of(tmp_path / "a.pem") == mode
    assert dot_files(tmp_path) == []


def test_atomic_write_replaces_and_takes_the_new_mode(tmp_path, umask):
    target = tmp_path / "a.pem"
    target.write_bytes(b"old")
    target.chmod(0o666)
    storage.atomic_write(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o600


def test_atomic_write_sets_the_group(tmp_path):
    # The tests run as root, which may give a file any group.
    storage.atomic_write(tmp_path / "a.pem", b"x", mode=0o640, group=65534)
    assert (tmp_path / "a.pem").stat().st_gid == 65534


def test_the_temporary_is_never_more_open_than_the_final_mode(tmp_path, umask, monkeypatch):
    """Spy on the first data write: by then the temporary must already have mode and group."""
    seen: list[tuple[str, int, int]] = []
    real_write = os.write

    def spying_write(fd: int, data: bytes | memoryview) -> int:
        info = os.fstat(fd)
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_IMODE(info.st_mode), info.st_gid))
        return real_write(fd, data)

    monkeypatch.setattr(storage.os, "write", spying_write)
    storage.atomic_write(tmp_path / "key.pem", b"secret", mode=0o600, group=65534)
    monkeypatch.undo()
    assert seen, "atomic_write did not write through os.write"
    for path, mode, gid in seen:
        assert Path(path).name.startswith(".key.pem.")
        assert Path(path).parent == tmp_path
        assert (mode, gid) == (0o600, 65534)


def test_atomic_write_failure_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "a.pem"
    target.mkdir()  # rename of a file over a directory fails
    with pytest.raises(StorageError, match=r"cannot write .*a\.pem: Is a directory") as caught:
        storage.atomic_write(target, b"x", mode=0o600)
    assert caught.value.path == target
    assert target.is_dir()
    assert dot_files(tmp_path) == []


def test_atomic_write_into_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match=r"cannot write .*/missing/a\.pem: No such file"):
        storage.atomic_write(tmp_path / "missing" / "a.pem", b"x", mode=0o600)


def test_atomic_write_refuses_odd_modes(tmp_path):
    with pytest.raises(ValueError, match="beyond rwx"):
        storage.atomic_write(tmp_path / "a.pem", b"x", mode=0o4755)


def test_storage_errors_are_operation_errors():
    assert issubclass(StorageError, OperationError)
    assert StorageError("x").exit_code == 1


def test_atomic_write_handles_very_long_names(tmp_path):
    name = "a" * 240 + ".pem"
    storage.atomic_write(tmp_path / name, b"x", mode=0o600)
    assert (tmp_path / name).read_bytes() == b"x"


# -- clean_stale_temp_files ----------------------------------------------------------------------


def test_clean_removes_only_our_leftovers(tmp_path):
    leftovers = [".a.example.pem.0123456789abcdef", "._wildcard.b.example.pem.ffff0000ffff0000"]
    keep = ["a.example.pem", ".hidden", ".a.pem", "x.pem.0123456789abcdef", ".notes.txt.1234"]
    for name in leftovers + keep:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".dir.pem.0123456789abcdef").mkdir()  # not a file: not ours
    removed = storage.clean_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(leftovers)
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert remaining == sorted([*keep, ".dir.pem.0123456789abcdef"])


def test_clean_spares_young_temporaries_when_asked(tmp_path):
    old = tmp_path / ".a.pem.0123456789abcdef"
    young = tmp_path / ".b.pem.0123456789abcdef"
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    os.utime(old, (0, 0))
    removed = storage.clean_stale_temp_files(tmp_path, min_age=3600)
    assert removed == [old]
    assert young.exists()


def test_clean_of_a_missing_directory_is_nothing_to_do(tmp_path):
    assert storage.clean_stale_temp_files(tmp_path / "nope") == []


# -- state directory -----------------------------------------------------------------------------


def test_state_store_creates_the_layout_and_version(tmp_path, umask):
    root = tmp_path / "state"
    store = StateStore(root)
    assert store.root == root
    assert (root / "VERSION").read_text() == "1\n"
    for sub in ("account", "certs", "locks"):
        assert (root / sub).is_dir()
        assert mode_of(root / sub) == 0o700
    assert mode_of(root) == 0o700
    StateStore(root)  # reopening is fine


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("2\n", r"schema version 2 \(from a newer cert-sidecar\); this release reads version 1"),
        ("0", "schema version 0; this release reads version 1"),
        ("banana", "not a schema version"),
        ("", "not a schema version"),
    ],
)
def test_state_store_refuses_an_unknown_version(tmp_path, content, message):
    (tmp_path / "VERSION").write_text(content)
    with pytest.raises(StateVersionError, match=message):
        StateStore(tmp_path)
    assert (tmp_path / "VERSION").read_text() == content  # not silently rewritten


def test_state_store_cleans_its_own_interrupted_writes(tmp_path):
    store = StateStore(tmp_path)
    store.save_key("a.example", ec.generate_private_key(ec.SECP256R1()))
    leftover = store.cert_dir("a.example") / ".meta.json.0123456789abcdef"
    leftover.write_bytes(b"{")
    in_flight = store.cert_dir("a.example") / ".cert.pem.0123456789abcdef"
    in_flight.write_bytes(b"-----BEGIN")
    os.utime(leftover, (0, 0))
    StateStore(tmp_path)
    assert not leftover.exists()
    # A young temporary may be another process's write in progress: spared.
    assert in_flight.exists()
    assert (store.cert_dir("a.example") / "key.pem").exists()


def test_a_reading_store_creates_and_cleans_nothing(tmp_path):
    root = tmp_path / "state"
    StateStore(root, create=False)
    assert not root.exists()
    StateStore(root)
    (root / "VERSION").write_text("7\n")
    with pytest.raises(StateVersionError, match="schema version 7"):
        StateStore(root, create=False)


@pytest.mark.parametrize("name", ["", ".", "..", "../etc", "a/b", "a b", "*.example", "é.example"])
def test_invalid_certificate_names_never_reach_the_file_system(tmp_path, name):
    store = StateStore(tmp_path)
    with pytest.raises(ValueError, match="invalid certificate name"):
        store.cert_dir(name)
    with pytest.raises(ValueError, match="invalid certificate name"):
        store.lock_path(name)


# -- account -------------------------------------------------------------------------------------


def test_account_round_trip_keyed_by_directory(tmp_path):
    store = StateStore(tmp_path)
    assert store.load_account(DIRECTORY) is None
    key = ec.generate_private_key(ec.SECP256R1())
    store.save_account_key(DIRECTORY, key)
    loaded = store.load_account(DIRECTORY)
    assert loaded is not None
    assert loaded[0].private_numbers() == key.private_numbers()
    assert loaded[1] is None
    store.save_account_url(DIRECTORY, "https://ca/acme/acct/1", ["mailto:a@example"])
    loaded = store.load_account(DIRECTORY)
    assert loaded is not None and loaded[1] == "https://ca/acme/acct/1"
    document = json.loads((store.account_dir(DIRECTORY) / "account.json").read_text())
    assert document == {
        "url": "https://ca/acme/acct/1",
        "directory": DIRECTORY,
        "contact": ["mailto:a@example"],
    }
    assert mode_of(store.account_dir(DIRECTORY) / "key.pem") == 0o600
    # Another CA has no account yet, and its own directory.
    other = "https://other:9000/acme/acme/directory"
    assert store.load_account(other) is None
    assert store.account_dir(other) != store.account_dir(DIRECTORY)
    assert store.account_dir(DIRECTORY).parent == tmp_path / "account"
    # The CA forgot the account: the key stays, the URL goes.
    store.forget_account_url(DIRECTORY)
    loaded = store.load_account(DIRECTORY)
    assert loaded is not None and loaded[1] is None


def test_a_corrupt_account_json_means_no_url_and_is_logged(tmp_path):
    store = StateStore(tmp_path)
    store.save_account_key(DIRECTORY, ec.generate_private_key(ec.SECP256R1()))
    (store.account_dir(DIRECTORY) / "account.json").write_text("{not json")
    with capture_logs() as logs:
        loaded = store.load_account(DIRECTORY)
    assert loaded is not None and loaded[1] is None
    assert [entry["event"] for entry in logs] == ["state_file_corrupt"]


def test_a_corrupt_key_is_an_error_that_does_not_quote_it(tmp_path):
    store = StateStore(tmp_path)
    store.save_account_key(DIRECTORY, ec.generate_private_key(ec.SECP256R1()))
    key_file = store.account_dir(DIRECTORY) / "key.pem"
    broken = key_file.read_bytes()[:-40] + b"\n-----END PRIVATE KEY-----\n"
    key_file.write_bytes(broken)
    with pytest.raises(StorageError, match="not a valid unencrypted private key") as caught:
        store.load_account(DIRECTORY)
    body = b"".join(broken.split(b"\n")[1:-2]).decode()
    assert body[:20] not in str(caught.value)


# -- certificates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)],
    ids=["ec-p384", "rsa-2048"],
)
def test_certificate_key_round_trip(tmp_path, umask, key):
    store = StateStore(tmp_path)
    assert store.load_key("a.example") is None
    store.save_key("a.example", key)
    loaded = store.load_key("a.example")
    assert loaded is not None and loaded.private_numbers() == key.private_numbers()
    assert mode_of(store.cert_dir("a.example") / "key.pem") == 0o600
    replacement = ec.generate_private_key(ec.SECP256R1())
    store.save_key("a.example", replacement)
    again = store.load_key("a.example")
    assert again is not None and again.private_numbers() == replacement.private_numbers()
    store.discard_key("a.example")
    assert store.load_key("a.example") is None
    store.discard_key("a.example")  # twice is fine


@pytest.fixture(scope="module")
def issued() -> list[tuple[bytes, list[bytes]]]:
    intermediate = trustme.CA().create_child_ca()
    result = []
    for _ in range(3):
        blobs = [b.bytes() for b in intermediate.issue_cert("a.example").cert_chain_pems]
        result.append((blobs[0], blobs[1:]))
    return result


def test_save_issued_keeps_the_previous_certificate(tmp_path, issued):
    store = StateStore(tmp_path)
    assert store.load_cert("a.example") is None
    first, second, third = issued
    store.save_issued("a.example", *first)
    assert store.load_cert("a.example") == (first[0], first[1][0])
    assert store.load_previous("a.example") is None
    store.save_issued("a.example", *second)
    assert store.load_cert("a.example") == (second[0], second[1][0])
    assert store.load_previous("a.example") == first[0] + first[1][0]
    # Saving the same certificate again does not lose the previous one.
    store.save_issued("a.example", *second)
    assert store.load_previous("a.example") == first[0] + first[1][0]
    store.save_issued("a.example", *third)
    assert store.load_previous("a.example") == second[0] + second[1][0]
    assert store.stored_names() == ["a.example"]
    assert dot_files(store.cert_dir("a.example")) == []


def test_save_issued_without_a_chain(tmp_path, issued):
    store = StateStore(tmp_path)
    store.save_issued("a.example", issued[0][0], [])
    assert store.load_cert("a.example") == (issued[0][0], b"")


def test_remove_cert(tmp_path, issued):
    store = StateStore(tmp_path)
    store.save_issued("a.example", *issued[0])
    store.save_key("a.example", ec.generate_private_key(ec.SECP256R1()))
    store.remove_cert("a.example")
    assert store.load_cert("a.example") is None
    assert store.stored_names() == []
    store.remove_cert("a.example")


# -- metadata ------------------------------------------------------------------------------------


FULL_META = CertMeta(
    order_url="https://ca/acme/order/1",
    issued_at=T0,
    not_before=T0 - timedelta(minutes=1),
    not_after=T0 + timedelta(hours=24),
    serial="0A1B",
    domains=("a.example", "b.example"),
    key_type="ec-p256",
    last_error="CA unreachable: connection refused",
    failures=3,
    next_retry_at=T0 + timedelta(seconds=40),
    last_attempt_at=T0,
    last_success_at=T0 - timedelta(days=1),
)

# FULL_META as the releases before issue 18 wrote it: with what HAProxy was last told
# (deployed_serial, deployed_at), written after every deploy and never read.
BEFORE_ISSUE_18 = """{
  "deployed_at": "2026-11-28T12:00:01+00:00",
  "deployed_serial": "0A1B",
  "domains": [
    "a.example",
    "b.example"
  ],
  "failures": 3,
  "issued_at": "2026-11-28T12:00:00+00:00",
  "key_type": "ec-p256",
  "last_attempt_at": "2026-11-28T12:00:00+00:00",
  "last_error": "CA unreachable: connection refused",
  "last_success_at": "2026-11-27T12:00:00+00:00",
  "next_retry_at": "2026-11-28T12:00:40+00:00",
  "not_after": "2026-11-29T12:00:00+00:00",
  "not_before": "2026-11-28T11:59:00+00:00",
  "order_url": "https://ca/acme/order/1",
  "serial": "0A1B",
  "zz_from_the_future": 1
}
"""


def test_meta_json_round_trip(tmp_path, umask):
    store = StateStore(tmp_path)
    assert store.load_meta("a.example") is None
    store.save_meta("a.example", FULL_META)
    assert store.load_meta("a.example") == FULL_META
    assert mode_of(store.cert_dir("a.example") / "meta.json") == 0o600
    document = json.loads((store.cert_dir("a.example") / "meta.json").read_text())
    assert document["not_after"] == "2026-11-29T12:00:00+00:00"
    assert document["domains"] == ["a.example", "b.example"]


def test_an_older_releases_meta_json_loads_and_sheds_the_retired_fields(tmp_path, umask):
    store = StateStore(tmp_path)
    store.cert_dir("a.example").mkdir(parents=True)
    path = store.cert_dir("a.example") / "meta.json"
    path.write_text(BEFORE_ISSUE_18)
    meta = store.load_meta("a.example")
    # Everything else as written, the retry state included; an unknown key is still kept.
    assert meta == FULL_META and meta.extra == {"zz_from_the_future": 1}
    store.save_meta("a.example", meta)
    document = json.loads(path.read_text())
    assert "deployed_serial" not in document and "deployed_at" not in document
    assert document["zz_from_the_future"] == 1
    assert store.load_meta("a.example") == FULL_META


def test_meta_tolerates_missing_and_unknown_fields():
    meta = CertMeta.from_json('{"serial": "01", "from_the_future": {"x": 1}}')
    assert meta.serial == "01"
    assert meta.failures == 0 and meta.domains == () and meta.not_after is None
    # Unknown fields survive a rewrite by this release.
    assert json.loads(meta.to_json())["from_the_future"] == {"x": 1}
    assert CertMeta.from_json("{}") == CertMeta()
    assert CertMeta.from_json('{"last_error": null}') == CertMeta()


def test_meta_datetimes_are_utc_aware():
    other_zone = timezone(timedelta(hours=2))
    meta = CertMeta(not_after=datetime(2026, 11, 28, 14, 0, tzinfo=other_zone))
    assert meta.not_after == T0 and meta.not_after.tzinfo == UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        CertMeta(issued_at=datetime(2026, 11, 28, 12, 0))
    parsed = CertMeta.from_json('{"issued_at": "2026-11-28T14:00:00+02:00"}')
    assert parsed.issued_at == T0 and parsed.issued_at is not None
    assert parsed.issued_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"failures": "3"}', "failures: expected a non-negative integer"),
        ('{"failures": -1}', "failures: expected a non-negative integer"),
        ('{"failures": true}', "failures: expected a non-negative integer"),
        ('{"not_after": "tomorrow"}', "not_after: 'tomorrow' is not an ISO 8601"),
        ('{"not_after": 5}', "not_after: expected an ISO 8601"),
        ('{"domains": "a.example"}', "domains: expected a list of strings"),
        ('{"serial": 10}', "serial: expected a string"),
    ],
)
def test_meta_errors_say_where(text, message):
    with pytest.raises(storage.MetaError, match=message):
        CertMeta.from_json(text)


def test_a_corrupt_meta_json_is_logged_and_treated_as_none(tmp_path):
    store = StateStore(tmp_path)
    store.save_meta("a.example", FULL_META)
    (store.cert_dir("a.example") / "meta.json").write_text('{"failures": "many"')
    with capture_logs() as logs:
        assert store.load_meta("a.example") is None
    assert len(logs) == 1
    assert logs[0]["event"] == "cert_meta_corrupt"
    assert logs[0]["cert"] == "a.example"
    assert "not valid JSON" in logs[0]["error"]
    # The next save repairs it.
    store.save_meta("a.example", FULL_META)
    assert store.load_meta("a.example") == FULL_META


def test_meta_failure_and_success_bookkeeping():
    meta = CertMeta(serial="01")
    failed = meta.with_failure("boom", now=T0, next_retry_at=T0 + timedelta(seconds=5))
    failed = failed.with_failure("boom again", now=T0, next_retry_at=T0 + timedelta(seconds=10))
    assert (failed.failures, failed.last_error) == (2, "boom again")
    assert failed.next_retry_at == T0 + timedelta(seconds=10)
    assert failed.last_attempt_at == T0
    ok = failed.with_success(serial="02", last_success_at=T0)
    assert (ok.failures, ok.last_error, ok.next_retry_at, ok.serial) == (0, None, None, "02")


# -- lock ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lock_excludes_a_second_holder_and_names_the_first(tmp_path):
    store = StateStore(tmp_path)
    async with store.lock("a.example", holder="issue pid 123"):
        content = store.lock_path("a.example").read_text()
        assert content.startswith("issue pid 123 since ")
        with pytest.raises(
            LockTimeout, match=r"'a\.example' is locked by issue pid 123 since "
        ) as caught:
            async with store.lock("a.example", timeout=0.05, holder="renew"):
                pytest.fail("the lock was taken twice")
        assert caught.value.holder.startswith("issue pid 123")
        # Other certificates are not affected.
        async with store.lock("b.example", timeout=0.05):
            pass
    assert store.lock_path("a.example").read_text() == ""
    async with store.lock("a.example", timeout=0.05):
        assert store.lock_path("a.example").read_text().startswith(f"pid {os.getpid()} since ")


@pytest.mark.anyio
async def test_lock_waiter_gets_it_when_released(tmp_path):
    store = StateStore(tmp_path)
    order: list[str] = []
    first_holds = asyncio.Event()

    async def first() -> None:
        async with store.lock("a.example", holder="first"):
            first_holds.set()
            order.append("first in")
            await asyncio.sleep(0.05)
            order.append("first out")

    async def second() -> None:
        await first_holds.wait()
        async with store.lock("a.example", holder="second", timeout=30):
            order.append("second in")

    await asyncio.gather(first(), second())
    assert order == ["first in", "first out", "second in"]


@pytest.mark.anyio
async def test_a_cancelled_holder_releases_the_lock(tmp_path):
    store = StateStore(tmp_path)
    holding = asyncio.Event()

    async def hold_forever() -> None:
        async with store.lock("a.example", holder="doomed"):
            holding.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold_forever())
    await holding.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with store.lock("a.example", timeout=0.05):
        pass


@pytest.mark.anyio
async def test_a_cancelled_waiter_does_not_take_the_lock(tmp_path):
    store = StateStore(tmp_path)
    async with store.lock("a.example", holder="owner"):
        waiter = asyncio.create_task(_take(store))
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert store.lock_path("a.example").read_text().startswith("owner")


async def _take(store: StateStore) -> None:
    async with store.lock("a.example", timeout=30, holder="waiter"):
        pass
