"""`storage.write_group`: several files of one directory replaced as one commit.

The order is what makes it durable and cheap: every temporary written, then every one fsynced,
then the renames in the order given, then one fsync of the directory. A failure before the
renames leaves the old files, a failure at a rename leaves the files before it replaced and the
rest old; either way no temporary stays behind. Faults a real file system produces on demand
are produced for real (a file size limit, a directory where a file should be); only fsync
errors and a cancellation in the middle are injected.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar import storage
from sidecar.storage import CertMeta, FileWrite, StateStore, StorageError, write_group

OLD = {"previous.pem": b"old previous\n", "chain.pem": b"old chain\n", "cert.pem": b"old leaf\n"}


def _old_files(directory: Path) -> None:
    for name, data in OLD.items():
        (directory / name).write_bytes(data)


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _group(*sizes: int) -> list[FileWrite]:
    names = ["previous.pem", "chain.pem", "cert.pem"]
    return [FileWrite(name, b"n" * size, 0o644) for name, size in zip(names, sizes, strict=True)]


class Calls:
    """open/write/fsync/close/replace as (call, file name), through /proc for descriptors."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        real = {name: getattr(os, name) for name in ("open", "write", "fsync", "close", "replace")}

        def name_of(fd: int) -> str:
            return Path(os.readlink(f"/proc/self/fd/{fd}")).name

        def spy_open(path: object, *args: object, **kwargs: object) -> int:
            fd: int = real["open"](path, *args, **kwargs)
            self.calls.append(("open", name_of(fd)))
            return fd

        def spy_write(fd: int, data: bytes) -> int:
            self.calls.append(("write", name_of(fd)))
            written: int = real["write"](fd, data)
            return written

        def spy_fsync(fd: int) -> None:
            kind = "fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync"
            self.calls.append((kind, name_of(fd)))
            real["fsync"](fd)

        def spy_close(fd: int) -> None:
            self.calls.append(("close", name_of(fd)))
            real["close"](fd)

        def spy_replace(source: object, target: object) -> None:
            self.calls.append(("replace", Path(str(target)).name))
            real["replace"](source, target)

        for name, spy in (
            ("open", spy_open),
            ("write", spy_write),
            ("fsync", spy_fsync),
            ("close", spy_close),
            ("replace", spy_replace),
        ):
            monkeypatch.setattr(os, name, spy)

    def kinds(self, *wanted: str) -> list[tuple[str, str]]:
        return [call for call in self.calls if call[0] in wanted]


# -- the order ---------------------------------------------------------------------------------


def test_all_written_then_all_synced_then_renamed_in_order_then_one_directory_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path.resolve()
    _old_files(directory)
    calls = Calls(monkeypatch)
    write_group(directory, _group(10, 20, 30))
    monkeypatch.undo()
    kinds = [kind for kind, _ in calls.calls]
    last_write = max(i for i, kind in enumerate(kinds) if kind == "write")
    first_fsync = kinds.index("fsync")
    last_fsync = max(i for i, kind in enumerate(kinds) if kind == "fsync")
    first_replace = kinds.index("replace")
    # No fsync before every temporary holds its data; no rename before every one is on disk.
    assert last_write < first_fsync and last_fsync < first_replace
    assert [name for kind, name in calls.calls if kind == "replace"] == [
        "previous.pem",
        "chain.pem",
        "cert.pem",
    ]
    synced = [name for kind, name in calls.calls if kind == "fsync"]
    assert len(synced) == 3 and all(name.startswith(".") for name in synced)
    # One directory fsync, after the last rename, makes them all durable.
    assert calls.kinds("fsync-dir") == [("fsync-dir", directory.name)]
    assert kinds.index("fsync-dir") > max(i for i, kind in enumerate(kinds) if kind == "replace")
    assert _contents(directory) == {
        "cert.pem": b"n" * 30,
        "chain.pem": b"n" * 20,
        "previous.pem": b"n" * 10,
    }


def test_without_the_directory_sync_the_files_are_still_synced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    write_group(tmp_path, [FileWrite("key.pem", b"secret", 0o600)], sync_directory=False)
    monkeypatch.undo()
    assert [kind for kind, _ in calls.kinds("fsync", "fsync-dir", "replace")] == [
        "fsync",
        "replace",
    ]
    assert (tmp_path / "key.pem").read_bytes() == b"secret"


def test_each_file_gets_exactly_its_own_mode_and_group(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        write_group(
            tmp_path,
            [
                FileWrite("meta.json", b"{}", 0o600),
                FileWrite("cert.pem", b"c", 0o644),
                FileWrite("shared.pem", b"s", 0o640, group=65534),
            ],
        )
    finally:
        os.umask(previous)
    modes = {p.name: (stat.S_IMODE(p.stat().st_mode), p.stat().st_gid) for p in tmp_path.iterdir()}
    assert modes == {
        "meta.json": (0o600, os.getgid()),
        "cert.pem": (0o644, os.getgid()),
        "shared.pem": (0o640, 65534),
    }


# -- failures ----------------------------------------------------------------------------------


FILE_SIZE_LIMIT = 64


@contextlib.contextmanager
def file_size_limit() -> Iterator[int]:
    """A real EFBIG from the kernel for any write past 64 bytes (SIGXFSZ ignored, as the
    sidecar would see it on a full quota: an error, not a signal).

    Only around the call under test: the limit is the whole process's, and pytest writes its
    report (to a log file, in CI) between a test's call and its fixtures' teardown.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, hard))
    try:
        yield FILE_SIZE_LIMIT
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_a_write_failing_on_the_nth_file_leaves_the_old_files_and_no_temporary(
    tmp_path: Path, failing: int
) -> None:
    _old_files(tmp_path)
    sizes = [10, 10, 10]
    sizes[failing] = FILE_SIZE_LIMIT * 4
    files = _group(*sizes)
    with pytest.raises(StorageError) as caught, file_size_limit():
        write_group(tmp_path, files)
    target = tmp_path / files[failing].name
    assert str(caught.value) == f"cannot write {target}: File too large"
    assert caught.value.path == target
    assert _contents(tmp_path) == OLD


def test_an_fsync_failing_on_the_nth_file_leaves_the_old_files_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk error on fsync is not something a test can make a real file system do.
    _old_files(tmp_path)
    real_fsync = os.fsync
    count = [0]

    def failing_second(fd: int) -> None:
        count[0] += 1
        if count[0] == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_second)
    with pytest.raises(StorageError) as caught:
        write_group(tmp_path, _group(10, 20, 30))
    monkeypatch.undo()
    assert str(caught.value) == f"cannot write {tmp_path / 'chain.pem'}: Input/output error"
    assert _contents(tmp_path) == OLD


def test_a_rename_failing_on_the_nth_file_keeps_the_ones_before_and_no_temporary(
    tmp_path: Path,
) -> None:
    (tmp_path / "previous.pem").write_bytes(OLD["previous.pem"])
    (tmp_path / "chain.pem").mkdir()  # a rename of a file over a directory fails: EISDIR
    (tmp_path / "cert.pem").write_bytes(OLD["cert.pem"])
    with pytest.raises(StorageError) as caught:
        write_group(tmp_path, _group(10, 20, 30))
    assert str(caught.value) == f"cannot write {tmp_path / 'chain.pem'}: Is a directory"
    # The files before it were committed; the leaf after it, the commit point, was not.
    assert (tmp_path / "previous.pem").read_bytes() == b"n" * 10
    assert (tmp_path / "chain.pem").is_dir()
    assert (tmp_path / "cert.pem").read_bytes() == OLD["cert.pem"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "chain.pem", "previous.pem"]


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_cancellation_in_the_middle_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # What asyncio's cancellation or a signal handler raises: not an OSError, still cleaned up.
    _old_files(tmp_path)
    real = getattr(os, where)
    count = [0]

    def interrupted_second(*args: object) -> object:
        count[0] += 1
        if count[0] == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(os, where, interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        write_group(tmp_path, _group(10, 20, 30))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OLD)
    if where != "replace":
        assert _contents(tmp_path) == OLD
    else:  # interrupted at the second rename: the first was made
        assert _contents(tmp_path) == {**OLD, "previous.pem": b"n" * 10}


def test_a_group_directory_that_cannot_be_synced_names_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError) as caught:
        write_group(tmp_path, _group(1, 2, 3))
    assert str(caught.value) == (
        f"wrote previous.pem, chain.pem, cert.pem in {tmp_path} "
        "but could not sync its directory: Input/output error"
    )
    assert caught.value.path == tmp_path


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([FileWrite("a", b"", 0o600), FileWrite("a", b"", 0o600)], "appears twice"),
        ([FileWrite("a", b"", 0o600), FileWrite("b", b"", 0o4755)], "beyond rwx"),
        ([FileWrite("a", b"", 0o600), FileWrite("x/b", b"", 0o600)], "not a file name"),
    ],
)
def test_a_bad_group_is_refused_before_anything_is_written(
    tmp_path: Path, files: list[FileWrite], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_group(tmp_path, files)
    assert list(tmp_path.iterdir()) == []


# -- the state directory's commits --------------------------------------------------------------


def test_an_issued_certificate_and_its_meta_are_one_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path.resolve())
    store.save_issued("a.example", b"LEAF 1", [b"CHAIN"])
    calls = Calls(monkeypatch)
    store.save_issued("a.example", b"LEAF 2", [b"CHAIN"], CertMeta(serial="02"))
    monkeypatch.undo()
    assert [name for kind, name in calls.kinds("replace")] == [
        "previous.pem",
        "chain.pem",
        "cert.pem",
        "meta.json",
    ]
    assert calls.kinds("fsync-dir") == [("fsync-dir", "a.example")]
    directory = store.cert_dir("a.example")
    assert stat.S_IMODE((directory / "meta.json").stat().st_mode) == storage.KEY_MODE
    assert store.load_meta("a.example") == CertMeta(serial="02")
    assert store.load_previous("a.example") == b"LEAF 1\nCHAIN\n"


def test_a_key_is_synced_but_left_to_the_next_commit_of_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path.resolve())
    store.save_issued("a.example", b"LEAF", [])  # the directory exists, as after an issuance
    calls = Calls(monkeypatch)
    store.save_key("a.example", ec.generate_private_key(ec.SECP256R1()))
    store.discard_key("a.example")
    monkeypatch.undo()
    # The key's data is on disk before its name; the rename waits for the state commit. A
    # discard, though, is synced at once: a revoked key must not come back after a crash.
    assert [kind for kind, _ in calls.kinds("fsync", "fsync-dir", "replace")] == [
        "fsync",
        "replace",
        "fsync-dir",
    ]
    assert store.load_key("a.example") is None
