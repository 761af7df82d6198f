"""A CA that requires a contact: the refusal is one line naming ``--email``.

Some CAs refuse an account without a contact address, with ``malformed`` or ``invalidContact``
(RFC 8555 §7.3: "the server MAY require a contact"); the sidecar runs without ``--email`` by
default, so the CA's words alone do not tell the operator what to change.
"""

from __future__ import annotations

import pytest

from tests.protocol import test_manager_outcomes as managed
from tests.protocol.fake_acme import FakeAcme, problem
from tests.protocol.test_manager_outcomes import MakeManager

pytestmark = pytest.mark.anyio

# The sidecar-level fixtures (a manager on the fake CA, with its own clock).
clock = managed.clock
ca = managed.ca
make_manager = managed.make_manager


# --- a CA that requires a contact -------------------------------------------------------------


@pytest.mark.parametrize("problem_type", ["malformed", "invalidContact"])
async def test_a_ca_that_requires_a_contact_is_named_as_the_email_setting(
    make_manager: MakeManager,
    ca: FakeAcme,
    problem_type: str,
) -> None:
    ca.contact_required = problem_type
    manager = make_manager()
    (spec,) = manager.settings.certificates
    outcome = await manager.ensure(spec)
    assert outcome.action == "failed"
    error = outcome.error or ""
    assert "\n" not in error
    assert "a contact address is required" in error  # the CA's own words
    assert "--email" in error and "CERT_SIDECAR_EMAIL" in error, error
    with_email = make_manager("--email", "ops@m.example")
    assert (await with_email.ensure(spec)).action == "issued"


async def test_a_refused_contact_address_names_the_email_setting(
    make_manager: MakeManager,
    ca: FakeAcme,
) -> None:
    ca.fail_times(
        "new-account",
        1,
        lambda: problem(400, "invalidContact", "mailto: addresses at m.example are refused"),
    )
    manager = make_manager("--email", "ops@m.example")
    (spec,) = manager.settings.certificates
    outcome = await manager.ensure(spec)
    assert outcome.action == "failed"
    assert "--email" in (outcome.error or ""), outcome.error


async def test_a_malformed_answer_with_a_contact_given_gets_no_contact_hint(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    ca.fail_times("new-account", 1, lambda: problem(400, "malformed", "termsOfServiceAgreed"))
    manager = make_manager("--email", "ops@m.example")
    (spec,) = manager.settings.certificates
    outcome = await manager.ensure(spec)
    assert outcome.error == "malformed: termsOfServiceAgreed (HTTP 400)"
