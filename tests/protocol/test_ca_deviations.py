"""CAs that bend RFC 8555: what cert-sidecar tolerates, and how it says what it refuses.

Each case is an option of the in-process fake CA (no real server here produces it on demand);
docs/ACME-DEVIATIONS.md lists them with the reasons.
"""

from __future__ import annotations

import logging

import pytest

from ca_client.errors import OrderFailed
from ca_client.keys import KeyType, generate_private_key
from ca_client.models import Identifier
from tests.protocol.conftest import ClientFactory, FakeClock, RecordingSolver
from tests.protocol.fake_acme import FakeAcme

pytestmark = pytest.mark.anyio

NAME = Identifier.dns("a.test")


@pytest.fixture
def ca(clock: FakeClock, solver: RecordingSolver) -> FakeAcme:
    fake = FakeAcme(clock=clock)
    fake.reach(solver)
    return fake


def _count(ca: FakeAcme, route: str) -> int:
    return sum(1 for _, found in ca.requests if found == route)


# --- newAccount for a known key: 200, Location, and no account object -------------------------


@pytest.mark.parametrize("body", ["{}", ""])
async def test_existing_account_answered_without_its_object_is_fetched(
    ca: FakeAcme, make_client: ClientFactory, solver: RecordingSolver, body: str
) -> None:
    # The third CA: every run after the first failed with "field 'status' missing".
    key = generate_private_key(KeyType.EC_P256)
    first = await make_client(account_key=key).ensure_account(contact=["mailto:a@a.test"])
    ca.existing_account_body = body
    client = make_client(account_key=key)
    fetches = _count(ca, "acct")
    account = await client.ensure_account(contact=["mailto:a@a.test"], account_url=first.url)
    assert (account.url, account.status) == (first.url, "valid")
    assert account.contact == ("mailto:a@a.test",)  # read from the account itself
    assert _count(ca, "acct") == fetches + 1  # one POST-as-GET, no contact update
    issued = await client.obtain(
        [NAME], generate_private_key(KeyType.EC_P256), solvers={"http-01": solver}
    )
    assert issued.order_url.startswith("https://ca.test/order/")


async def test_an_account_without_status_even_when_fetched_is_taken_as_valid(
    ca: FakeAcme, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    key = generate_private_key(KeyType.EC_P256)
    first = await make_client(account_key=key).ensure_account()
    ca.existing_account_body = "{}"
    ca.account_fetch_has_status = False
    with caplog.at_level(logging.WARNING, logger="ca_client"):
        account = await make_client(account_key=key).ensure_account()
    assert (account.url, account.status) == (first.url, "valid")
    assert f"the CA gave no status for account {first.url}: taking it as valid" in caplog.text


async def test_find_account_tolerates_the_same_short_answer(
    ca: FakeAcme, make_client: ClientFactory
) -> None:
    key = generate_private_key(KeyType.EC_P256)
    first = await make_client(account_key=key).ensure_account()
    ca.existing_account_body = "{}"
    found = await make_client(account_key=key).find_account()
    assert found is not None and (found.url, found.status) == (first.url, "valid")


# --- a failed challenge with no error document ------------------------------------------------


async def test_a_failed_challenge_without_error_names_type_name_and_the_missing_reason(
    clock: FakeClock, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    ca = FakeAcme(clock=clock, challenge_error=False)  # reaches nothing: validation fails
    client = make_client(transport=ca.transport())
    with pytest.raises(OrderFailed) as caught:
        await client.obtain(
            [NAME], generate_private_key(KeyType.EC_P256), solvers={"http-01": solver}
        )
    message = str(caught.value)
    assert caught.value.problem is None
    assert "http-01" in message and "a.test" in message, message
    assert "the CA gave no reason" in message, message
    assert "\n" not in message


async def test_a_failed_challenge_with_error_still_carries_the_cas_reason(
    clock: FakeClock, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    ca = FakeAcme(clock=clock)
    client = make_client(transport=ca.transport())
    with pytest.raises(OrderFailed) as caught:
        await client.obtain(
            [NAME], generate_private_key(KeyType.EC_P256), solvers={"http-01": solver}
        )
    assert caught.value.problem is not None
    assert "no reason" not in str(caught.value)
