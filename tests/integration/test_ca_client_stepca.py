"""ca_client against the real step-ca 0.19, validating http-01 on a leased loopback :80."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import PolicyBuilder, Store

from ca_client import errors
from ca_client.challenges.http01 import Http01Responder
from ca_client.client import AcmeClient
from ca_client.keys import KeyType, PrivateKey, generate_private_key
from ca_client.models import Identifier, IssuedCertificate
from tests.peers.loopback import LoopbackLease
from tests.peers.processes import free_port
from tests.peers.stepca import StepCA

pytestmark = [pytest.mark.anyio, pytest.mark.stepca]


def verify_chain(issued: IssuedCertificate, root_pem: str, name: str) -> x509.Certificate:
    """Path-validate the issued chain to the CA root for ``name`` (raises if it does not)."""
    leaf = x509.load_pem_x509_certificate(issued.leaf_pem.encode())
    intermediates = [x509.load_pem_x509_certificate(p.encode()) for p in issued.chain_pems]
    root = x509.load_pem_x509_certificate(root_pem.encode())
    subject: x509.DNSName | x509.IPAddress
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(subject)
    verifier.verify(leaf, intermediates)
    return leaf


@pytest.fixture
async def responder(loopback: LoopbackLease) -> AsyncIterator[Http01Responder]:
    async with Http01Responder(loopback.address, 80) as http01:
        yield http01


def make_client(ca: StepCA, key: PrivateKey | None = None) -> AcmeClient:
    return AcmeClient(
        ca.directory_url, key or generate_private_key(KeyType.EC_P256), ssl_context=ca.ssl_context()
    )


async def test_issuance_for_several_names(
    step_ca: StepCA, loopback: LoopbackLease, responder: Http01Responder
) -> None:
    names = [Identifier.dns(name) for name in loopback.names[:3]]
    cert_key = generate_private_key(KeyType.EC_P256)
    async with make_client(step_ca) as client:
        await client.ensure_account(contact=["mailto:ops@cert-sidecar.test"])
        issued = await client.obtain(
            names, cert_key, solvers={"http-01": responder}, preferred=("http-01",), timeout=60
        )
        # step-ca's Date header is close to our clock (same machine).
        assert client.last_server_date_skew is not None
        assert abs(client.last_server_date_skew) < 5
    # The client cleaned up after itself: the responder holds no token any more.
    assert not responder._tokens
    for name in loopback.names[:3]:
        verify_chain(issued, step_ca.root_pem, name)
    leaf = x509.load_pem_x509_certificate(issued.leaf_pem.encode())
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime > datetime.timedelta(hours=20)
    assert issued.alternates == ()


# Written out, not derived from KeyType, so the test cannot share a mistake with the code (a
# type added to KeyType without an entry here fails with a KeyError).
EXPECTED_KEYS = {
    KeyType.EC_P256: ("ec", 256),
    KeyType.EC_P384: ("ec", 384),
    KeyType.RSA_2048: ("rsa", 2048),
    KeyType.RSA_3072: ("rsa", 3072),
    KeyType.RSA_4096: ("rsa", 4096),
}


def _kind_and_size(public: object) -> tuple[str, int]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "ec", public.curve.key_size
    if isinstance(public, rsa.RSAPublicKey):
        return "rsa", public.key_size
    return type(public).__name__, 0


@pytest.mark.parametrize("key_type", list(KeyType))
async def test_every_certificate_key_type(
    step_ca: StepCA, loopback: LoopbackLease, responder: Http01Responder, key_type: KeyType
) -> None:
    cert_key = generate_private_key(key_type)
    async with make_client(step_ca) as client:
        issued = await client.obtain(
            [Identifier.dns(loopback.name)], cert_key, solvers={"http-01": responder}, timeout=60
        )
    leaf = verify_chain(issued, step_ca.root_pem, loopback.name)
    # The leaf certifies this very key, of this type: not a default key, not another size.
    public = leaf.public_key()
    assert public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == (
        cert_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    assert _kind_and_size(public) == EXPECTED_KEYS[key_type]


@pytest.mark.parametrize("account_key_type", [KeyType.EC_P384, KeyType.RSA_2048])
async def test_account_keys_es384_and_rs256(
    step_ca: StepCA, loopback: LoopbackLease, responder: Http01Responder, account_key_type: KeyType
) -> None:
    async with make_client(step_ca, generate_private_key(account_key_type)) as client:
        issued = await client.obtain(
            [Identifier.dns(loopback.name)],
            generate_private_key(),
            solvers={"http-01": responder},
            timeout=60,
        )
    verify_chain(issued, step_ca.root_pem, loopback.name)


async def test_ip_identifier(
    step_ca: StepCA, loopback: LoopbackLease, responder: Http01Responder
) -> None:
    # RFC 8738: step-ca validates http-01 on the address itself.
    async with make_client(step_ca) as client:
        issued = await client.obtain(
            [Identifier.ip(loopback.address), Identifier.dns(loopback.name)],
            generate_private_key(),
            solvers={"http-01": responder},
            timeout=60,
        )
    verify_chain(issued, step_ca.root_pem, loopback.address)


async def test_account_is_reused_across_clients(step_ca: StepCA) -> None:
    key = generate_private_key(KeyType.EC_P256)
    async with make_client(step_ca, key) as first:
        account = await first.ensure_account(contact=["mailto:a@cert-sidecar.test"])
    async with make_client(step_ca, key) as second:
        found = await second.find_account()
        assert found is not None
        assert found.url == account.url
        again = await second.ensure_account(
            contact=["mailto:a@cert-sidecar.test"], account_url=account.url
        )
        assert again.url == account.url
    async with make_client(step_ca) as stranger:
        assert await stranger.find_account() is None


async def test_revocation(
    step_ca: StepCA, loopback: LoopbackLease, responder: Http01Responder
) -> None:
    cert_key = generate_private_key(KeyType.EC_P256)
    async with make_client(step_ca) as client:
        first = await client.obtain(
            [Identifier.dns(loopback.name)], cert_key, solvers={"http-01": responder}, timeout=60
        )
        await client.revoke(first.leaf_pem, reason=4)
        with pytest.raises(errors.AcmeProblem):
            await client.revoke(first.leaf_pem, reason=4)
        # Revocation signed by the certificate's own key (jwk), not the account.
        second = await client.obtain(
            [Identifier.dns(loopback.name)], cert_key, solvers={"http-01": responder}, timeout=60
        )
        await client.revoke(second.leaf_pem.encode(), cert_key=cert_key)


async def test_concurrent_orders_share_one_client(
    step_ca: StepCA, loopback: LoopbackLease, responder: Http01Responder
) -> None:
    async with make_client(step_ca) as client:
        await client.ensure_account()
        results = await asyncio.gather(
            *(
                client.obtain(
                    [Identifier.dns(loopback.names[i % 4])],
                    generate_private_key(),
                    solvers={"http-01": responder},
                    timeout=90,
                )
                for i in range(int(os.environ.get("CA_CLIENT_N", "12")))
            )
        )
    serials = {x509.load_pem_x509_certificate(r.leaf_pem.encode()).serial_number for r in results}
    assert len(serials) == int(os.environ.get("CA_CLIENT_N", "12"))


async def test_no_renewal_info_on_step_ca(
    step_ca: StepCA, loopback: LoopbackLease, responder: Http01Responder
) -> None:
    async with make_client(step_ca) as client:
        issued = await client.obtain(
            [Identifier.dns(loopback.name)],
            generate_private_key(),
            solvers={"http-01": responder},
            timeout=60,
            replaces="ignored.without-ari",
        )
        assert await client.renewal_info(issued.leaf_pem) is None


# --- TLS and reachability, for real -----------------------------------------------------------


async def test_wrong_trust_is_a_tls_verification_error(step_ca: StepCA) -> None:
    other_root = trustme.CA()
    context = ssl.create_default_context()
    other_root.configure_trust(context)
    async with AcmeClient(
        step_ca.directory_url, generate_private_key(), ssl_context=context
    ) as client:
        with pytest.raises(errors.TLSVerificationFailed, match="not trusted"):
            await client.directory()


async def test_proxy_and_cert_file_environment_are_ignored(
    step_ca: StepCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dead proxy and a bogus CA file: honoured, either would break the request.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SSL_CERT_FILE", os.devnull)
    async with make_client(step_ca) as client:
        directory = await client.directory()
    assert directory.new_order.startswith(step_ca.base_url)


async def test_nothing_listening_is_ca_unreachable() -> None:
    url = f"https://127.0.0.1:{free_port()}/acme/acme/directory"
    async with AcmeClient(
        url, generate_private_key(), ssl_context=ssl.create_default_context()
    ) as client:
        with pytest.raises(errors.CAUnreachable):
            await client.directory()


async def test_step_ca_health_page_is_not_acme(step_ca: StepCA) -> None:
    async with AcmeClient(
        f"{step_ca.base_url}/health", generate_private_key(), ssl_context=step_ca.ssl_context()
    ) as client:
        with pytest.raises(errors.NotACME):
            await client.directory()
