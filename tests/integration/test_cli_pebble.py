"""`cert-sidecar issue` against Pebble: EAB from the environment, dns-01 through the hook.

Pebble's nonce rejection stays on; its validation sleeps are off (the one test under Pebble's
full default hostility is test_challenges_pebble.py's).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography import x509

from ca_client.keys import b64url
from tests.integration.cli import base_args, read_pem_blocks, run_cli
from tests.peers.pebble import PebbleFactory

pytestmark = [pytest.mark.pebble]

DNS_HOOK = Path(__file__).resolve().parents[1] / "peers" / "dns_hook.py"


def test_eab_from_environment_and_dns01_hook_with_wildcard(
    pebble_factory: PebbleFactory, tmp_path: Path
) -> None:
    mac_key = bytes(range(32))
    pebble = pebble_factory(eab={"kid-7": b64url(mac_key)}, no_sleep=True)
    hook = f"{sys.executable} {DNS_HOOK} {pebble.challtestsrv_url}"
    args = [
        "issue",
        *base_args(pebble.directory_url, pebble.ca_bundle, tmp_path / "certs", tmp_path / "state"),
        "--challenge",
        "dns-01",
        "--dns-hook",
        hook,
        "--domain",
        "*.eab.cert-sidecar.test,eab.cert-sidecar.test",
    ]
    # Without the binding Pebble refuses the account: exit 1, one line naming the problem.
    refused = run_cli(args)
    assert refused.code == 1
    assert "externalAccountRequired" in refused.stderr or "external account" in refused.stderr
    assert not (tmp_path / "certs" / "_wildcard.eab.cert-sidecar.test.pem").exists()

    env = {"CERT_SIDECAR_EAB_KID": "kid-7", "CERT_SIDECAR_EAB_HMAC_KEY": b64url(mac_key)}
    result = run_cli(args, env=env)
    assert result.code == 0, result.stderr
    assert b64url(mac_key) not in result.stderr + result.stdout
    pem_path = tmp_path / "certs" / "_wildcard.eab.cert-sidecar.test.pem"
    leaf = x509.load_pem_x509_certificate(read_pem_blocks(pem_path)[0][1])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "*.eab.cert-sidecar.test",
        "eab.cert-sidecar.test",
    }
    # The chain verifies against one of Pebble's issuing roots.
    blocks = read_pem_blocks(pem_path)
    chain = [x509.load_pem_x509_certificate(b) for label, b in blocks[1:-1]]
    roots = [x509.load_pem_x509_certificate(r.encode()) for r in pebble.issuing_roots()]
    top = chain[-1] if chain else leaf
    assert any(_signed_by(top, root) for root in roots)


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except Exception:
        return False
    return True
