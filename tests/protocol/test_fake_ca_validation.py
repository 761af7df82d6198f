"""The fake CA validates challenges through the solver, as a real CA does: through real
responders (an HTTP GET, a TLS handshake with ALPN acme-tls/1, a DNS hook's records) or a
recording solver's live records. A proof that is not served, or not the right one, makes the
challenge invalid, so a client that forgets to present (or cleans up too early) fails here as it
would against step-ca or Pebble."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ca_client import errors
from ca_client.challenges.base import ChallengeSolver
from ca_client.challenges.dns01 import Dns01HookSolver
from ca_client.challenges.http01 import Http01Responder
from ca_client.challenges.tlsalpn01 import TlsAlpn01Responder
from ca_client.keys import KeyType, generate_private_key, jwk_thumbprint
from ca_client.models import Identifier
from tests.protocol.conftest import ClientFactory, RecordingSolver
from tests.protocol.fake_acme import Dns01Records, FakeAcme

pytestmark = pytest.mark.anyio

NAME = [Identifier.dns("a.test")]


class NotServing(RecordingSolver):
    """Says it presented, serves nothing: the bug a kind fake CA would let through."""

    async def present(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        self.present_calls.append((identifier, token, key_authorization))
        self.cleanup_calls.append((identifier, token, key_authorization))


class OtherAccount(RecordingSolver):
    """Serves the token with another account's thumbprint."""

    async def present(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        other = jwk_thumbprint(generate_private_key(KeyType.EC_P256))
        await super().present(identifier, token, f"{token}.{other}")


@pytest.fixture
async def http01() -> AsyncIterator[Http01Responder]:
    async with Http01Responder("127.0.0.1", 0) as responder:
        yield responder


async def _obtain(
    make_client: ClientFactory, solver: ChallengeSolver, challenge: str = "http-01"
) -> None:
    await make_client().obtain(
        NAME, generate_private_key(), solvers={challenge: solver}, timeout=60
    )


@pytest.mark.parametrize("validate_on_response", [False, True])
async def test_a_token_that_is_not_served_makes_the_challenge_invalid(
    ca: FakeAcme, make_client: ClientFactory, validate_on_response: bool
) -> None:
    ca.validate_on_response = validate_on_response
    solver = NotServing()
    ca.reach(solver)
    with pytest.raises(errors.OrderFailed) as caught:
        await _obtain(make_client, solver)
    assert isinstance(caught.value.problem, errors.Unauthorized), caught.value
    assert len(solver.present_calls) == 1  # it was asked to present: the CA looked and saw none
    (authz,) = ca.authzs.values()
    assert authz.status == "invalid"


async def test_the_wrong_key_authorization_is_an_incorrect_response(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    solver = OtherAccount()
    ca.reach(solver)
    with pytest.raises(errors.OrderFailed) as caught:
        await _obtain(make_client, solver)
    assert isinstance(caught.value.problem, errors.IncorrectResponse), caught.value


async def test_a_ca_that_reaches_no_solver_fails_with_a_connection_problem(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    with pytest.raises(errors.OrderFailed) as caught:
        await _obtain(make_client, solver)
    assert isinstance(caught.value.problem, errors.ConnectionProblem), caught.value
    assert solver.present_calls  # presented, but where the CA cannot see it


async def test_a_proof_withdrawn_before_the_ca_validates_is_invalid(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    # Served when the client answered the challenge, gone by the poll at which the CA
    # validates (Pebble validates later, too): the CA must look again, not remember.
    ca.reach(solver)

    def withdraw(request: httpx.Request, route: str) -> httpx.Response | None:
        if route == "chall":
            solver.cleanup_calls.extend(solver.present_calls)
        return None

    ca.add_fault(withdraw)
    with pytest.raises(errors.OrderFailed) as caught:
        await _obtain(make_client, solver)
    assert isinstance(caught.value.problem, errors.Unauthorized), caught.value


async def test_http01_is_fetched_from_the_real_responder(
    ca: FakeAcme, make_client: ClientFactory, http01: Http01Responder
) -> None:
    ca.reach(http01)
    await _obtain(make_client, http01)
    fetcher = ca.reachable[-1]
    (authz,) = ca.authzs.values()
    # Looked at when the challenge was answered and again at the poll that settled it.
    assert set(getattr(fetcher, "requests", [])) == {("a.test", authz.token)}


async def test_http01_responder_that_lost_the_token_is_invalid(
    ca: FakeAcme, make_client: ClientFactory, http01: Http01Responder
) -> None:
    class Forgetful(Http01Responder):
        async def present(self, identifier: Identifier, token: str, key_auth: str) -> None:
            await super().present(identifier, token, key_auth)
            await super().cleanup(identifier, token, key_auth)

    async with Forgetful("127.0.0.1", 0) as forgetful:
        ca.reach(forgetful)
        with pytest.raises(errors.OrderFailed) as caught:
            await _obtain(make_client, forgetful)
    assert isinstance(caught.value.problem, errors.Unauthorized), caught.value


async def test_http01_responder_that_is_gone_is_a_connection_problem(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    responder = Http01Responder("127.0.0.1", 0)
    await responder.start()
    ca.reach(responder)
    await responder.aclose()
    with pytest.raises(errors.OrderFailed) as caught:
        await _obtain(make_client, responder)
    assert isinstance(caught.value.problem, errors.ConnectionProblem), caught.value


async def test_tls_alpn01_is_checked_by_a_real_handshake(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    ca.challenge_types = ("tls-alpn-01",)
    async with TlsAlpn01Responder("127.0.0.1", 0) as responder:
        ca.reach(responder)
        await _obtain(make_client, responder, "tls-alpn-01")

        class Forgetful(TlsAlpn01Responder):
            async def present(self, identifier: Identifier, token: str, key_auth: str) -> None:
                await super().present(identifier, token, key_auth)
                await super().cleanup(identifier, token, key_auth)

        async with Forgetful("127.0.0.1", 0) as forgetful:
            other = FakeAcme(clock=ca.clock, challenge_types=("tls-alpn-01",))
            other.reach(forgetful)
            with pytest.raises(errors.OrderFailed):
                await make_client(transport=other.transport()).obtain(
                    NAME, generate_private_key(), solvers={"tls-alpn-01": forgetful}, timeout=60
                )


HOOK = """\
import json, sys
path, action, record, value = sys.argv[1:]
try:
    records = json.load(open(path))
except FileNotFoundError:
    records = []
if action == "present":
    records.append([record, value])
else:
    records = [r for r in records if r != [record, value]]
json.dump(records, open(path, "w"))
"""


@pytest.mark.parametrize("publishes", [True, False])
async def test_dns01_reads_what_the_hook_published(
    ca: FakeAcme, make_client: ClientFactory, tmp_path: Path, publishes: bool
) -> None:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    zone = tmp_path / "zone.json"
    # A hook that "succeeds" without publishing anything must fail the validation.
    command = [sys.executable, str(script), str(zone)] if publishes else ["true"]
    hook = Dns01HookSolver(command)

    async def lookup(record: str) -> list[str]:
        records = json.loads(zone.read_text()) if zone.exists() else []
        return [value for name, value in records if name == record]

    ca.challenge_types = ("dns-01",)
    ca.reach(Dns01Records(lookup))
    if publishes:
        await _obtain(make_client, hook, "dns-01")
        assert json.loads(zone.read_text()) == []  # cleaned up after validation
    else:
        with pytest.raises(errors.OrderFailed):
            await _obtain(make_client, hook, "dns-01")
