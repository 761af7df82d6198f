"""A cancel never cuts a renewal's writes short, and a moved control socket never cuts a request
short (issue 17, finding 8).

1. The state commit and the PEM write run in a worker thread. Cancelling the renewal (shutdown,
   a task cancelled) used to stop only the waiting: the certificate's locks were released while
   the thread was still writing, so another writer could start beside it.
2. A reload that moved ``state_dir`` closed the control socket with its requests in flight
   cancelled, and the one-shot command was told "the running sidecar stopped before finishing"
   while it ran on. A request in flight must finish and get its real answer.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from sidecar import control, storage, wiring
from sidecar.outcome import Action
from tests.protocol.service_rig import EVENT_DEADLINE, rig

pytestmark = pytest.mark.anyio

NAME = "commit.example"


async def test_a_cancel_mid_commit_holds_the_locks_until_the_writes_are_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        service = r.service(r.settings("--no-placeholder"))
        manager = service.manager
        entered, proceed = threading.Event(), threading.Event()
        real_save = manager.store.save_issued

        def slow_save(*args: Any, **kwargs: Any) -> None:
            entered.set()
            proceed.wait(EVENT_DEADLINE)
            real_save(*args, **kwargs)

        monkeypatch.setattr(manager.store, "save_issued", slow_save)
        check = asyncio.ensure_future(service.loop.check(NAME))
        try:
            assert await asyncio.to_thread(entered.wait, EVENT_DEADLINE)
            check.cancel()
            # However long this waits, the check must not end while its thread writes.
            await asyncio.wait({check}, timeout=2.0)
            assert not check.done(), "the check ended while its commit thread was writing"
            assert service.loop.lock_for(NAME).locked()
            with pytest.raises(storage.LockTimeout):
                async with manager.store.lock(NAME, timeout=0.2, holder="probe"):
                    pass
            proceed.set()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(check, EVENT_DEADLINE)
            # The writes it started were finished, and then the locks released.
            assert not service.loop.lock_for(NAME).locked()
            async with manager.store.lock(NAME, timeout=EVENT_DEADLINE, holder="probe"):
                meta = manager.store.load_meta(NAME)
            pem = (r.workdir / "certs" / f"{NAME}.pem").read_bytes()
        finally:
            proceed.set()
            await wiring.close(service.parts)
    assert meta is not None and meta.serial is not None and meta.failures == 0
    assert b"BEGIN CERTIFICATE" in pem and b"PRIVATE KEY" in pem


@pytest.mark.parametrize("how", ["move", "reload"])
async def test_a_request_in_flight_when_the_state_dir_moves_gets_its_real_answer(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        settings = r.settings("--no-placeholder")
        service = r.service(settings)
        await service.bundle.look()
        await service.handoff.open(settings.files.state_dir)
        moved = r.workdir / "state2"
        r.hold.add(NAME)
        asked = asyncio.ensure_future(
            control.request(settings.files.state_dir, {"command": "renew", "force": True})
        )
        try:
            await asyncio.wait_for(r.at_finalize.wait(), EVENT_DEADLINE)
            if how == "move":
                moved.mkdir(mode=0o700)  # a reload's new parts make it; here, the test
                await service.handoff.move(moved)
            else:
                new = r.settings("--no-placeholder", "--state-dir", str(moved))
                assert await asyncio.wait_for(service.reload.apply(new), EVENT_DEADLINE)
            assert control.socket_path(moved).is_socket()
            assert not asked.done()
            r.release.set()
            answer = await asyncio.wait_for(asked, EVENT_DEADLINE)
            # The old socket's drain (spawned by the move) ends with its last request.
            for task in list(service._tasks):
                await asyncio.wait_for(task, EVENT_DEADLINE)
        finally:
            r.release.set()
            await service.handoff.aclose()
            await wiring.close(service.parts)
    assert answer is not None
    assert answer["error"] is None, answer
    assert answer["ok"] is True and answer["exit_code"] == 0, answer
    (result,) = answer["results"]
    assert result["action"] == str(Action.ISSUED)
