"""The path of one scheduled renewal through the code, file by file (docs/DESIGN.md, "The path
of one scheduled renewal"; issue 18).

A `Service` on the in-process fake CA (tests/protocol/service_rig.py) and an in-process HAProxy
(tests/unit/fake_haproxy.py) issues its certificate; the clock is then moved to the renewal
time and the next scheduled check is traced with `sys.setprofile` (and `threading.setprofile`,
for the commit in a worker thread).

How it counts. The reader's cursor is the file of the innermost frame of project code, following
calls and returns; code outside the project (stdlib, apscheduler, structlog) leaves it where it
was. `ca_client/` counts as one place (an order flows straight down through it), and the logging
plumbing (`sidecar/logs.py`, `log_messages.py`, reached from every log line) is skipped.
Consecutive stops in one file are one stop; a *return* is a stop in a file already left. The
*file depth* of a frame is the number of file changes on its stack, plus one: the check's own
file is depth 1, what it calls in another file depth 2, and so on. Printed: stops, files and
returns at file depth <= 2 (the edges of what the check calls), <= 3, and at any depth.

Run: ``.venv/bin/python bench/renewal_path.py [--path]``.
"""

from __future__ import annotations

import asyncio
import dis
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.protocol.service_rig import rig  # noqa: E402
from tests.unit.fake_haproxy import FakeHAProxy, serve  # noqa: E402

NAME = "path.example"
_YIELD = dis.opmap["YIELD_VALUE"]
SKIPPED = {"sidecar/logs.py", "sidecar/log_messages.py"}


def _place(code_file: str) -> str | None:
    path = Path(code_file)
    try:
        relative = path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None
    if relative.startswith("ca_client/"):
        return "ca_client/"
    if relative.startswith("sidecar/") and relative not in SKIPPED:
        return relative
    return None


def _under(frame: FrameType | None, root: FrameType | None) -> bool:
    while frame is not None:
        if frame is root:
            return True
        frame = frame.f_back
    return False


def _file_depth(frame: FrameType | None, base: int) -> int:
    places: list[str] = []
    while frame is not None:
        place = _place(frame.f_code.co_filename)
        if place is not None and (not places or places[-1] != place):
            places.append(place)
        frame = frame.f_back
    return len(places) + base


class Tracer:
    def __init__(self) -> None:
        self.cursor: list[tuple[str, int, bool]] = []
        self.root: FrameType | None = None
        self.main = threading.get_ident()
        self.base_depth = 0
        self.started: set[FrameType] = set()

    def hook(self, frame: FrameType, event: str, _arg: Any) -> None:
        # A coroutine's suspension and resumption are no step of the reader: only a frame's
        # first start and its real return move the cursor.
        if event == "call":
            if frame in self.started:
                return
            self.started.add(frame)
            target: FrameType | None = frame
        elif event == "return":
            if frame.f_lasti >= 0 and frame.f_code.co_code[frame.f_lasti] == _YIELD:
                return
            target = frame.f_back
        else:
            return
        while target is not None and _place(target.f_code.co_filename) is None:
            target = target.f_back
        if target is None:
            return
        main = threading.get_ident() == self.main
        if main and not _under(target, self.root):
            return  # another task (a connection of the pool, the health server)
        # A worker thread's stack starts afresh: it runs for the manager (file depth 2).
        base = -self.base_depth if main else 1
        place = _place(target.f_code.co_filename)
        assert place is not None
        self.cursor.append((place, _file_depth(target, base), event == "call"))


def count(
    cursor: list[tuple[str, int, bool]], max_depth: int | None
) -> tuple[list[str], int, int, int]:
    """Stops, files, returns (stops in a file already left: the issue's count, stops - files)
    and re-entries (the returns made by a call, not by going back to a caller)."""
    stops: list[str] = []
    reentries = 0
    for place, depth, called in cursor:
        if max_depth is not None and depth > max_depth:
            continue
        if not stops or stops[-1] != place:
            reentries += called and place in stops
            stops.append(place)
    files = len(set(stops))
    return stops, files, len(stops) - files, reentries


async def _trace(check: Callable[[], Any]) -> Tracer:
    tracer = Tracer()
    # The frames below the check (the event loop, this function) are not part of the path.
    tracer.base_depth = _file_depth(sys._getframe(), 0)
    tracer.root = sys._getframe()
    sys.setprofile(tracer.hook)
    threading.setprofile(tracer.hook)
    try:
        await check()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    return tracer


async def main(show: bool) -> None:
    monkeypatch = pytest.MonkeyPatch()
    try:
        with rig(NAME, monkeypatch=monkeypatch) as r:
            fake = FakeHAProxy()
            # HAProxy was started with the directory as its crt-list, and the placeholder in it.
            fake.crt_lists[str(r.workdir / "certs")] = []
            async with serve(fake, r.workdir / "admin.sock") as address:
                service = r.service(r.settings("--haproxy-socket", address))
                loop = getattr(service, "loop", service)
                if loop is not service:  # the rig records the schedule instead of apscheduler
                    loop.schedule = r._record
                bundle = getattr(service, "bundle", None)
                if bundle is not None:
                    await bundle.look()
                await service.manager.ensure_placeholder(service.settings.certificates[0])
                first = await loop.check(NAME)
                assert first is not None and first.ok, first
                view = service.manager.inspect(service.settings.certificates[0])
                assert view.next_renewal is not None
                r.clock.now = (view.next_renewal + timedelta(seconds=1)).timestamp()
                tracer = await _trace(lambda: loop.check(NAME))
                await service.manager.aclose()
    finally:
        monkeypatch.undo()
    for label, depth in (("file depth <= 2", 2), ("file depth <= 3", 3), ("any depth", None)):
        stops, files, returns, reentries = count(tracer.cursor, depth)
        print(
            f"{label}: {len(stops)} stops in {files} files, {returns} returns"
            f" ({reentries} of them by a call into a file already left)"
        )
        if show and depth is not None:
            print("   " + " > ".join(stop.removeprefix("sidecar/") for stop in stops))


if __name__ == "__main__":
    asyncio.run(main("--path" in sys.argv))
