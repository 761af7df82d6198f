"""CAs that bend RFC 8555: what cert-sidecar tolerates, and how it says what it refuses.

Each case is an option of the in-process fake CA (no real server here produces it on demand);
docs/ACME-DEVIATIONS.md lists them with the reasons.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ca_client.errors import (
    MalformedResponse,
    NoSolver,
    NotACME,
    OrderFailed,
    RejectedIdentifier,
)
from ca_client.keys import KeyType, generate_private_key
from ca_client.models import Identifier
from tests.protocol.conftest import ClientFactory, FakeClock, RecordingSolver
from tests.protocol.fake_acme import FakeAcme, problem

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


# --- the table of docs/ACME-DEVIATIONS.md, checked ---------------------------------------------

Edit = Callable[[httpx.Request, str, httpx.Response], httpx.Response]


def _rebuilt(
    response: httpx.Response,
    *,
    status: int | None = None,
    drop: tuple[str, ...] = (),
    set_headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() not in drop}
    headers.pop("content-length", None)
    headers.update({k.lower(): v for k, v in (set_headers or {}).items()})
    return httpx.Response(
        status or response.status_code,
        headers=headers,
        content=response.content if content is None else content,
    )


def _json_edit(route: str, change: Callable[[dict[str, Any]], None]) -> Edit:
    def edit(request: httpx.Request, found: str, response: httpx.Response) -> httpx.Response:
        if found != route or response.status_code >= 400:
            return response
        body = json.loads(response.content)
        change(body)
        return _rebuilt(response, content=json.dumps(body).encode())

    return edit


def _no_nonce(request: httpx.Request, route: str, response: httpx.Response) -> httpx.Response:
    return response if route == "new-nonce" else _rebuilt(response, drop=("replay-nonce",))


def _no_nonce_anywhere(
    request: httpx.Request, route: str, response: httpx.Response
) -> httpx.Response:
    return _rebuilt(response, drop=("replay-nonce",))


def _text_plain(request: httpx.Request, route: str, response: httpx.Response) -> httpx.Response:
    return _rebuilt(response, set_headers={"Content-Type": "text/plain"})


def _status_200(request: httpx.Request, route: str, response: httpx.Response) -> httpx.Response:
    return _rebuilt(response, status=200) if response.status_code == 201 else response


def _no_location(route: str) -> Edit:
    def edit(request: httpx.Request, found: str, response: httpx.Response) -> httpx.Response:
        return _rebuilt(response, drop=("location",)) if found == route else response

    return edit


def _no_link(request: httpx.Request, route: str, response: httpx.Response) -> httpx.Response:
    return _rebuilt(response, drop=("link",)) if route == "chall" else response


def _relative_location(
    request: httpx.Request, route: str, response: httpx.Response
) -> httpx.Response:
    location = response.headers.get("location")
    if not location:
        return response
    return _rebuilt(response, set_headers={"Location": location.removeprefix("https://ca.test")})


def _problem_as_json(
    request: httpx.Request, route: str, response: httpx.Response
) -> httpx.Response:
    if route != "new-order":
        return response
    return httpx.Response(
        400,
        json={"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "not here"},
        headers={"Content-Type": "application/json", "Replay-Nonce": "n-problem"},
    )


def _html_error(request: httpx.Request, route: str, response: httpx.Response) -> httpx.Response:
    if route != "new-order":
        return response
    return httpx.Response(
        400, content=b"<html>Bad Request</html>", headers={"Content-Type": "text/html"}
    )


def _unknown_fields(body: dict[str, Any]) -> None:
    body["x-vendor"] = {"anything": [1, 2]}


DEVIATIONS: list[tuple[str, list[Edit], type[Exception] | None, str]] = [
    ("no Replay-Nonce on answers", [_no_nonce], None, ""),
    ("no Replay-Nonce even from newNonce", [_no_nonce_anywhere], MalformedResponse, "Replay-Nonce"),
    ("JSON served as text/plain", [_text_plain], None, ""),
    ("200 instead of 201", [_status_200], None, ""),
    ("relative Location", [_relative_location], None, ""),
    ("unknown fields", [_json_edit("order", _unknown_fields)], None, ""),
    ("no Link up on a challenge", [_no_link], None, ""),
    ("problem document as application/json", [_problem_as_json], RejectedIdentifier, "not here"),
    ("HTML error page", [_html_error], NotACME, "text/html"),
    (
        "order without status",
        [_json_edit("new-order", lambda b: b.pop("status"))],
        MalformedResponse,
        "field 'status' missing",
    ),
    ("newOrder without Location", [_no_location("new-order")], MalformedResponse, "Location"),
    (
        "authorization without challenges",
        [_json_edit("authz", lambda b: b.update(challenges=[]))],
        NoSolver,
        "the CA offers nothing",
    ),
]


@pytest.mark.parametrize(
    ("edits", "refused", "words"),
    [pytest.param(e, r, w, id=name) for name, e, r, w in DEVIATIONS],
)
async def test_deviation_table(
    ca: FakeAcme,
    make_client: ClientFactory,
    solver: RecordingSolver,
    edits: list[Edit],
    refused: type[Exception] | None,
    words: str,
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        response = await ca.async_handler(request)
        route = ca._route(request.url.path)
        for edit in edits:
            response = edit(request, route, response)
        return response

    client = make_client(transport=httpx.MockTransport(handler))
    obtaining = client.obtain(
        [NAME], generate_private_key(KeyType.EC_P256), solvers={"http-01": solver}
    )
    if refused is None:
        issued = await obtaining
        assert issued.leaf_pem.startswith("-----BEGIN CERTIFICATE-----")
        return
    with pytest.raises(refused) as caught:
        await obtaining
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_a_failed_challenge_left_pending_with_its_error_fails_at_once(
    clock: FakeClock, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    # step-ca 0.19: the challenge stays "pending" with the error, the authorization "pending",
    # for ever (§8.2 says "invalid"). Waiting would wait for the whole deadline.
    ca = FakeAcme(clock=clock)  # reaches nothing: validation fails

    def pending(body: dict[str, Any]) -> None:
        if body.get("status") == "invalid":
            body["status"] = "pending"
        for challenge in body.get("challenges", []):
            if challenge.get("status") == "invalid":
                challenge["status"] = "pending"

    edits = [_json_edit("authz", pending), _json_edit("chall", pending)]

    async def handler(request: httpx.Request) -> httpx.Response:
        response = await ca.async_handler(request)
        for edit in edits:
            response = edit(request, ca._route(request.url.path), response)
        return response

    client = make_client(transport=httpx.MockTransport(handler))
    started = clock.now
    with pytest.raises(OrderFailed) as caught:
        await client.obtain(
            [NAME], generate_private_key(KeyType.EC_P256), solvers={"http-01": solver}
        )
    assert caught.value.problem is not None  # the CA's own reason
    assert clock.now - started < 30  # not the deadline


async def test_a_refused_replaces_hint_orders_again_without_it(
    clock: FakeClock, make_client: ClientFactory, solver: RecordingSolver
) -> None:
    ca = FakeAcme(clock=clock, renewal_info=True)
    ca.reach(solver)
    ca.fail_times(
        "new-order", 1, lambda: problem(409, "alreadyReplaced", "that one was replaced already")
    )
    client = make_client(transport=ca.transport())
    issued = await client.obtain(
        [NAME],
        generate_private_key(KeyType.EC_P256),
        solvers={"http-01": solver},
        replaces="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE",
    )
    assert issued.leaf_pem
    assert [payload.get("replaces") for payload in ca.new_order_payloads] == [None]
