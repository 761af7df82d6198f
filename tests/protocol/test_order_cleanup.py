"""When the ACME client cleans up its challenge proofs: only once the whole order is authorized.

A wildcard and its base name share one TXT record name (``_acme-challenge.<base>``). A dns-01
hook that clears the whole record on ``cleanup`` (the usual shape of a DNS API script) would,
if one authorization cleaned up as soon as it was valid, delete the other's value while the CA
may still be looking for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from ca_client.challenges.base import dns01_txt_value
from ca_client.keys import KeyType, generate_private_key
from ca_client.models import Identifier
from tests.protocol.conftest import ClientFactory
from tests.protocol.fake_acme import FakeAcme

pytestmark = pytest.mark.anyio

BASE_NAME = "x.test"
# How many loop turns the wildcard's present may wait for the base name's authorization.
WAIT_TURNS = 10_000


@dataclass
class WholeRecordHook:
    """A dns-01 solver shaped like a DNS API hook: ``present`` adds a TXT value to the record,
    ``cleanup`` deletes the record with every value in it. It is its own proof source for the
    fake CA (``proofs``)."""

    ca: FakeAcme
    challenge_type: str = "dns-01"
    records: dict[str, list[str]] = field(default_factory=dict)
    #: at each cleanup: the status of every authorization the CA holds
    statuses_at_cleanup: list[list[str]] = field(default_factory=list)

    async def present(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        if identifier.value.startswith("*."):
            # Present the wildcard's value only once the base name's authorization is valid:
            # a client that cleans up per authorization has then already cleared the record,
            # or will while this one is still pending.
            for _ in range(WAIT_TURNS):
                if any(
                    a.identifier["value"] == BASE_NAME and not a.wildcard and a.status == "valid"
                    for a in self.ca.authzs.values()
                ):
                    break
                await asyncio.sleep(0)
        record = identifier.value.removeprefix("*.")
        self.records.setdefault(record, []).append(dns01_txt_value(key_authorization))

    async def cleanup(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        self.statuses_at_cleanup.append([a.status for a in self.ca.authzs.values()])
        self.records.pop(identifier.value.removeprefix("*."), None)

    async def proofs(self, challenge_type: str, identifier: str, token: str) -> list[str]:
        if challenge_type != "dns-01":
            return []
        return list(self.records.get(identifier, ()))


async def test_proofs_are_cleaned_up_only_after_every_authorization_is_valid(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    hook = WholeRecordHook(ca)
    ca.reach(hook)
    ca.challenge_types = ("dns-01",)
    client = make_client()
    await client.ensure_account()
    names = [Identifier.dns(BASE_NAME), Identifier.dns(f"*.{BASE_NAME}")]

    issued = await client.obtain(
        names, generate_private_key(KeyType.EC_P256), solvers={"dns-01": hook}
    )

    assert issued.leaf_pem
    assert len(hook.statuses_at_cleanup) == 2
    assert all(statuses == ["valid", "valid"] for statuses in hook.statuses_at_cleanup), (
        hook.statuses_at_cleanup
    )
    assert hook.records == {}
