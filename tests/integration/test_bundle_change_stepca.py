"""An order in flight against the real step-ca 0.19 survives a CA-bundle rotation (issue 17,
finding 4), over the real HTTP client (`ca_client.http11`).

The order is held while its http-01 proof is presented (the solver waits for the test), the
bundle file is rewritten (the same root plus another certificate: a rotation that still trusts
the CA) and the service acts on it as its watch does. Before the fix the rotation closed the
ACME client under the order: its next request raised ``RuntimeError('the transport is closed')``
and the order was abandoned. Now it finishes on the client it started with.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme

from ca_client.challenges.http01 import Http01Responder
from ca_client.models import Identifier
from sidecar import wiring
from sidecar.cli import build_parser
from sidecar.config import load_settings
from sidecar.outcome import Action
from sidecar.service import Service
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA

pytestmark = [pytest.mark.anyio, pytest.mark.stepca]

DEADLINE = 120.0  # seconds; step-ca answers in milliseconds


class HeldResponder:
    """The real http-01 responder; ``present`` returns only once the test releases it."""

    challenge_type = "http-01"

    def __init__(self, responder: Http01Responder) -> None:
        self._responder = responder
        self.presented = asyncio.Event()
        self.release = asyncio.Event()

    async def present(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        await self._responder.present(identifier, token, key_authorization)
        self.presented.set()
        await self.release.wait()

    async def cleanup(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        await self._responder.cleanup(identifier, token, key_authorization)


async def test_an_order_in_flight_completes_when_the_ca_bundle_rotates(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(step_ca.root_pem)
    args = build_parser().parse_args(
        [
            "run",
            "--directory",
            step_ca.directory_url,
            "--ca-bundle",
            str(bundle),
            "--certs-dir",
            str(tmp_path / "certs"),
            "--state-dir",
            str(tmp_path / "state"),
            "--domain",
            loopback.name,
            "--no-placeholder",
        ]
    )
    settings = load_settings(args, {})
    async with Http01Responder(loopback.address, 80) as responder:
        held = HeldResponder(responder)
        service = Service(
            settings, parts=wiring.build(settings, holder="test", solvers={"http-01": held})
        )
        service.loop.schedule = lambda *_args: None  # type: ignore[method-assign]
        try:
            await service.bundle.look()
            assert service.bundle.ready.is_set()
            check = asyncio.ensure_future(service.loop.check(loopback.name))
            await asyncio.wait_for(held.presented.wait(), DEADLINE)
            bundle.write_text(step_ca.root_pem + trustme.CA().cert_pem.bytes().decode())
            await asyncio.wait_for(service.bundle.look(), DEADLINE)
            held.release.set()
            outcome = await asyncio.wait_for(check, DEADLINE)
            written = (tmp_path / "certs" / f"{loopback.name}.pem").read_bytes()
        finally:
            held.release.set()
            await wiring.close(service.parts)
    assert outcome is not None and outcome.action is Action.ISSUED, outcome
    assert b"BEGIN CERTIFICATE" in written
