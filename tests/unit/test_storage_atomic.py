"""What makes `storage.atomic_write` durable, in order: the data is written and fsynced in the
temporary, the temporary is renamed over the target, then the directory holding the rename is
fsynced. Without the first fsync a crash can leave a renamed but empty file; without the last, a
crash can undo the rename. Neither shows in the file's content, so the system calls are watched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar import storage


class SyscallSpy:
    """Records open/write/fsync/close/replace as (call, what it acted on), resolving each file
    descriptor to its path through /proc at the moment of the call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        real = {name: getattr(os, name) for name in ("open", "write", "fsync", "close", "replace")}

        def where(fd: int) -> str:
            return os.readlink(f"/proc/self/fd/{fd}")

        def spy_open(path: object, *args: object, **kwargs: object) -> int:
            fd: int = real["open"](path, *args, **kwargs)
            self.calls.append(("open", where(fd)))
            return fd

        def spy_write(fd: int, data: bytes) -> int:
            self.calls.append(("write", where(fd)))
            written: int = real["write"](fd, data)
            return written

        def spy_fsync(fd: int) -> None:
            self.calls.append(("fsync", where(fd)))
            real["fsync"](fd)

        def spy_close(fd: int) -> None:
            self.calls.append(("close", where(fd)))
            real["close"](fd)

        def spy_replace(source: object, target: object) -> None:
            self.calls.append(("replace", f"{source} -> {target}"))
            real["replace"](source, target)

        for name, spy in (
            ("open", spy_open),
            ("write", spy_write),
            ("fsync", spy_fsync),
            ("close", spy_close),
            ("replace", spy_replace),
        ):
            monkeypatch.setattr(os, name, spy)  # the module storage calls through

    def index(self, call: str, target: str) -> int:
        matches = [i for i, (c, t) in enumerate(self.calls) if c == call and t == target]
        assert matches, f"no {call} of {target} in {self.calls}"
        return matches[0]


def test_fsync_of_the_temporary_then_rename_then_fsync_of_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = tmp_path.resolve()  # /proc shows real paths
    target = tmp_path / "a.example.pem"
    target.write_bytes(b"old\n")
    spy = SyscallSpy(monkeypatch)
    storage.atomic_write(target, b"new\n" * 1000, mode=0o640)
    monkeypatch.undo()

    (temp,) = {t for c, t in spy.calls if c == "open" and t != str(tmp_path)}
    assert Path(temp).parent == tmp_path and Path(temp).name.startswith(".a.example.pem.")
    replace = spy.index("replace", f"{temp} -> {target}")
    # The data is on disk before the name points at it.
    last_write = max(i for i, (c, t) in enumerate(spy.calls) if c == "write" and t == temp)
    temp_fsync = spy.index("fsync", temp)
    assert last_write < temp_fsync < spy.index("close", temp) < replace
    # The rename is on disk before atomic_write returns: the directory, after the rename.
    directory_fsyncs = [
        i for i, (c, t) in enumerate(spy.calls) if c == "fsync" and t == str(tmp_path)
    ]
    assert directory_fsyncs, f"the directory was never fsynced: {spy.calls}"
    assert directory_fsyncs[-1] > replace
    assert target.read_bytes() == b"new\n" * 1000


def test_every_state_file_goes_through_the_same_durable_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # meta.json carries the retry state a crash-looping container must not lose.
    store = storage.StateStore(tmp_path.resolve() / "state")
    spy = SyscallSpy(monkeypatch)
    store.save_meta("a.example", storage.CertMeta(failures=3))
    monkeypatch.undo()
    directory = store.cert_dir("a.example")
    final = directory / "meta.json"
    (replaced,) = [t for c, t in spy.calls if c == "replace"]
    temp = replaced.split(" -> ")[0]
    assert replaced.endswith(f" -> {final}")
    assert spy.index("fsync", temp) < spy.index("replace", replaced)
    assert spy.index("fsync", str(directory)) > spy.index("replace", replaced)
