"""`sidecar.gate.SwapGate`: borrowers keep what they borrowed, a swap waits for none of them,
and a replaced value is retired after its last borrower, never under one (issue 17, finding 7)."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.gate import SwapGate

pytestmark = pytest.mark.anyio


class Value:
    def __init__(self, name: str) -> None:
        self.name = name


def _gate() -> tuple[SwapGate[Value], list[str]]:
    retired: list[str] = []

    async def retire(value: Value) -> None:
        retired.append(value.name)

    return SwapGate(Value("old"), retire), retired


async def test_a_swap_with_no_borrower_retires_the_old_value_at_once() -> None:
    gate, retired = _gate()
    old = await gate.swap(Value("new"))
    assert old.name == "old" and gate.current.name == "new"
    assert retired == ["old"]


async def test_a_borrower_keeps_its_value_and_the_last_one_out_retires_it() -> None:
    gate, retired = _gate()
    async with gate.use() as first:
        async with gate.use() as second:
            await gate.swap(Value("new"))
            assert first.name == second.name == "old"
            async with gate.use() as later:
                assert later.name == "new"
        assert retired == []  # one borrower left
    assert retired == ["old"]


async def test_new_borrowers_wait_while_the_gate_is_closed_and_get_the_new_value() -> None:
    gate, _ = _gate()
    got: list[str] = []

    async def borrow() -> None:
        async with gate.use() as value:
            got.append(value.name)

    async with gate.closed():
        waiting = asyncio.ensure_future(borrow())
        for _ in range(20):
            await asyncio.sleep(0)
        assert got == []
        await gate.swap(Value("new"))
    await asyncio.wait_for(waiting, 10)
    assert got == ["new"]


async def test_wait_idle_waits_for_the_borrowers_already_running_only() -> None:
    gate, _ = _gate()
    release = asyncio.Event()

    async def running() -> None:
        async with gate.use():
            await release.wait()

    task = asyncio.ensure_future(running())
    await asyncio.sleep(0)
    async with gate.closed():
        idle = asyncio.ensure_future(gate.wait_idle())
        late = asyncio.ensure_future(running())  # starts after the gate closed: not waited for
        for _ in range(20):
            await asyncio.sleep(0)
        assert not idle.done()
        release.set()
        await asyncio.wait_for(idle, 10)
    await asyncio.wait_for(asyncio.gather(task, late), 10)


async def test_a_retire_that_fails_is_logged_not_raised_into_the_borrower() -> None:
    async def retire(_value: Value) -> None:
        raise OSError("cannot close")

    gate = SwapGate(Value("old"), retire)
    async with gate.use():
        await gate.swap(Value("new"))
    # Reaching here is the point: the borrower's exit did not raise.
    assert gate.current.name == "new"
