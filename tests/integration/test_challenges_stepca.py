"""The real step-ca 0.19 validates the responders on ports 80 and 443 of a leased loopback address.

step-ca resolves the identifiers with the system resolver (the lease's names are in /etc/hosts)
and connects to port 80 (http-01) or 443 (tls-alpn-01), exactly as in production. http-01 with
several names, with an IP address, and with concurrent orders on one responder is in
test_ca_client_stepca.py (each behaviour tested once at this layer).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography import x509

from ca_client.challenges import (
    ChallengeSolver,
    Dns01HookSolver,
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


async def test_tls_alpn01_on_port_443(step_ca: StepCA, loopback: LoopbackLease) -> None:
    names = [loopback.names[2], loopback.names[3]]
    async with TlsAlpn01Responder(loopback.address, 443) as responder:
        issued = await _obtain(
            step_ca, [Identifier.dns(name) for name in names], {"tls-alpn-01": responder}
        )
        assert _san_names(issued) == set(names)
        assert not responder._presented


async def test_dns01_hook_with_challtestsrv_as_resolver(
    step_ca_factory: StepCAFactory, challtestsrv: ChallTestSrv
) -> None:
    ca = step_ca_factory(resolver=challtestsrv.dns_server)
    solver = Dns01HookSolver([sys.executable, str(DNS_HOOK), challtestsrv.url])
    issued = await _obtain(ca, [Identifier.dns("dns01.cert-sidecar.test")], {"dns-01": solver})
    assert _san_names(issued) == {"dns01.cert-sidecar.test"}


async def test_ip_identifier_over_tls_alpn01(step_ca: StepCA, loopback: LoopbackLease) -> None:
    # RFC 8738 §6: step-ca connects to the address itself and sends the reverse-DNS name as SNI.
    async with TlsAlpn01Responder(loopback.address, 443) as responder:
        issued = await _obtain(
            step_ca, [Identifier.ip(loopback.address)], {"tls-alpn-01": responder}
        )
    assert _san_names(issued) == {loopback.address}
