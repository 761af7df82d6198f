"""The real step-ca validates three names at once while many sources churn through every slot.

The attacker (``tests/peers/flood.py --sources``) opens 700 connections, one from each of 700
loopback addresses, against 512 slots, reconnecting 20 ms after each close, so newcomers (and
evictions) never stop, as an attacker with an IPv6 /48 (65,536 /64 sources) can manage. step-ca
validates the three names of one order concurrently, from 127.0.0.1: while its connections are
open, 127.0.0.1 is the busiest source.

The end-to-end check that a real validator's requests are protected once sent. The old policy
(close the busiest source's oldest) lost the validator only when a reconnect landed in its few
milliseconds: measured, 1 of 4 runs failed (tls-alpn-01, "could not connect to validation
target") and http-01 took 2.8-5 s instead of about 1 s. So the deterministic regression test is
``tests/unit/test_responder_flood.py``; this one is the real validator under real churn.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ca_client.challenges import Http01Responder, TlsAlpn01Responder
from ca_client.models import Identifier
from tests.integration.test_challenges_stepca import _obtain, _san_names
from tests.integration.test_flood_stepca import _wait_for_connections, flooding
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA

pytestmark = [pytest.mark.anyio, pytest.mark.stepca]

# More connections than the responder's 512 slots: the extra ones keep reconnecting, so
# newcomers arrive, and evict someone, all the time the validator is connected.
CHURNING = 700


def first_source(lease: LoopbackLease) -> str:
    """520 addresses from 127.(100+N).0.1: apart from every lease's and from 127.0.0.1."""
    return f"127.{100 + lease.index}.0.1"


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
async def test_three_names_validate_while_many_sources_hold_every_slot(
    step_ca: StepCA, loopback: LoopbackLease, challenge: str, tmp_path: Path
) -> None:
    responder: Http01Responder | TlsAlpn01Responder
    if challenge == "http-01":
        responder, port, mode = Http01Responder(loopback.address, 80), 80, "http-half"
    else:
        responder, port, mode = TlsAlpn01Responder(loopback.address, 443), 443, "tls-half"
    names = list(loopback.names[:3])
    async with responder:
        async with flooding(
            mode,
            f"{loopback.address}:{port}",
            first_source(loopback),
            CHURNING,
            0.02,  # reconnect soon after each close: newcomers arrive all the time
            tmp_path / "attacker.log",
            sources=CHURNING,
        ) as stats:
            await _wait_for_connections(responder, 500)  # every slot but a few
            started = time.monotonic()
            issued = await _obtain(
                step_ca, [Identifier.dns(name) for name in names], {challenge: responder}
            )
            elapsed = time.monotonic() - started
            assert len(responder._connections) >= 500  # the flood was on throughout
        assert _san_names(issued) == set(names)
    print(f"{challenge}: 3 names under a {CHURNING}-source flood in {elapsed:.2f} s; {stats}")
    assert stats["connects"] >= CHURNING
