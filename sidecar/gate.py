"""`SwapGate`: one current value that users borrow, and a swap that waits for no borrower.

`run` replaces its parts (manager, ACME client, deployer) when the config file changes. The
reload used to take every certificate's lock first, one at a time, so a check that came due
waited behind an unrelated order of up to 300 s (issue 17, finding 7). With the gate:
- a check borrows the current parts for its whole length (`use`), so it sees either the old
  parts throughout or the new ones;
- a reload closes the gate while it builds and swaps (`closed`): checks starting then wait
  only for that, never for other checks;
- checks already running keep the parts they borrowed; a replaced value is retired (closed)
  when its last borrower is done, never under one;
- where something the running checks use cannot stay (a responder's port moves), the reload
  waits for the checks already running (`wait_idle`), and only for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from sidecar.errors import error_text
from sidecar.logs import get_logger

__all__ = ["SwapGate"]

log = get_logger("sidecar.gate")

T = TypeVar("T")


class SwapGate(Generic[T]):
    """See the module docstring; ``retire`` closes a replaced value."""

    def __init__(self, current: T, retire: Callable[[T], Awaitable[None]]) -> None:
        self._current = current
        self._retire = retire
        self._open = asyncio.Event()
        self._open.set()
        # Borrowers per value (by identity: the values need not be hashable).
        self._users: dict[int, int] = {}
        # Replaced values still borrowed, retired when their count drops to zero.
        self._replaced: dict[int, T] = {}
        self._idle = asyncio.Condition()

    @property
    def current(self) -> T:
        return self._current

    def borrowers(self, value: T) -> int:
        return self._users.get(id(value), 0)

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[T]:
        """Borrow the current value; waits while a swap is in progress (the gate is closed)."""
        while not self._open.is_set():
            await self._open.wait()
        value = self._current
        key = id(value)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield value
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                replaced = self._replaced.pop(key, None)
                async with self._idle:
                    self._idle.notify_all()
                if replaced is not None:
                    await self._retire_quietly(replaced)

    @contextlib.asynccontextmanager
    async def closed(self) -> AsyncIterator[None]:
        """New borrowers wait while this is held (a reload building and swapping)."""
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()

    async def wait_idle(self) -> None:
        """Until nobody borrows the current value: with the gate closed, that is the checks
        already running, and nothing started after."""
        async with self._idle:
            await self._idle.wait_for(lambda: self.borrowers(self._current) == 0)

    async def swap(self, new: T) -> T:
        """Make ``new`` current; the old value is retired now if nobody borrows it, else when
        its last borrower is done. Returns the old value."""
        old, self._current = self._current, new
        if self.borrowers(old):
            self._replaced[id(old)] = old
        else:
            await self._retire_quietly(old)
        return old

    async def _retire_quietly(self, value: T) -> None:
        """Retire, logging a failure: it must not become the error of the borrower whose exit
        happened to trigger it, nor stop the swap."""
        try:
            await self._retire(value)
        except Exception as error:
            log.warning("parts_retire_failed", error=error_text(error))
