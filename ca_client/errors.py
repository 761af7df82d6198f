"""The one error tree of ``ca_client``.

Every failure a caller can see is an :class:`AcmeError`; no httpx, ssl or json exception leaves
the package (``transport.py`` is the single place that converts them)::

    AcmeError
    ├── TransportError                 the CA could not be talked to as an ACME server
    │   ├── CAUnreachable              connect/read failure, reset, 5xx that is not a problem
    │   ├── TLSVerificationFailed      the CA's certificate is not trusted by the given context
    │   ├── NotACME                    an answer that is not ACME (HTML page, no directory, ...)
    │   ├── MalformedResponse          ACME-looking answer that does not parse or lacks fields
    │   └── TransportClosed            the client was closed while a request still needed it
    ├── ACMETimeout                    the operation's deadline passed (also a TimeoutError)
    ├── AcmeProblem                    the CA answered with an RFC 7807 / RFC 8555 §6.7 problem
    │   ├── BadNonce                   ...:badNonce (retried transparently, §6.5)
    │   ├── RateLimited                ...:rateLimited, or HTTP 429; ``retry_after`` seconds
    │   ├── AccountDoesNotExist        ...:accountDoesNotExist (re-registered once, automatically)
    │   ├── BadCSR, Unauthorized, RejectedIdentifier, ServerInternal, Malformed,
    │   │   UnsupportedIdentifier, ExternalAccountRequired, OrderNotReady, AlreadyRevoked,
    │   │   BadRevocationReason, IncorrectResponse, ConnectionProblem, DNSProblem,
    │   │   TLSProblem, CAAProblem, BadPublicKey, BadSignatureAlgorithm, InvalidContact,
    │   │   UnsupportedContact, UserActionRequired, CompoundProblem
    │   └── (any other type stays a plain AcmeProblem with its ``type`` URN)
    ├── OrderFailed                    an order or authorization became ``invalid``;
    │                                  ``problem`` holds the CA's reason (may be None)
    ├── NoSolver                       no given solver can answer any challenge offered
    └── CertificateMismatch            the issued certificate does not match the CSR's key or names

Messages carry what an operator needs (URL, status, the CA's ``detail``) and never key material.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"


class AcmeError(Exception):
    """Base of every error raised by ``ca_client``."""


class TransportError(AcmeError):
    """The CA could not be talked to as an ACME server."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class CAUnreachable(TransportError):
    """Connection refused, reset, DNS failure, read error, or a 5xx page that is not a problem.

    ``connect_failed`` is true when no connection was made at all, so the request was never
    sent and repeating it is safe whatever it was.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        connect_failed: bool = False,
    ) -> None:
        super().__init__(message, url=url, status=status)
        self.connect_failed = connect_failed


class TLSVerificationFailed(TransportError):
    """The CA's TLS certificate does not verify against the trust given to the client."""


class NotACME(TransportError):
    """The server answered, but not as an ACME server does (HTML page, no directory fields)."""


class MalformedResponse(TransportError):
    """An answer that should be ACME JSON/PEM but does not parse or lacks required fields."""


class TransportClosed(TransportError):
    """The client's connection pool was closed (``aclose``) while a request still needed it.

    A shut-down or replaced client (a changed CA bundle builds a new one) fails the requests
    still in flight with this, not with a connection error: retrying on the same client
    cannot help.
    """


class ACMETimeout(AcmeError, TimeoutError):
    """The overall deadline of an operation passed before the CA finished."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class AcmeProblem(AcmeError):
    """An RFC 7807 problem document returned by the CA (RFC 8555 §6.7).

    "When the server responds with an error status, it SHOULD provide additional information
    using a problem document [RFC7807]." Subproblems (§6.7.1) are kept as ``AcmeProblem`` values
    each with the ``identifier`` they are about.
    """

    #: the short type this class stands for (the part after ``urn:ietf:params:acme:error:``)
    acme_type: str | None = None

    def __init__(
        self,
        type: str = "about:blank",
        detail: str = "",
        *,
        status: int | None = None,
        url: str | None = None,
        identifier: tuple[str, str] | None = None,
        subproblems: Sequence[AcmeProblem] = (),
        instance: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.type = type
        self.detail = detail
        self.status = status
        self.url = url
        self.identifier = identifier
        self.subproblems = tuple(subproblems)
        self.instance = instance
        self.retry_after = retry_after
        super().__init__(self._message())

    @property
    def short_type(self) -> str:
        """``badNonce`` for ``urn:ietf:params:acme:error:badNonce``; the full type otherwise."""
        return self.type.removeprefix(ACME_ERROR_PREFIX)

    def _message(self) -> str:
        text = self.short_type
        if self.identifier is not None:
            text += f" for {self.identifier[0]}:{self.identifier[1]}"
        if self.detail:
            text += f": {self.detail}"
        if self.status is not None:
            text += f" (HTTP {self.status})"
        for sub in self.subproblems:
            text += f"; {sub}"
        return text

    @classmethod
    def from_json(
        cls,
        document: Mapping[str, Any],
        *,
        status: int | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> AcmeProblem:
        """Build the most specific subclass for a problem document; tolerant of odd fields."""
        type_ = document.get("type")
        if not isinstance(type_, str) or not type_:
            type_ = "about:blank"
        detail = document.get("detail")
        detail = detail if isinstance(detail, str) else ""
        identifier = _parse_identifier(document.get("identifier"))
        subproblems: list[AcmeProblem] = []
        raw_subproblems = document.get("subproblems")
        if isinstance(raw_subproblems, list):
            for raw in raw_subproblems:
                if isinstance(raw, Mapping):
                    subproblems.append(AcmeProblem.from_json(raw))
        instance = document.get("instance")
        status_field = document.get("status")
        if status is None and isinstance(status_field, int):
            status = status_field
        problem_class = _PROBLEM_CLASSES.get(type_.removeprefix(ACME_ERROR_PREFIX), AcmeProblem)
        if not type_.startswith(ACME_ERROR_PREFIX):
            problem_class = AcmeProblem
        if status == 429 and problem_class is AcmeProblem:
            problem_class = RateLimited
        return problem_class(
            type_,
            detail,
            status=status,
            url=url,
            identifier=identifier,
            subproblems=subproblems,
            instance=instance if isinstance(instance, str) else None,
            retry_after=retry_after,
        )


def _parse_identifier(raw: object) -> tuple[str, str] | None:
    if isinstance(raw, Mapping):
        kind, value = raw.get("type"), raw.get("value")
        if isinstance(kind, str) and isinstance(value, str):
            return (kind, value)
    return None


class BadNonce(AcmeProblem):
    acme_type = "badNonce"


class RateLimited(AcmeProblem):
    """Too many requests; ``retry_after`` (seconds) says when the CA suggests trying again."""

    acme_type = "rateLimited"


class AccountDoesNotExist(AcmeProblem):
    acme_type = "accountDoesNotExist"


class BadCSR(AcmeProblem):
    acme_type = "badCSR"


class Unauthorized(AcmeProblem):
    acme_type = "unauthorized"


class RejectedIdentifier(AcmeProblem):
    acme_type = "rejectedIdentifier"


class UnsupportedIdentifier(AcmeProblem):
    acme_type = "unsupportedIdentifier"


class ServerInternal(AcmeProblem):
    acme_type = "serverInternal"


class Malformed(AcmeProblem):
    acme_type = "malformed"


class ExternalAccountRequired(AcmeProblem):
    acme_type = "externalAccountRequired"


class OrderNotReady(AcmeProblem):
    acme_type = "orderNotReady"


class AlreadyRevoked(AcmeProblem):
    acme_type = "alreadyRevoked"


class BadRevocationReason(AcmeProblem):
    acme_type = "badRevocationReason"


class IncorrectResponse(AcmeProblem):
    acme_type = "incorrectResponse"


class ConnectionProblem(AcmeProblem):
    """The CA could not connect to the solver (``...:connection``), not our own transport."""

    acme_type = "connection"


class DNSProblem(AcmeProblem):
    acme_type = "dns"


class TLSProblem(AcmeProblem):
    acme_type = "tls"


class CAAProblem(AcmeProblem):
    acme_type = "caa"


class BadPublicKey(AcmeProblem):
    acme_type = "badPublicKey"


class BadSignatureAlgorithm(AcmeProblem):
    acme_type = "badSignatureAlgorithm"


class InvalidContact(AcmeProblem):
    acme_type = "invalidContact"


class UnsupportedContact(AcmeProblem):
    acme_type = "unsupportedContact"


class UserActionRequired(AcmeProblem):
    acme_type = "userActionRequired"


class CompoundProblem(AcmeProblem):
    acme_type = "compound"


_PROBLEM_CLASSES: dict[str, type[AcmeProblem]] = {
    cls.acme_type: cls
    for cls in (
        BadNonce,
        RateLimited,
        AccountDoesNotExist,
        BadCSR,
        Unauthorized,
        RejectedIdentifier,
        UnsupportedIdentifier,
        ServerInternal,
        Malformed,
        ExternalAccountRequired,
        OrderNotReady,
        AlreadyRevoked,
        BadRevocationReason,
        IncorrectResponse,
        ConnectionProblem,
        DNSProblem,
        TLSProblem,
        CAAProblem,
        BadPublicKey,
        BadSignatureAlgorithm,
        InvalidContact,
        UnsupportedContact,
        UserActionRequired,
        CompoundProblem,
    )
    if cls.acme_type is not None
}


class OrderFailed(AcmeError):
    """An order or one of its authorizations became ``invalid`` (RFC 8555 §7.1.6).

    ``problem`` is the CA's reason (the order's ``error``, or the failed challenge's ``error``).
    """

    def __init__(
        self, message: str, *, url: str | None = None, problem: AcmeProblem | None = None
    ) -> None:
        if problem is not None:
            message = f"{message}: {problem}"
        super().__init__(message)
        self.url = url
        self.problem = problem


class NoSolver(AcmeError):
    """None of the given solvers can answer any challenge the CA offers for an identifier."""

    def __init__(self, identifier: str, offered: Sequence[str], available: Sequence[str]) -> None:
        super().__init__(
            f"no solver for {identifier}: the CA offers {', '.join(offered) or 'nothing'}, "
            f"solvers exist for {', '.join(available) or 'nothing'}"
        )
        self.identifier = identifier
        self.offered = tuple(offered)
        self.available = tuple(available)


class CertificateMismatch(AcmeError):
    """The issued certificate's public key or names do not match what was requested."""


__all__ = [
    "ACME_ERROR_PREFIX",
    "ACMETimeout",
    "AccountDoesNotExist",
    "AcmeError",
    "AcmeProblem",
    "AlreadyRevoked",
    "BadCSR",
    "BadNonce",
    "BadPublicKey",
    "BadRevocationReason",
    "BadSignatureAlgorithm",
    "CAAProblem",
    "CAUnreachable",
    "CertificateMismatch",
    "CompoundProblem",
    "ConnectionProblem",
    "DNSProblem",
    "ExternalAccountRequired",
    "IncorrectResponse",
    "InvalidContact",
    "Malformed",
    "MalformedResponse",
    "NoSolver",
    "NotACME",
    "OrderFailed",
    "OrderNotReady",
    "RateLimited",
    "RejectedIdentifier",
    "ServerInternal",
    "TLSProblem",
    "TLSVerificationFailed",
    "TransportClosed",
    "TransportError",
    "Unauthorized",
    "UnsupportedContact",
    "UnsupportedIdentifier",
    "UserActionRequired",
]
