"""The sidecar's Manager follows a CA's renewal window (RFC 9773) and names the certificate it
replaces. Neither step-ca 0.19 nor Pebble 2.4 offers ARI, so this runs against the in-process
fake CA."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from structlog.testing import capture_logs

from ca_client.renewal_info import certificate_id
from sidecar import wiring
from sidecar.cli import build_parser
from sidecar.config import load_settings
from tests.protocol.conftest import RecordingSolver
from tests.protocol.fake_acme import DIRECTORY_URL, FakeAcme, problem

pytestmark = pytest.mark.anyio


def _parts(tmp_path: Path, ca: FakeAcme) -> wiring.Parts:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes())
    args = build_parser().parse_args(
        [
            "issue",
            "--directory",
            DIRECTORY_URL,
            "--ca-bundle",
            str(bundle),
            "--certs-dir",
            str(tmp_path / "certs"),
            "--state-dir",
            str(tmp_path / "state"),
            "--domain",
            "ari.example",
        ]
    )
    settings = load_settings(args, {})
    solver = RecordingSolver()
    ca.reach(solver)
    return wiring.build(
        settings,
        holder="test",
        client_options={"transport": ca.transport()},
        solvers={"http-01": solver},
    )


@pytest.mark.parametrize("offers_ari", [True, False])
async def test_renewal_window_decides_and_replaces_is_sent(
    tmp_path: Path, offers_ari: bool
) -> None:
    ca = FakeAcme(renewal_info=offers_ari, validate_on_response=True)
    parts = _parts(tmp_path, ca)
    async with parts.manager as manager:
        (spec,) = parts.settings.certificates
        first = await manager.ensure(spec)
        assert first.action == "issued", first
        pem_path = manager.pem_path(spec.name)
        old_id = certificate_id(pem_path.read_bytes())
        # The fake CA's window lies in the past: a CA that offers it makes the fresh
        # certificate due at once; without ARI it waits for 2/3 of its lifetime.
        second = await manager.ensure(spec, respect_backoff=True)
        if offers_ari:
            assert second.action == "issued", second
            assert second.reason == "scheduled time passed"
            assert ca.new_order_payloads[-1].get("replaces") == old_id
        else:
            assert second.action == "unchanged", second
            assert all("replaces" not in payload for payload in ca.new_order_payloads)


async def test_a_failing_renewal_info_is_a_warning_naming_the_ca_and_the_lifetime_rules(
    tmp_path: Path,
) -> None:
    # A CA that lists renewalInfo and then fails it (a wrong directory URL answers 404 here
    # first): a warning naming the certificate, the directory and the CA's words, never "this
    # CA has no ARI" and never a failed check: the certificate waits for 2/3 of its lifetime.
    ca = FakeAcme(renewal_info=True, validate_on_response=True)
    ca.fail_times("renewal-info", 1, lambda: problem(404, "malformed", "no such renewal info"))
    parts = _parts(tmp_path, ca)
    async with parts.manager as manager:
        (spec,) = parts.settings.certificates
        assert (await manager.ensure(spec)).action == "issued"
        with capture_logs() as logs:
            second = await manager.ensure(spec, respect_backoff=True)
    assert second.action == "unchanged", second
    assert second.ok and second.error is None
    (failed,) = [entry for entry in logs if entry["event"] == "renewal_info_failed"]
    assert failed["log_level"] == "warning"
    assert failed["cert"] == spec.name
    assert failed["directory"] == DIRECTORY_URL
    assert "no such renewal info" in failed["error"]
    assert not [entry for entry in logs if entry["event"] == "renewal_info_window"]
