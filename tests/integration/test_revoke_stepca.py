"""`cert-sidecar revoke` revokes at the CA: checked from the CA's side, against the real
step-ca 0.19 (it has no CRL or OCSP to ask here, but it refuses to revoke a certificate twice).

A new certificate on a new key in the certs directory proves only the replacement; this asks
step-ca about the old serial with the sidecar's own account.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ca_client import errors
from ca_client.client import AcmeClient
from ca_client.keys import load_private_key_pem
from tests.integration.cli import base_args, read_pem_blocks, run_cli
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA

pytestmark = [pytest.mark.anyio, pytest.mark.stepca]


def _account(state: Path) -> tuple[bytes, str]:
    (directory,) = (state / "account").iterdir()
    url = json.loads((directory / "account.json").read_text())["url"]
    return (directory / "key.pem").read_bytes(), str(url)


async def _revoke_again(ca: StepCA, state: Path, leaf_pem: bytes) -> None:
    """Revoke ``leaf_pem`` with the sidecar's account, as the sidecar would."""
    key_pem, url = _account(state)
    async with AcmeClient(
        ca.directory_url, load_private_key_pem(key_pem), ssl_context=ca.ssl_context()
    ) as client:
        await client.ensure_account(account_url=url)
        await client.revoke(leaf_pem)


@pytest.mark.parametrize("remove", [False, True])
async def test_revoke_revokes_the_old_serial_at_the_ca(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path, remove: bool
) -> None:
    state = tmp_path / "state"
    args = [
        *base_args(
            step_ca.directory_url,
            step_ca.root_path,
            tmp_path / "certs",
            state,
            http_listen=f"{loopback.address}:80",
        ),
        "--domain",
        loopback.name,
    ]
    issued = run_cli(["issue", *args])
    assert issued.code == 0, issued.stderr
    pem_path = tmp_path / "certs" / f"{loopback.name}.pem"
    old_leaf = read_pem_blocks(pem_path)[0][1]

    revoke = ["revoke", loopback.name, "--reason", "superseded", *args]
    result = run_cli([*revoke, "--remove"] if remove else revoke)
    assert result.code == 0, result.stderr

    # The CA already holds the old serial as revoked: a second revocation is refused so.
    with pytest.raises(errors.AlreadyRevoked):
        await _revoke_again(step_ca, state, old_leaf)
    if not remove:
        # Control: the replacement is not revoked, so the same request succeeds for it (the
        # refusal above is about that serial, not about the account or the request).
        await _revoke_again(step_ca, state, read_pem_blocks(pem_path)[0][1])
