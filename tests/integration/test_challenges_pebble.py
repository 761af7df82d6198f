"""The real Pebble validates all three solvers: its strictness checks what step-ca may not.

Pebble resolves every name to 127.0.0.1 through its challtestsrv and validates http-01 on
``.http_port`` and tls-alpn-01 on ``.tls_port``; dns-01 TXT records are published in that
challtestsrv by tests/peers/dns_hook.py, run by `Dns01HookSolver` exactly as a user's hook is.
Pebble's nonce rejection stays on (the client retries); its validation sleeps are switched off
for speed except in the one test that keeps Pebble's full default hostility (the only one in
the suite). http-01 with several names is test_ca_client_pebble.py's.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography import x509

from ca_client.challenges import (
    ChallengeSolver,
    Dns01HookSolver,
    DnsHookError,
    Http01Responder,
    TlsAlpn01Responder,
)
from ca_client.client import AcmeClient
from ca_client.errors import AcmeError
from ca_client.keys import KeyType, generate_private_key
from ca_client.models import Identifier, IssuedCertificate
from tests.peers.pebble import Pebble, PebbleFactory

pytestmark = [pytest.mark.anyio, pytest.mark.pebble]

DNS_HOOK = Path(__file__).resolve().parents[1] / "peers" / "dns_hook.py"


async def _obtain(
    pebble: Pebble,
    identifiers: list[Identifier],
    solvers: Mapping[str, ChallengeSolver],
    timeout: float = 60.0,
) -> IssuedCertificate:
    async with AcmeClient(
        pebble.directory_url,
        generate_private_key(KeyType.EC_P256),
        ssl_context=pebble.ssl_context(),
    ) as client:
        await client.ensure_account(["mailto:test@cert-sidecar.test"])
        return await client.obtain(
            identifiers, generate_private_key(KeyType.EC_P256), solvers=solvers, timeout=timeout
        )


def _san_names(issued: IssuedCertificate) -> set[str]:
    leaf = x509.load_pem_x509_certificate(issued.leaf_pem.encode())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(value) for value in names.get_values_for_type(x509.DNSName)} | {
        str(value) for value in names.get_values_for_type(x509.IPAddress)
    }


async def test_tls_alpn01(pebble_factory: PebbleFactory) -> None:
    pebble = pebble_factory(no_sleep=True)
    names = ["alpn.example.org", "www.alpn.example.org"]
    async with TlsAlpn01Responder("127.0.0.1", pebble.tls_port) as responder:
        issued = await _obtain(
            pebble, [Identifier.dns(name) for name in names], {"tls-alpn-01": responder}
        )
    assert _san_names(issued) == set(names)


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
async def test_ip_identifier(pebble_factory: PebbleFactory, challenge: str) -> None:
    pebble = pebble_factory(no_sleep=True)
    responder: Http01Responder | TlsAlpn01Responder
    if challenge == "http-01":
        responder = Http01Responder("127.0.0.1", pebble.http_port)
    else:
        responder = TlsAlpn01Responder("127.0.0.1", pebble.tls_port)
    async with responder:
        issued = await _obtain(pebble, [Identifier.ip("127.0.0.1")], {challenge: responder})
    assert _san_names(issued) == {"127.0.0.1"}


async def test_dns01_through_the_hook_with_a_wildcard(pebble_factory: PebbleFactory) -> None:
    pebble = pebble_factory(no_sleep=True)
    solver = Dns01HookSolver([sys.executable, str(DNS_HOOK), pebble.challtestsrv_url])
    # A wildcard can only be proven by dns-01 (RFC 8555 §7.1.3); its record is the base name's.
    names = ["*.wild.example.org", "dns.example.org"]
    issued = await _obtain(pebble, [Identifier.dns(name) for name in names], {"dns-01": solver})
    assert _san_names(issued) == set(names)


async def test_dns01_hook_failure_fails_the_order_clearly(pebble_factory: PebbleFactory) -> None:
    pebble = pebble_factory(no_sleep=True)
    # The hook cannot reach its DNS API (a closed port): present must fail, typed and named.
    solver = Dns01HookSolver([sys.executable, str(DNS_HOOK), "http://127.0.0.1:9"])
    with pytest.raises(DnsHookError) as caught:
        await _obtain(pebble, [Identifier.dns("broken.example.org")], {"dns-01": solver})
    assert isinstance(caught.value, AcmeError)
    assert caught.value.returncode == 1
    assert "dns_hook: present _acme-challenge.broken.example.org. failed" in str(caught.value)


async def test_all_three_under_default_hostility(pebble: Pebble) -> None:
    """Pebble's defaults: badNonce for 5% of nonces, 0-15 s sleeps before each validation."""
    async with (
        Http01Responder("127.0.0.1", pebble.http_port) as http,
        TlsAlpn01Responder("127.0.0.1", pebble.tls_port) as alpn,
    ):
        dns = Dns01HookSolver([sys.executable, str(DNS_HOOK), pebble.challtestsrv_url])
        results = await asyncio.gather(
            _obtain(pebble, [Identifier.dns("h.hostile.example.org")], {"http-01": http}, 120),
            _obtain(pebble, [Identifier.dns("t.hostile.example.org")], {"tls-alpn-01": alpn}, 120),
            _obtain(pebble, [Identifier.dns("d.hostile.example.org")], {"dns-01": dns}, 120),
        )
    assert [_san_names(issued) for issued in results] == [
        {"h.hostile.example.org"},
        {"t.hostile.example.org"},
        {"d.hostile.example.org"},
    ]
