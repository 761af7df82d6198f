"""A replaced ACME client is closed after its last exchange, and a failure to close it is a
warning, never that exchange's error (`issuer._close_quietly`; found by mutation testing after
issue 18: no fast test made the close fail)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from ca_client.client import AcmeClient
from sidecar import wiring
from sidecar.outcome import Action
from tests.protocol.service_rig import rig

pytestmark = pytest.mark.anyio

NAME = "replaced.example"
EVENT_DEADLINE = 30.0  # seconds; only a defect (a wait that never ends) comes near it


async def test_a_replaced_client_that_fails_to_close_is_a_warning_not_the_orders_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with rig(NAME, monkeypatch=monkeypatch) as r:
        service = r.service(r.settings("--no-placeholder"))
        r.hold.add(NAME)
        check = asyncio.ensure_future(service.loop.check(NAME))
        failing = [True]
        real_aclose = AcmeClient.aclose

        async def aclose(self: AcmeClient, *args: Any, **kwargs: Any) -> None:
            if failing[0]:
                raise RuntimeError("")  # no text of its own: the warning names its type
            await real_aclose(self, *args, **kwargs)

        try:
            await asyncio.wait_for(r.at_finalize.wait(), EVENT_DEADLINE)
            monkeypatch.setattr(AcmeClient, "aclose", aclose)
            # A CA bundle change drops the client while this order is still using it.
            await service.manager.issuer.reset()
            with capture_logs() as logs:
                r.release.set()
                outcome = await asyncio.wait_for(check, EVENT_DEADLINE)
        finally:
            r.release.set()
            failing[0] = False
            await wiring.close(service.parts)
    assert outcome is not None and outcome.action is Action.ISSUED, outcome
    warnings = [
        (e["log_level"], e["error"]) for e in logs if e["event"] == "acme_client_close_failed"
    ]
    assert warnings == [("warning", "RuntimeError")]
