"""The state directory's edges that mutation testing (docs/MUTATION.md) found unguarded: the
exact error an operator reads (with the path it names), the write order and flags of an atomic
write, what cleaning spares, the on-disk JSON format, and the lock's back-off."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from structlog.testing import capture_logs

from sidecar import storage
from sidecar.storage import (
    CertMeta,
    LockTimeout,
    StateStore,
    StateVersionError,
    StorageError,
    _describe_os_error,
    atomic_write,
    clean_stale_temp_files,
)

pytestmark = pytest.mark.anyio


def _error(call: object, *args: object) -> StorageError:
    with pytest.raises(StorageError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


# -- errors that name the path ---------------------------------------------------------------


def test_a_state_directory_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "state"
    error = _error(StateStore, target)
    assert str(error) == f"cannot create {target}: Not a directory"
    assert error.path == target


def test_nested_directories_are_made(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "a" / "b" / "state")
    store.save_meta("x", CertMeta())
    assert store.load_meta("x") == CertMeta()


def test_unreadable_state_files_are_named(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    cert = store.cert_dir("a")
    (cert / "cert.pem").mkdir(parents=True)
    error = _error(store.load_cert, "a")
    assert str(error) == f"cannot read {cert}/cert.pem: Is a directory"
    assert error.path == cert / "cert.pem"


def test_keys_that_are_not_usable_are_named_without_their_content(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save_key("a", ec.generate_private_key(ec.SECP256R1()))
    path = store.cert_dir("a") / "key.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\n")
    error = _error(store.load_key, "a")
    assert str(error) == f"{path} is not a valid unencrypted private key"
    assert error.path == path
    from cryptography.hazmat.primitives import serialization

    other = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(other)
    error = _error(store.load_key, "a")
    assert str(error) == f"{path} is neither an EC nor an RSA key"
    assert error.path == path


def test_a_certificate_that_cannot_be_removed_is_named(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    directory = store.cert_dir("a")
    directory.write_text("a file where a directory belongs")
    error = _error(store.remove_cert, "a")
    assert str(error) == f"cannot remove {directory}: Not a directory"
    assert error.path == directory


def test_stored_names_that_cannot_be_listed_are_named(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    certs = tmp_path / "state" / "certs"
    certs.rmdir()
    certs.write_text("")
    error = _error(store.stored_names)
    assert str(error) == f"cannot list {certs}: Not a directory"
    assert error.path == certs


def test_a_key_that_cannot_be_discarded_is_named(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    key = store.cert_dir("a") / "key.pem"
    (key / "inside").mkdir(parents=True)
    error = _error(store.discard_key, "a")
    assert str(error) == f"cannot remove {key}: Is a directory"
    assert error.path == key


def test_os_errors_without_text_are_described_by_their_code() -> None:
    assert _describe_os_error(OSError(errno.EIO, "Input/output error")) == "Input/output error"
    bare = OSError()
    bare.errno = errno.EIO
    assert _describe_os_error(bare) == "EIO"
    assert _describe_os_error(OSError("plain words")) == "plain words"
    unknown = OSError("text")
    unknown.errno = 99999
    assert _describe_os_error(unknown) == "text"


# -- the version file ------------------------------------------------------------------------


def test_the_version_file_is_world_readable_and_exact(tmp_path: Path) -> None:
    StateStore(tmp_path / "state")
    version = tmp_path / "state" / "VERSION"
    assert version.read_text() == "1\n"
    assert stat.S_IMODE(version.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("é\n", "cannot read {v}: not text"),
        ("x" * 30, "{v} holds " + repr("x" * 20) + ", not a schema version"),
        ("0\n", "{root} holds state of schema version 0; this release reads version 1 only"),
        (
            "2\n",
            "{root} holds state of schema version 2 (from a newer cert-sidecar); this release"
            " reads version 1 only",
        ),
    ],
)
def test_version_problems_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    root = tmp_path / "state"
    root.mkdir()
    version = root / "VERSION"
    version.write_text(content, encoding="utf-8")
    with pytest.raises(StateVersionError) as caught:
        StateStore(root)
    assert str(caught.value) == message.format(v=version, root=root)
    assert caught.value.path == version


def test_an_unreadable_version_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "VERSION").mkdir(parents=True)
    with pytest.raises(StateVersionError) as caught:
        StateStore(root)
    assert str(caught.value) == f"cannot read {root}/VERSION: Is a directory"
    assert caught.value.path == root / "VERSION"


# -- atomic writes ---------------------------------------------------------------------------


def test_an_atomic_write_opens_exclusively_syncs_renames_then_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / ("n" * 250 + ".pem")
    calls: list[tuple[str, object]] = []
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def spy_open(path: object, flags: int, mode: int = 0o777, **kw: object) -> int:
        calls.append(("open", (Path(str(path)), flags, mode)))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    def spy_fsync(fd: int) -> None:
        calls.append(("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync", None))
        real_fsync(fd)

    def spy_replace(src: object, dst: object) -> None:
        calls.append(("replace", Path(str(dst))))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    atomic_write(target, b"data", mode=0o600)
    (kind, (temp, flags, mode)), *rest = calls  # type: ignore[misc]
    assert kind == "open" and mode == 0o600
    assert temp.parent == tmp_path and temp.name.startswith("." + "n" * 196 + ".pem.")
    assert len(temp.name) == 1 + 200 + 1 + 16
    wanted = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    assert flags & wanted == wanted
    assert [c[0] for c in rest] == ["fsync", "replace", "open", "fsync-dir"]
    assert rest[1][1] == target and target.read_bytes() == b"data"


def test_the_group_is_set_without_changing_the_owner(tmp_path: Path) -> None:
    target = tmp_path / "a.pem"
    atomic_write(target, b"x", mode=0o640, group=os.getgid() + 1)
    info = target.stat()
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid() + 1)


def test_a_failed_group_change_is_named_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)
    target = tmp_path / "a.pem"
    error = _error(lambda: atomic_write(target, b"x", mode=0o640, group=4242))
    assert str(error) == f"cannot set group 4242 on {target}: Operation not permitted"
    assert os.listdir(tmp_path) == []


def test_a_failed_write_after_the_group_is_a_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    target = tmp_path / "a.pem"
    error = _error(lambda: atomic_write(target, b"x", mode=0o640, group=os.getgid()))
    assert str(error) == f"cannot write {target}: Input/output error"
    assert error.path == target and os.listdir(tmp_path) == []


def test_a_failed_open_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "a.pem"
    error = _error(lambda: atomic_write(target, b"x", mode=0o600))
    assert str(error) == f"cannot write {target}: No such file or directory"
    assert error.path == target


def test_a_failed_rename_is_reported_even_when_the_temporary_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def vanish_then_fail(src: str, dst: str) -> None:
        os.unlink(src)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", vanish_then_fail)
    target = tmp_path / "a.pem"
    error = _error(lambda: atomic_write(target, b"x", mode=0o600))
    assert str(error) == f"cannot write {target}: Invalid cross-device link"


def test_an_interrupted_write_leaves_no_temporary_even_if_it_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(src: str, dst: str) -> None:
        os.unlink(src)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.pem", b"x", mode=0o600)
    assert os.listdir(tmp_path) == []


def test_a_directory_that_cannot_be_synced_is_an_error_unless_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    failure = [errno.EIO]

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(failure[0], os.strerror(failure[0]))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "a.pem"
    error = _error(lambda: atomic_write(target, b"x", mode=0o600))
    assert str(error) == f"wrote {target} but could not sync its directory: Input/output error"
    assert error.path == target and target.read_bytes() == b"x"
    for unsupported in (errno.EINVAL, errno.ENOTSUP):
        failure[0] = unsupported
        atomic_write(target, b"y", mode=0o600)  # the rename is still atomic there
        assert target.read_bytes() == b"y"


# -- cleaning leftovers ----------------------------------------------------------------------


def test_cleaning_spares_what_is_not_a_regular_leftover_and_goes_on(tmp_path: Path) -> None:
    real = tmp_path / "real.pem"
    real.write_text("keep me")
    spared, removable = [], []
    for i in range(20):
        link = tmp_path / f".s{i:02d}.pem.tmp0"
        link.symlink_to(real)  # a link named like a leftover: never followed, never removed
        spared.append(link)
        leftover = tmp_path / f".r{i:02d}.pem.tmp1"
        leftover.write_text("")
        removable.append(leftover)
    with capture_logs() as logs:
        removed = clean_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted(removable)
    assert all(link.is_symlink() for link in spared) and real.read_text() == "keep me"
    (entry,) = [e for e in logs if e["event"] == "stale_temp_files_removed"]
    assert entry["directory"] == str(tmp_path) and entry["count"] == 20


def test_a_directory_that_cannot_be_listed_for_cleaning_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    error = _error(clean_stale_temp_files, tmp_path / "file")
    assert str(error) == f"cannot list {tmp_path}/file: Not a directory"
    assert error.path == tmp_path / "file"


# -- the on-disk formats ---------------------------------------------------------------------


def test_meta_json_is_sorted_and_indented_with_unknown_fields_kept(tmp_path: Path) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    meta = CertMeta.from_json(
        json.dumps({"serial": "0A", "zz_future": 1, "extra": "kept too", "failures": 0})
    )
    meta = CertMeta(serial=meta.serial, issued_at=when, extra=meta.extra)
    text = meta.to_json()
    document = json.loads(text)
    assert text == json.dumps(document, indent=2, sort_keys=True) + "\n"
    assert document["zz_future"] == 1 and document["extra"] == "kept too"
    assert document["issued_at"] == "2026-01-02T03:04:05+00:00"
    assert list(document) == sorted(document)


def test_meta_values_are_checked_field_by_field() -> None:
    assert CertMeta.from_json('{"serial": null, "failures": 0}').failures == 0
    assert CertMeta.from_json('{"serial": null, "failures": 3}').failures == 3
    for text, message in [
        ("[]", "not a JSON object"),
        ('{"failures": -1}', "failures: expected a non-negative integer"),
        ('{"domains": "a"}', "domains: expected a list of strings"),
    ]:
        with pytest.raises(storage.MetaError) as caught:
            CertMeta.from_json(text)
        assert str(caught.value) == message


def test_meta_times_in_other_zones_are_kept_as_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    meta = CertMeta(issued_at=datetime(2026, 1, 1, 12, 0, tzinfo=plus_two))
    assert meta.issued_at == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert meta.issued_at is not None and meta.issued_at.tzinfo is UTC
    parsed = CertMeta.from_json('{"issued_at": "2026-01-01T12:00:00+02:00"}')
    assert parsed.issued_at is not None and parsed.issued_at.tzinfo is UTC
    with pytest.raises(ValueError, match=r"CertMeta\.issued_at must be timezone-aware"):
        CertMeta(issued_at=datetime(2026, 1, 1))


def test_account_json_is_indented_and_a_url_must_be_text(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    url = "https://ca/directory"
    store.save_account_key(url, ec.generate_private_key(ec.SECP256R1()))
    store.save_account_url(url, "https://ca/acct/1", ["mailto:a@b"])
    path = store.account_dir(url) / "account.json"
    document = json.loads(path.read_text())
    assert path.read_text() == json.dumps(document, indent=2) + "\n"
    assert store.account_dir(url).name == hashlib.sha256(url.encode()).hexdigest()[:16]
    path.write_text(json.dumps({"url": 5, "directory": url}))
    loaded = store.load_account(url)
    assert loaded is not None and loaded[1] is None


def test_a_corrupt_meta_is_logged_with_its_path(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save_meta("a", CertMeta())
    path = store.cert_dir("a") / "meta.json"
    path.write_text("[]")
    with capture_logs() as logs:
        assert store.load_meta("a") is None
    (entry,) = [e for e in logs if e["event"] == "cert_meta_corrupt"]
    assert entry["path"] == str(path) and entry["error"] == "not a JSON object"
    account = store.account_dir("https://ca/directory")
    account.mkdir(parents=True)
    store.save_account_key("https://ca/directory", ec.generate_private_key(ec.SECP256R1()))
    (account / "account.json").write_text("{broken")
    with capture_logs() as logs:
        store.load_account("https://ca/directory")
    (entry,) = [e for e in logs if e["event"] == "state_file_corrupt"]
    assert entry["path"] == str(account / "account.json")


def test_chain_certificates_are_stored_one_after_another(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save_issued("a", b"LEAF", [b"ONE\n\n", b"  ", b"TWO"])
    stored = store.load_cert("a")
    assert stored is not None and stored.chain_pem == b"ONE\nTWO\n"


# -- the lock --------------------------------------------------------------------------------


async def test_the_lock_names_its_holder_and_waits_with_growing_delays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path / "state")
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(delay)

    async with store.lock("a", holder="holder ünïcode"):
        monkeypatch.setattr(storage.asyncio, "sleep", recording_sleep)
        with pytest.raises(LockTimeout) as caught:
            async with store.lock("a", timeout=0.3):
                pass
        monkeypatch.undo()
    assert caught.value.name == "a" and caught.value.timeout == 0.3
    assert caught.value.holder.startswith("holder ünïcode since ")
    assert delays[:5] == [0.005, 0.01, 0.02, 0.04, 0.08]
    assert all(d <= 0.2 for d in delays)


async def test_a_lock_without_a_holder_description_says_another_process(tmp_path: Path) -> None:
    error = LockTimeout("a", "", 1.5)
    assert str(error) == "certificate 'a' is locked by another process (waited 1.5 s)"
    assert (error.name, error.holder, error.timeout) == ("a", "", 1.5)


async def test_a_zero_timeout_tries_once(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    async with store.lock("a", holder="first"):
        with pytest.raises(LockTimeout):
            async with store.lock("a", timeout=0):
                pass
    async with store.lock("a", timeout=0):
        pass


# -- second round ----------------------------------------------------------------------------


def test_a_leftover_that_vanishes_meanwhile_does_not_stop_the_cleaning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(10):
        (tmp_path / f".c{i}.pem.tmp").write_text("")
    real_unlink = os.unlink
    calls: list[str] = []

    def racing_unlink(path: str) -> None:
        calls.append(path)
        real_unlink(path)
        if len(calls) == 1:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")  # another cleaner

    monkeypatch.setattr(os, "unlink", racing_unlink)
    removed = clean_stale_temp_files(tmp_path)
    assert len(calls) == 10 and len(removed) == 9 and os.listdir(tmp_path) == []


def test_a_leftover_that_cannot_be_removed_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leftover = tmp_path / ".a.pem.tmp"
    leftover.write_text("")

    def refuse(path: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "unlink", refuse)
    error = _error(clean_stale_temp_files, tmp_path)
    assert str(error) == f"cannot remove {leftover}: Permission denied"
    assert error.path == leftover


def test_meta_times_without_a_zone_are_utc_by_convention() -> None:
    meta = CertMeta.from_json('{"issued_at": "2026-01-01T12:00:00"}')
    assert meta.issued_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def test_a_long_holder_description_is_cut_cleanly(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    async with store.lock("a", holder="€" * 300):  # 900 bytes: the read stops mid-character
        with pytest.raises(LockTimeout) as caught:
            async with store.lock("a", timeout=0):
                pass
    assert caught.value.holder == "€" * 200


async def test_the_holder_says_since_when_in_utc(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    async with store.lock("a", holder="run 1"):
        with pytest.raises(LockTimeout) as caught:
            async with store.lock("a", timeout=0):
                pass
    assert re.fullmatch(
        r"run 1 since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", caught.value.holder
    ), caught.value.holder


def test_zone_less_meta_times_are_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        meta = CertMeta.from_json('{"issued_at": "2026-01-01T12:00:00"}')
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert meta.issued_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
