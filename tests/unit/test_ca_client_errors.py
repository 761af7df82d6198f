"""Problem documents (RFC 8555 §6.7) become typed exceptions."""

from __future__ import annotations

import pytest

from ca_client import errors
from ca_client.errors import AcmeProblem


@pytest.mark.parametrize(
    ("short_type", "cls"),
    [
        ("badNonce", errors.BadNonce),
        ("rateLimited", errors.RateLimited),
        ("accountDoesNotExist", errors.AccountDoesNotExist),
        ("badCSR", errors.BadCSR),
        ("unauthorized", errors.Unauthorized),
        ("rejectedIdentifier", errors.RejectedIdentifier),
        ("serverInternal", errors.ServerInternal),
        ("malformed", errors.Malformed),
        ("externalAccountRequired", errors.ExternalAccountRequired),
        ("orderNotReady", errors.OrderNotReady),
        ("alreadyRevoked", errors.AlreadyRevoked),
        ("connection", errors.ConnectionProblem),
        ("incorrectResponse", errors.IncorrectResponse),
    ],
)
def test_acme_types_map_to_classes(short_type: str, cls: type[AcmeProblem]) -> None:
    problem = AcmeProblem.from_json(
        {"type": f"urn:ietf:params:acme:error:{short_type}", "detail": "why", "status": 400}
    )
    assert type(problem) is cls
    assert isinstance(problem, errors.AcmeError)
    assert problem.short_type == short_type
    assert problem.status == 400
    assert "why" in str(problem)


def test_unknown_and_foreign_types_stay_generic() -> None:
    unknown = AcmeProblem.from_json({"type": "urn:ietf:params:acme:error:somethingNew"})
    assert type(unknown) is AcmeProblem
    assert unknown.short_type == "somethingNew"
    # A non-ACME URN that happens to end like an ACME one must not be mistaken for it.
    foreign = AcmeProblem.from_json({"type": "https://example.test/badNonce"})
    assert type(foreign) is AcmeProblem


def test_subproblems_keep_their_identifier() -> None:
    # RFC 8555 §6.7.1, the example of a compound problem.
    problem = AcmeProblem.from_json(
        {
            "type": "urn:ietf:params:acme:error:malformed",
            "detail": "Some of the identifiers requested were rejected",
            "subproblems": [
                {
                    "type": "urn:ietf:params:acme:error:malformed",
                    "detail": 'Invalid underscore in DNS name "_example.org"',
                    "identifier": {"type": "dns", "value": "_example.org"},
                },
                {
                    "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                    "detail": 'This CA will not issue for "example.net"',
                    "identifier": {"type": "dns", "value": "example.net"},
                },
                "not a problem object",
            ],
        },
        status=403,
        url="https://ca/new-order",
    )
    assert isinstance(problem, errors.Malformed)
    assert len(problem.subproblems) == 2
    assert isinstance(problem.subproblems[1], errors.RejectedIdentifier)
    assert problem.subproblems[1].identifier == ("dns", "example.net")
    assert "example.net" in str(problem)
    assert problem.url == "https://ca/new-order"


def test_http_429_without_acme_type_is_rate_limited_with_retry_after() -> None:
    problem = AcmeProblem.from_json({"type": "about:blank"}, status=429, retry_after=30.0)
    assert isinstance(problem, errors.RateLimited)
    assert problem.retry_after == 30.0


def test_garbage_fields_do_not_crash() -> None:
    problem = AcmeProblem.from_json(
        {"type": 5, "detail": ["x"], "subproblems": "no", "identifier": "x", "status": "400"}
    )
    assert type(problem) is AcmeProblem
    assert problem.type == "about:blank"
    assert problem.subproblems == ()
    assert problem.status is None


def test_error_tree_shape() -> None:
    transport_errors: list[type[Exception]] = [
        errors.CAUnreachable,
        errors.TLSVerificationFailed,
        errors.NotACME,
        errors.MalformedResponse,
    ]
    for cls in transport_errors:
        assert issubclass(cls, errors.TransportError)
    assert issubclass(errors.ACMETimeout, TimeoutError)
    others: list[type[Exception]] = [
        errors.TransportError,
        errors.ACMETimeout,
        errors.AcmeProblem,
        errors.OrderFailed,
        errors.NoSolver,
        errors.CertificateMismatch,
    ]
    for other in others:
        assert issubclass(other, errors.AcmeError)


def test_order_failed_carries_the_problem() -> None:
    problem = AcmeProblem.from_json(
        {"type": "urn:ietf:params:acme:error:connection", "detail": "refused"}
    )
    failure = errors.OrderFailed("validation failed", url="https://ca/authz/1", problem=problem)
    assert failure.problem is problem
    assert "refused" in str(failure)
