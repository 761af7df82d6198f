"""The one lifecycle every long-lived network object here shares.

``async with thing:`` is ``await thing.start()`` then, whatever happens, ``await
thing.aclose()``; resources are closed explicitly, never in ``__del__``.
"""

from __future__ import annotations

from typing import Self


class StartStop:
    """Mixin for objects with ``start()`` and ``aclose()``; gives them ``async with``."""

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
