"""The ACME client against an in-process fake CA: the whole flow, then each fault a real CA
will not produce on demand. No test waits on real time: the clock and sleep are fake."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from cryptography import x509

from ca_client import errors
from ca_client._order import MAX_FINALIZE_ATTEMPTS
from ca_client.keys import KeyType, generate_private_key, private_key_to_pem
from ca_client.models import ExternalAccountBinding, Identifier
from ca_client.renewal_info import certificate_id
from tests.protocol.conftest import ClientFactory, FakeClock, RecordingSolver
from tests.protocol.fake_acme import BASE, FakeAcme, problem

pytestmark = pytest.mark.anyio

NAMES = [Identifier.dns("a.test"), Identifier.dns("b.test"), Identifier.ip("10.0.0.7")]


@pytest.fixture
def ca(clock: FakeClock, solver: RecordingSolver) -> FakeAcme:
    """The fake CA, validating through the test's solver (what it presents and still serves)."""
    fake = FakeAcme(clock=clock)
    fake.reach(solver)
    return fake


def _routes(ca: FakeAcme, route: str) -> int:
    return sum(1 for _, r in ca.requests if r == route)


# --- the happy path ---------------------------------------------------------------------------


async def test_obtain_whole_order(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver, clock: FakeClock
) -> None:
    ca.polls_until_valid = 2
    ca.polls_until_issued = 1
    client = make_client()
    account = await client.ensure_account(contact=["mailto:ops@a.test"])
    assert account.status == "valid"
    assert account.contact == ("mailto:ops@a.test",)
    cert_key = generate_private_key(KeyType.EC_P256)
    issued = await client.obtain(NAMES, cert_key, solvers={"http-01": solver})

    leaf = x509.load_pem_x509_certificate(issued.leaf_pem.encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"a.test", "b.test"}
    assert issued.pem == issued.leaf_pem + "".join(issued.chain_pems)
    assert len(issued.chain_pems) == 1
    assert issued.order_url.startswith(f"{BASE}/order/")
    # Each identifier presented once with the right key authorization, and cleaned up.
    assert sorted(c[0].value for c in solver.present_calls) == ["10.0.0.7", "a.test", "b.test"]
    assert sorted(solver.cleanup_calls) == sorted(solver.present_calls)
    for _, token, key_auth in solver.present_calls:
        assert key_auth == f"{token}.{client.thumbprint}"
    # Polling started short: nothing waited more than the schedule's early steps.
    assert clock.sleeps
    assert min(clock.sleeps) == 0.02
    assert max(clock.sleeps) <= 0.08
    # The CA's Date header follows the fake clock here (Date has whole seconds).
    assert client.last_server_date_skew is not None
    assert abs(client.last_server_date_skew) < 1.0


async def test_authorizations_are_solved_concurrently(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    barrier = asyncio.Barrier(len(NAMES))

    class BarrierSolver(RecordingSolver):
        async def present(self, identifier: Identifier, token: str, key_auth: str) -> None:
            await super().present(identifier, token, key_auth)
            # Only passes when every authorization is being presented at the same time; a
            # sequential client would stop here and the guard below would fail the test.
            await barrier.wait()

    barrier_solver = BarrierSolver()
    ca.reach(barrier_solver)
    client = make_client()
    await asyncio.wait_for(
        client.obtain(
            NAMES, generate_private_key(KeyType.EC_P256), solvers={"http-01": barrier_solver}
        ),
        timeout=60,
    )


async def test_preferred_challenge_type_and_wildcard(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    http, dns = RecordingSolver("http-01"), RecordingSolver("dns-01")
    ca.reach(http, dns)
    client = make_client()
    await client.obtain(
        [Identifier.dns("c.test"), Identifier.dns("*.c.test")],
        generate_private_key(KeyType.EC_P256),
        solvers={"http-01": http, "dns-01": dns},
        preferred=("http-01", "dns-01"),
    )
    # The wildcard's authorization offers only dns-01 and names the base domain.
    assert [c[0] for c in http.present_calls] == [Identifier.dns("c.test")]
    assert [c[0] for c in dns.present_calls] == [Identifier.dns("c.test")]


async def test_account_is_found_again_by_key_and_contact_updated(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    key = generate_private_key(KeyType.EC_P256)
    first = await make_client(account_key=key).ensure_account(contact=["mailto:a@a.test"])
    second_client = make_client(account_key=key)
    assert await second_client.find_account() == first
    second = await second_client.ensure_account(contact=["mailto:b@a.test"], account_url=first.url)
    assert second.url == first.url
    assert second.contact == ("mailto:b@a.test",)
    assert len(ca.accounts) == 1
    assert await make_client().find_account() is None


async def test_external_account_binding(ca: FakeAcme, make_client: ClientFactory) -> None:
    ca.eab_keys = {"kid-7": b"k" * 32}
    client = make_client()
    with pytest.raises(errors.ExternalAccountRequired):
        await client.ensure_account()
    account = await client.ensure_account(eab=ExternalAccountBinding("kid-7", b"k" * 32))
    assert account.status == "valid"
    assert "secret-bytes" not in repr(ExternalAccountBinding("kid-7", b"secret-bytes"))


async def test_deactivate_account(ca: FakeAcme, make_client: ClientFactory) -> None:
    client = make_client()
    account = await client.ensure_account()
    deactivated = await client.deactivate_account()
    assert deactivated.status == "deactivated"
    assert ca.accounts[account.url]["status"] == "deactivated"


async def test_alternate_chains_and_preferred_chain(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    ca.alternate_roots = ("Other Root",)
    client = make_client()
    key = generate_private_key(KeyType.EC_P256)
    default = await client.obtain([Identifier.dns("a.test")], key, solvers={"http-01": solver})
    assert len(default.alternates) == 1
    chosen = await client.obtain(
        [Identifier.dns("a.test")], key, solvers={"http-01": solver}, preferred_chain="other root"
    )
    top = x509.load_pem_x509_certificate(chosen.chain_pems[-1].encode())
    assert top.issuer.rfc4514_string() == "CN=Other Root"
    assert chosen.certificate_url.endswith("/1")
    assert len(chosen.alternates) == 1


async def test_revocation_by_account_and_by_certificate_key(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    client = make_client()
    cert_key = generate_private_key(KeyType.EC_P256)
    issued = await client.obtain([Identifier.dns("a.test")], cert_key, solvers={"http-01": solver})
    await client.revoke(issued.leaf_pem, reason=4)
    serial = x509.load_pem_x509_certificate(issued.leaf_pem.encode()).serial_number
    assert ca.revoked == [(serial, 4, client.account_url)]
    with pytest.raises(errors.AlreadyRevoked):
        await client.revoke(issued.leaf_pem, cert_key=cert_key)
    other = await client.obtain([Identifier.dns("a.test")], cert_key, solvers={"http-01": solver})
    await client.revoke(other.leaf_pem.encode(), cert_key=cert_key)
    assert ca.revoked[-1][2] == "certificate key"
    assert ca.revoked[-1][1] is None


async def test_renewal_info_and_replaces(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    client = make_client()
    issued = await client.obtain(
        [Identifier.dns("a.test")],
        generate_private_key(),
        solvers={"http-01": solver},
        replaces="x.y",
    )
    # No renewalInfo in the directory: no call, and no "replaces" sent.
    assert await client.renewal_info(issued.leaf_pem) is None
    assert "replaces" not in ca.new_order_payloads[-1]

    ca.renewal_info = True
    ari_client = make_client()
    info = await ari_client.renewal_info(issued.leaf_pem)
    assert info is not None
    assert info.retry_after == 21600.0
    assert info.explanation_url == f"{BASE}/docs/{certificate_id(issued.leaf_pem)}"
    await ari_client.obtain(
        [Identifier.dns("a.test")],
        generate_private_key(),
        solvers={"http-01": solver},
        replaces=certificate_id(issued.leaf_pem),
    )
    assert ca.new_order_payloads[-1]["replaces"] == certificate_id(issued.leaf_pem)


# --- faults -------------------------------------------------------------------------------------


async def test_bad_nonce_is_retried_transparently(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    ca.fail_times("new-order", 3, lambda: problem(400, "badNonce", "stale"))
    ca.fail_times("finalize", 1, lambda: problem(400, "badNonce", "stale"))
    client = make_client()
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert _routes(ca, "new-order") == 4
    assert _routes(ca, "finalize") == 2


async def test_bad_nonce_storm_gives_up(ca: FakeAcme, make_client: ClientFactory) -> None:
    ca.fail_times("new-order", 1000, lambda: problem(400, "badNonce", "stale"))
    client = make_client()
    with pytest.raises(errors.BadNonce):
        await client.new_order([Identifier.dns("a.test")])
    assert _routes(ca, "new-order") == 11


async def test_nonces_are_pooled_not_fetched_per_request(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    client = make_client()
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    # At most one HEAD newNonce (the fake also sends a nonce with the directory); every later
    # POST reused the nonce of an earlier answer.
    assert _routes(ca, "new-nonce") <= 1


async def test_429_with_retry_after_is_waited_out(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver, clock: FakeClock
) -> None:
    ca.fail_times(
        "new-order", 2, lambda: problem(429, "rateLimited", "slow down", {"Retry-After": "7"})
    )
    client = make_client()
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert clock.sleeps.count(7.0) == 2


async def test_429_beyond_the_deadline_raises_at_once(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver, clock: FakeClock
) -> None:
    ca.fail_times(
        "new-order",
        1,
        lambda: problem(429, "rateLimited", "come back tomorrow", {"Retry-After": "86400"}),
    )
    client = make_client()
    with pytest.raises(errors.RateLimited) as caught:
        await client.obtain(
            [Identifier.dns("a.test")],
            generate_private_key(),
            solvers={"http-01": solver},
            timeout=120,
        )
    assert caught.value.retry_after == 86400.0
    assert clock.sleeps == []


async def test_503_with_retry_after_date_and_html_body(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver, clock: FakeClock
) -> None:
    import email.utils

    def unavailable() -> httpx.Response:
        when = email.utils.formatdate(clock.now + 3, usegmt=True)
        return httpx.Response(
            503,
            text="<html><h1>Maintenance</h1></html>",
            headers={"Content-Type": "text/html", "Retry-After": when},
        )

    ca.fail_times("finalize", 1, unavailable)
    client = make_client()
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert 3.0 in clock.sleeps


async def test_html_error_pages_become_typed_errors(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    ca.fail_times(
        "new-order",
        4,
        lambda: httpx.Response(
            502, text="<html>Bad Gateway</html>", headers={"Content-Type": "text/html"}
        ),
    )
    client = make_client()
    with pytest.raises(errors.CAUnreachable) as caught:
        await client.obtain(
            [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
        )
    assert caught.value.status == 502
    assert _routes(ca, "new-order") == 4  # newOrder may be repeated: 1 + 3 retries

    ca.fail_times(
        "new-order",
        1,
        lambda: httpx.Response(
            404, text="<html>Not Found</html>", headers={"Content-Type": "text/html"}
        ),
    )
    with pytest.raises(errors.NotACME):
        await client.new_order([Identifier.dns("a.test")])


async def test_directory_that_is_not_acme(ca: FakeAcme, make_client: ClientFactory) -> None:
    ca.fail_times(
        "directory",
        1,
        lambda: httpx.Response(
            200, text="<html>welcome to nginx</html>", headers={"Content-Type": "text/html"}
        ),
    )
    with pytest.raises(errors.NotACME):
        await make_client().directory()
    ca.fail_times("directory", 1, lambda: httpx.Response(200, json={"hello": "world"}))
    with pytest.raises(errors.NotACME, match="newNonce"):
        await make_client().directory()


async def test_malformed_json_mid_order_cleans_up(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    ca.fail_times(
        "authz",
        1,
        lambda: httpx.Response(
            200, content=b'{"status": "pend', headers={"Content-Type": "application/json"}
        ),
    )
    client = make_client()
    # The first authz fetch (before present) fails: nothing presented, nothing to clean.
    with pytest.raises(errors.MalformedResponse):
        await client.obtain(
            [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
        )
    assert solver.present_calls == []

    calls = {"authz": 0}

    def second_fetch_broken(request: httpx.Request, route: str) -> httpx.Response | None:
        if route == "authz":
            calls["authz"] += 1
            if calls["authz"] == 2:  # the poll after the challenge response
                return httpx.Response(
                    200, content=b"[1, 2", headers={"Content-Type": "application/json"}
                )
        return None

    ca.add_fault(second_fetch_broken)
    with pytest.raises(errors.MalformedResponse):
        await client.obtain(
            [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
        )
    assert len(solver.present_calls) == 1
    assert solver.cleanup_calls == solver.present_calls


async def test_connection_reset_on_a_poll_is_retried(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    def reset() -> httpx.Response:
        raise httpx.ReadError("[Errno 104] Connection reset by peer")

    ca.fail_times("order", 1, reset)
    client = make_client()
    issued = await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert issued.leaf_pem


async def test_lost_finalize_answer_is_recovered_from_the_order(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    # The CA processed finalize, then the connection dropped before the answer arrived.
    lost = {"done": False}

    def lost_answer(request: httpx.Request, route: str) -> httpx.Response | None:
        if route == "finalize" and not lost["done"]:
            lost["done"] = True
            ca.handler(request)
            raise httpx.ReadError("[Errno 104] Connection reset by peer")
        return None

    ca.add_fault(lost_answer)
    client = make_client()
    issued = await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert issued.leaf_pem
    assert len(ca.certificates) == 1  # finalized once, not twice


async def test_reset_before_finalize_arrives_finalizes_again(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    def reset() -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    ca.fail_times("finalize", 1, reset)
    client = make_client()
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert _routes(ca, "finalize") == 2


async def test_connection_reset_on_finalize_twice_is_an_error_and_cleans_up(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    def reset() -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    ca.fail_times("finalize", 10, reset)
    client = make_client()
    with pytest.raises(errors.CAUnreachable) as caught:
        await client.obtain(
            [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
        )
    # finalize is not repeated blindly: each repeat only after seeing the order still
    # "ready", and a bounded number of times.
    assert _routes(ca, "finalize") == MAX_FINALIZE_ATTEMPTS
    assert _routes(ca, "order") == MAX_FINALIZE_ATTEMPTS
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    assert solver.cleanup_calls == solver.present_calls


async def test_server_internal_on_finalize_is_retried_while_the_order_is_ready(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    # step-ca 0.19 under 16 concurrent orders: finalize lost the account's compare-and-swap
    # three times in a row (seen in bench/many.py), and the order stayed "ready".
    attempts = MAX_FINALIZE_ATTEMPTS - 1
    ca.fail_times("finalize", attempts, lambda: problem(500, "serverInternal", "cas failed"))
    client = make_client()
    issued = await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert issued.leaf_pem
    assert _routes(ca, "finalize") == attempts + 1
    assert len(ca.certificates) == 1


async def test_server_internal_races_are_retried(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    # step-ca 0.19 answers serverInternal when concurrent requests of one account race.
    ca.fail_times("new-order", 2, lambda: problem(500, "serverInternal", "cas failed"))
    ca.fail_times("authz", 1, lambda: problem(500, "serverInternal", "cas failed"))
    client = make_client()
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert _routes(ca, "new-order") == 3


async def test_bare_500_for_a_forgotten_account_reregisters(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    # step-ca 0.19 after a database reset: HTTP 500 with "{}" instead of accountDoesNotExist.
    client = make_client()
    old = await client.ensure_account()

    def bare_500(request: httpx.Request, route: str) -> httpx.Response | None:
        if route not in ("new-account", "new-nonce", "directory"):
            import json

            kid = json.loads(ca.handler_b64(request))["kid"]
            if kid not in ca.accounts:
                return httpx.Response(500, json={})
        return None

    ca.reset_database()
    ca.add_fault(bare_500)
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert client.account_url != old.url


async def test_bare_500_for_a_known_account_is_raised(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    client = make_client()
    await client.ensure_account()
    ca.fail_times("order", 100, lambda: httpx.Response(500, json={}))
    order = await client.new_order([Identifier.dns("a.test")])
    with pytest.raises(errors.CAUnreachable, match="HTTP 500"):
        await client.get_order(order.url)
    assert len(ca.accounts) == 1


async def test_connect_failure_is_retried_even_for_new_order(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    def refused() -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    ca.fail_times("new-order", 2, refused)
    client = make_client()
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert _routes(ca, "new-order") == 3


async def test_unreachable_ca_after_retries(ca: FakeAcme, make_client: ClientFactory) -> None:
    def refused() -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    ca.fail_times("directory", 100, refused)
    with pytest.raises(errors.CAUnreachable, match="Connection refused"):
        await make_client().directory()
    assert _routes(ca, "directory") == 3


async def test_certificate_for_another_key_is_refused(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    ca.issue_for_key = ec.generate_private_key(ec.SECP256R1())
    client = make_client()
    with pytest.raises(errors.CertificateMismatch, match="not for the key"):
        await client.obtain(
            [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
        )


async def test_account_does_not_exist_reregisters_once(
    ca: FakeAcme,
    make_client: ClientFactory,
    solver: RecordingSolver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client()
    old = await client.ensure_account(contact=["mailto:a@a.test"])
    ca.reset_database()
    caplog.set_level(logging.WARNING, logger="ca_client")
    # Five orders at once all meet accountDoesNotExist; one registration serves them all.
    await asyncio.gather(
        *(
            client.obtain(
                [Identifier.dns(f"n{i}.test")], generate_private_key(), solvers={"http-01": solver}
            )
            for i in range(5)
        )
    )
    assert client.account_url != old.url
    assert len(ca.accounts) == 1
    assert ca.accounts[client.account_url or ""]["contact"] == ["mailto:a@a.test"]
    assert sum("registering again" in r.getMessage() for r in caplog.records) == 1


async def test_account_does_not_exist_twice_is_raised(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    client = make_client()
    await client.ensure_account()
    ca.fail_times("new-order", 2, lambda: problem(400, "accountDoesNotExist", "gone"))
    with pytest.raises(errors.AccountDoesNotExist):
        await client.new_order([Identifier.dns("a.test")])


async def test_deadline_expiry_while_processing(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver, clock: FakeClock
) -> None:
    ca.polls_until_issued = -1  # the order never leaves "processing"
    client = make_client()
    start = clock.now
    with pytest.raises(errors.ACMETimeout, match="processing"):
        await client.obtain(
            [Identifier.dns("a.test")],
            generate_private_key(),
            solvers={"http-01": solver},
            timeout=45,
        )
    # It polled until the deadline and not a moment beyond, with capped intervals.
    assert clock.now == pytest.approx(start + 45)
    assert max(clock.sleeps) <= 3.0
    assert solver.cleanup_calls == solver.present_calls


async def test_poll_retry_after_is_honoured(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver, clock: FakeClock
) -> None:
    ca.polls_until_valid = 1

    def slow_down(request: httpx.Request, route: str) -> httpx.Response | None:
        return None

    original = ca._authz_response

    def with_retry_after(authz_id: int, *, poll: bool) -> httpx.Response:
        response = original(authz_id, poll=poll)
        response.headers["Retry-After"] = "2"
        return response

    ca._authz_response = with_retry_after  # type: ignore[method-assign]
    ca.add_fault(slow_down)
    client = make_client()
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert 2.0 in clock.sleeps


async def test_failed_validation_raises_order_failed_with_the_reason(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    def invalid_after_response(request: httpx.Request, route: str) -> httpx.Response | None:
        for authz in ca.authzs.values():
            if authz.responded and authz.status == "pending":
                authz.status = "invalid"
                authz.challenge_status = "invalid"
        return None

    ca.add_fault(invalid_after_response)
    client = make_client()
    with pytest.raises(errors.OrderFailed) as caught:
        await client.obtain(
            [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
        )
    assert isinstance(caught.value.problem, errors.ConnectionProblem)
    assert "refused" in str(caught.value)
    assert solver.cleanup_calls == solver.present_calls


async def test_no_solver_for_offered_challenges(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    client = make_client()
    with pytest.raises(errors.NoSolver, match=r"\*\.a\.test"):
        await client.obtain(
            [Identifier.dns("*.a.test")], generate_private_key(), solvers={"http-01": solver}
        )
    assert solver.present_calls == []


async def test_present_failure_still_cleans_up_and_others_stop(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    failing = RecordingSolver(fail_present=True)
    client = make_client()
    with pytest.raises(RuntimeError, match="cannot present"):
        await client.obtain(NAMES, generate_private_key(), solvers={"http-01": failing})
    assert len(failing.cleanup_calls) == len(failing.present_calls) >= 1


async def test_cancellation_cleans_up(ca: FakeAcme, make_client: ClientFactory) -> None:
    ca.polls_until_valid = 10**9  # validation never finishes
    presented = asyncio.Event()

    class Solver(RecordingSolver):
        async def present(self, identifier: Identifier, token: str, key_auth: str) -> None:
            await super().present(identifier, token, key_auth)
            if len(self.present_calls) == len(NAMES):
                presented.set()

    solver = Solver()
    client = make_client()
    task = asyncio.ensure_future(
        client.obtain(NAMES, generate_private_key(), solvers={"http-01": solver}, timeout=10**9)
    )
    await presented.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(solver.cleanup_calls) == sorted(solver.present_calls)
    assert len(solver.cleanup_calls) == len(NAMES)


async def test_date_skew_is_recorded(ca: FakeAcme, make_client: ClientFactory) -> None:
    ca.date_offset = -120.0
    client = make_client()
    await client.directory()
    assert client.last_server_date_skew == -120.0


async def test_no_key_material_in_logs(
    ca: FakeAcme,
    make_client: ClientFactory,
    solver: RecordingSolver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    account_key = generate_private_key(KeyType.EC_P256)
    cert_key = generate_private_key(KeyType.EC_P256)
    client = make_client(account_key=account_key)
    await client.obtain([Identifier.dns("a.test")], cert_key, solvers={"http-01": solver})
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "certificate issued" in text
    for key in (account_key, cert_key):
        body = private_key_to_pem(key).decode().splitlines()[1]
        assert body[:40] not in text


async def test_step_ca_style_flow_takes_the_fewest_requests(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver, clock: FakeClock
) -> None:
    # Validation during the challenge answer (as step-ca does): no authorization poll, and
    # finalize right after the last authorization, without fetching the order first. (The
    # fake issues on the first order poll after finalize; step-ca answers "valid" at once.)
    ca.validate_on_response = True
    client = make_client()
    await client.ensure_account()
    start = len(ca.requests)
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert [route for _, route in ca.requests[start:]] == [
        "new-order",
        "authz",
        "chall",
        "finalize",
        "order",
        "cert",
    ]


async def test_finalize_before_the_order_is_ready_waits_for_it(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    ca.fail_times("finalize", 1, lambda: problem(403, "orderNotReady", "still pending"))
    client = make_client()
    await client.obtain(
        [Identifier.dns("a.test")], generate_private_key(), solvers={"http-01": solver}
    )
    assert _routes(ca, "finalize") == 2
