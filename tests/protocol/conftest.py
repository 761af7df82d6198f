"""Fixtures for the in-process protocol tests: a fake clock, a fake CA, recording solvers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from ca_client.client import AcmeClient
from ca_client.keys import KeyType, generate_private_key
from ca_client.models import Identifier
from tests.protocol.fake_acme import DIRECTORY_URL, FakeAcme


@dataclass
class FakeClock:
    """Wall clock and sleep in one: ``sleep`` advances time instantly and records the wait."""

    now: float = 1_800_000_000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # still yield, as a real sleep does


@dataclass
class RecordingSolver:
    """A solver that needs no network: the fake CA validates whatever was responded to."""

    challenge_type: str = "http-01"
    present_calls: list[tuple[Identifier, str, str]] = field(default_factory=list)
    cleanup_calls: list[tuple[Identifier, str, str]] = field(default_factory=list)
    fail_present: bool = False

    async def present(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        self.present_calls.append((identifier, token, key_authorization))
        if self.fail_present:
            raise RuntimeError("cannot present")

    async def cleanup(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        self.cleanup_calls.append((identifier, token, key_authorization))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca(clock: FakeClock) -> FakeAcme:
    return FakeAcme(clock=clock)


ClientFactory = Callable[..., AcmeClient]


@pytest.fixture
async def make_client(ca: FakeAcme, clock: FakeClock) -> AsyncIterator[ClientFactory]:
    clients: list[AcmeClient] = []

    def make(**kwargs: object) -> AcmeClient:
        options: dict[str, object] = {
            "clock": clock,
            "sleep": clock.sleep,
            "transport": ca.transport(),
            "timeout": 30.0,
        }
        options.update(kwargs)
        key = options.pop("account_key", None) or generate_private_key(KeyType.EC_P256)
        client = AcmeClient(DIRECTORY_URL, key, **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def solver() -> RecordingSolver:
    return RecordingSolver()
