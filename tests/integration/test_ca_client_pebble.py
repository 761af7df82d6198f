"""ca_client against the real Pebble: strict RFC 8555 checks, nonce rejection, EAB, alternate
chains, revocation.

Pebble's validation sleeps (0-15 s each) are off here: the one test that keeps Pebble's full
default hostility is test_challenges_pebble.py's, for all three solvers at once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import pytest
from cryptography import x509

from ca_client import errors
from ca_client.challenges.http01 import Http01Responder
from ca_client.client import AcmeClient
from ca_client.keys import KeyType, PrivateKey, b64url, generate_private_key
from ca_client.models import ExternalAccountBinding, Identifier
from tests.integration.test_ca_client_stepca import verify_chain
from tests.peers.pebble import Pebble, PebbleFactory

pytestmark = [pytest.mark.anyio, pytest.mark.pebble]


def unique_name(label: str = "a") -> str:
    return f"{label}-{secrets.token_hex(4)}.ca-client.test"


def make_client(pebble: Pebble, key: PrivateKey | None = None) -> AcmeClient:
    return AcmeClient(
        pebble.directory_url,
        key or generate_private_key(KeyType.EC_P256),
        ssl_context=pebble.ssl_context(),
    )


@pytest.fixture
async def fast_pebble(pebble_factory: PebbleFactory) -> Pebble:
    """No validation sleeps, for tests that are not about Pebble's hostility."""
    return pebble_factory(no_sleep=True)


async def _responder(pebble: Pebble) -> Http01Responder:
    # Pebble resolves every name to 127.0.0.1 (its challtestsrv) and validates http-01 on
    # its configured port, so no loopback lease is needed.
    responder = Http01Responder("127.0.0.1", pebble.http_port)
    await responder.start()
    return responder


@pytest.fixture
async def responder(fast_pebble: Pebble) -> AsyncIterator[Http01Responder]:
    http01 = await _responder(fast_pebble)
    try:
        yield http01
    finally:
        await http01.aclose()


async def test_names_and_an_ip_in_one_order_then_ordered_again(
    fast_pebble: Pebble, responder: Http01Responder
) -> None:
    """Two names and an IP over http-01 (nonce rejection on), then the same identifiers again:
    Pebble may reuse the valid authorizations for the second order."""
    pebble = fast_pebble
    names = [
        Identifier.dns(unique_name("a")),
        Identifier.dns(unique_name("b")),
        Identifier.ip("127.0.0.1"),
    ]
    cert_key = generate_private_key(KeyType.EC_P256)
    async with make_client(pebble) as client:
        await client.ensure_account(contact=["mailto:ops@ca-client.test"])
        issued = await client.obtain(names, cert_key, solvers={"http-01": responder}, timeout=60)
        # A second order on the same names: Pebble may reuse the valid authorizations.
        again = await client.obtain(
            names,
            generate_private_key(KeyType.EC_P384),
            solvers={"http-01": responder},
            timeout=60,
        )
    roots = pebble.issuing_roots()
    for name in (names[0].value, names[1].value, "127.0.0.1"):
        verify_chain(issued, roots[0], name)
    verify_chain(again, roots[0], names[0].value)


async def test_many_requests_survive_nonce_rejection(
    pebble_factory: PebbleFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Half of all nonces refused: every request still goes through, thanks to §6.5 retries.
    pebble = pebble_factory(no_sleep=True, nonce_reject=50)
    caplog.set_level(logging.DEBUG, logger="ca_client.transport")
    async with make_client(pebble) as client:
        await client.ensure_account()
        for _ in range(10):
            order = await client.new_order([Identifier.dns(unique_name())])
            assert order.status == "pending"
    # 11 signed requests at 50 %: no rejection at all would mean the setting did not apply.
    assert any("badNonce" in record.getMessage() for record in caplog.records)


async def test_external_account_binding(pebble_factory: PebbleFactory) -> None:
    mac_key = secrets.token_bytes(32)
    pebble = pebble_factory(eab={"kid-1": b64url(mac_key)}, no_sleep=True)
    async with make_client(pebble) as client:
        directory = await client.directory()
        assert directory.external_account_required
        with pytest.raises(errors.ExternalAccountRequired):
            await client.ensure_account()
        with pytest.raises(errors.AcmeProblem):
            await client.ensure_account(eab=ExternalAccountBinding("kid-1", b"wrong" * 8))
        account = await client.ensure_account(
            contact=["mailto:eab@ca-client.test"], eab=ExternalAccountBinding("kid-1", mac_key)
        )
        assert account.status == "valid"
        assert account.contact == ("mailto:eab@ca-client.test",)


async def test_account_lifecycle(fast_pebble: Pebble) -> None:
    key = generate_private_key(KeyType.RSA_2048)  # RS256 account signatures
    async with make_client(fast_pebble, key) as client:
        assert await client.find_account() is None
        account = await client.ensure_account(contact=["mailto:one@ca-client.test"])
        updated = await client.ensure_account(
            contact=["mailto:two@ca-client.test"], account_url=account.url
        )
        assert updated.url == account.url
        assert updated.contact == ("mailto:two@ca-client.test",)
        fetched = await client.fetch_account()
        assert fetched.contact == ("mailto:two@ca-client.test",)
        deactivated = await client.deactivate_account()
        assert deactivated.status == "deactivated"
        # RFC 8555 §7.3.6: a deactivated account's requests are refused.
        with pytest.raises(errors.Unauthorized):
            await client.new_order([Identifier.dns(unique_name())])


async def test_alternate_chains(pebble_factory: PebbleFactory) -> None:
    pebble = pebble_factory(no_sleep=True, alternate_roots=1)
    roots = pebble.issuing_roots()
    assert len(roots) == 2
    alternate_cn = x509.load_pem_x509_certificate(roots[1].encode()).subject.rfc4514_string()
    alternate_cn = alternate_cn.split("CN=", 1)[1].split(",", 1)[0]
    name = unique_name()
    responder = await _responder(pebble)
    try:
        async with make_client(pebble) as client:
            default = await client.obtain(
                [Identifier.dns(name)],
                generate_private_key(),
                solvers={"http-01": responder},
                timeout=60,
            )
            chosen = await client.obtain(
                [Identifier.dns(name)],
                generate_private_key(),
                solvers={"http-01": responder},
                timeout=60,
                preferred_chain=alternate_cn,
            )
    finally:
        await responder.aclose()
    assert len(default.alternates) == 1
    verify_chain(default, roots[0], name)
    verify_chain(chosen, roots[1], name)
    assert chosen.certificate_url != default.certificate_url


async def test_revocation(fast_pebble: Pebble) -> None:
    responder = await _responder(fast_pebble)
    cert_key = generate_private_key(KeyType.EC_P256)
    name = unique_name()
    try:
        async with make_client(fast_pebble) as client:
            first = await client.obtain(
                [Identifier.dns(name)], cert_key, solvers={"http-01": responder}, timeout=60
            )
            await client.revoke(first.leaf_pem, reason=4)
            with pytest.raises(errors.AlreadyRevoked):
                await client.revoke(first.leaf_pem, reason=4)
            second = await client.obtain(
                [Identifier.dns(name)], cert_key, solvers={"http-01": responder}, timeout=60
            )
            await client.revoke(second.leaf_pem, cert_key=cert_key)
            with pytest.raises(errors.AlreadyRevoked):
                await client.revoke(second.leaf_pem)
    finally:
        await responder.aclose()


async def test_wildcard_without_dns_solver_is_no_solver(fast_pebble: Pebble) -> None:
    responder = await _responder(fast_pebble)
    try:
        async with make_client(fast_pebble) as client:
            with pytest.raises(errors.NoSolver, match="dns-01"):
                await client.obtain(
                    [Identifier.dns("*." + unique_name())],
                    generate_private_key(),
                    solvers={"http-01": responder},
                    timeout=60,
                )
    finally:
        await responder.aclose()


async def test_failed_validation_is_order_failed(fast_pebble: Pebble) -> None:
    """No responder behind the port: Pebble's connection error comes back as the reason."""

    class SilentSolver:
        challenge_type = "http-01"

        async def present(self, identifier: Identifier, token: str, key_auth: str) -> None:
            return None

        async def cleanup(self, identifier: Identifier, token: str, key_auth: str) -> None:
            return None

    async with make_client(fast_pebble) as client:
        with pytest.raises(errors.OrderFailed) as caught:
            await client.obtain(
                [Identifier.dns(unique_name())],
                generate_private_key(),
                solvers={"http-01": SilentSolver()},
                timeout=60,
            )
    assert isinstance(caught.value.problem, errors.AcmeProblem)
