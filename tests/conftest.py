"""Shared test set-up: the real peers' fixtures live in tests/peers/ and are loaded here."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.peers.loopback",
    "tests.peers.stepca",
    "tests.peers.pebble",
    "tests.peers.haproxy",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
