"""The real step-ca 0.19 validates the responders on ports 80 and 443 of a leased loopback address.

step-ca resolves the identifiers with the system resolver (the lease's names are in /etc/hosts)
and connects to port 80 (http-01) or 443 (tls-alpn-01), exactly as in production.
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
    Http01Responder,
    TlsAlpn01Responder,
)
from ca_client.client import AcmeClient
from ca_client.keys import KeyType, generate_private_key
from ca_client.models import Identifier, IssuedCertificate
from tests.peers.loopback import LoopbackLease
from tests.peers.pebble import ChallTestSrv
from tests.peers.stepca import StepCA, StepCAFactory

pytestmark = [pytest.mark.anyio, pytest.mark.stepca]

DNS_HOOK = Path(__file__).resolve().parents[1] / "peers" / "dns_hook.py"


async def _obtain(
    ca: StepCA,
    identifiers: list[Identifier],
    solvers: Mapping[str, ChallengeSolver],
) -> IssuedCertificate:
    async with AcmeClient(
        ca.directory_url, generate_private_key(KeyType.EC_P256), ssl_context=ca.ssl_context()
    ) as client:
        await client.ensure_account()
        return await client.obtain(
            identifiers, generate_private_key(KeyType.EC_P256), solvers=solvers, timeout=60.0
        )


def _san_names(issued: IssuedCertificate) -> set[str]:
    leaf = x509.load_pem_x509_certificate(issued.leaf_pem.encode())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(value) for value in names.get_values_for_type(x509.DNSName)} | {
        str(value) for value in names.get_values_for_type(x509.IPAddress)
    }


async def test_http01_on_port_80(step_ca: StepCA, loopback: LoopbackLease) -> None:
    names = [loopback.names[0], loopback.names[1]]
    async with Http01Responder(loopback.address, 80) as responder:
        issued = await _obtain(
            step_ca, [Identifier.dns(name) for name in names], {"http-01": responder}
        )
        assert _san_names(issued) == set(names)
        # cleanup ran: nothing is held any more (the client always cleans up).
        assert not responder._tokens


async def test_tls_alpn01_on_port_443(step_ca: StepCA, loopback: LoopbackLease) -> None:
    names = [loopback.names[2], loopback.names[3]]
    async with TlsAlpn01Responder(loopback.address, 443) as responder:
        issued = await _obtain(
            step_ca, [Identifier.dns(name) for name in names], {"tls-alpn-01": responder}
        )
        assert _san_names(issued) == set(names)
        assert not responder._presented


async def test_one_responder_serves_concurrent_orders(
    step_ca: StepCA, loopback: LoopbackLease
) -> None:
    async with Http01Responder(loopback.address, 80) as responder:
        results = await asyncio.gather(
            *(
                _obtain(step_ca, [Identifier.dns(name)], {"http-01": responder})
                for name in loopback.names
            )
        )
    assert [_san_names(issued) for issued in results] == [{name} for name in loopback.names]


async def test_dns01_hook_with_challtestsrv_as_resolver(
    step_ca_factory: StepCAFactory, challtestsrv: ChallTestSrv
) -> None:
    ca = step_ca_factory(resolver=challtestsrv.dns_server)
    solver = Dns01HookSolver([sys.executable, str(DNS_HOOK), challtestsrv.url])
    issued = await _obtain(ca, [Identifier.dns("dns01.cert-sidecar.test")], {"dns-01": solver})
    assert _san_names(issued) == {"dns01.cert-sidecar.test"}


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
async def test_ip_identifier(step_ca: StepCA, loopback: LoopbackLease, challenge: str) -> None:
    # RFC 8738: step-ca connects to the address itself; tls-alpn-01 sends its reverse-DNS SNI.
    responder: Http01Responder | TlsAlpn01Responder
    if challenge == "http-01":
        responder = Http01Responder(loopback.address, 80)
    else:
        responder = TlsAlpn01Responder(loopback.address, 443)
    async with responder:
        issued = await _obtain(step_ca, [Identifier.ip(loopback.address)], {challenge: responder})
    assert _san_names(issued) == {loopback.address}
