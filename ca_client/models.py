"""RFC 8555 resources modelled as immutable values.

Each ``from_json`` takes the decoded body and the resource's URL, checks the fields the client
relies on and raises :class:`~ca_client.errors.MalformedResponse` when they are missing or of the
wrong type; fields the client does not use are ignored, as RFC 8555 §7.1 asks ("Clients MUST
ignore fields they do not understand" is implied by the registries being extensible).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ca_client.errors import AcmeProblem, MalformedResponse


@dataclass(frozen=True, slots=True, order=True)
class Identifier:
    """An ACME identifier (RFC 8555 §7.1.4): ``dns`` names, and ``ip`` addresses (RFC 8738)."""

    type: str
    value: str

    @classmethod
    def dns(cls, name: str) -> Identifier:
        return cls("dns", name)

    @classmethod
    def ip(cls, address: str) -> Identifier:
        return cls("ip", str(ipaddress.ip_address(address)))

    @classmethod
    def from_string(cls, value: str) -> Identifier:
        """An IP literal becomes an ``ip`` identifier, anything else a ``dns`` one."""
        try:
            return cls.ip(value)
        except ValueError:
            return cls.dns(value)

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}

    @classmethod
    def from_json(cls, data: object, *, url: str | None = None) -> Identifier:
        if isinstance(data, Mapping):
            kind, value = data.get("type"), data.get("value")
            if isinstance(kind, str) and isinstance(value, str):
                return cls(kind, value)
        raise MalformedResponse(f"invalid identifier {data!r}", url=url)

    def __str__(self) -> str:
        return self.value


# --- field helpers: each raises MalformedResponse naming the field and the URL ---------------


def _require_mapping(data: object, what: str, url: str | None) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise MalformedResponse(f"{what} is not a JSON object", url=url)
    return data


def _str(data: Mapping[str, Any], name: str, url: str | None) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedResponse(f"field {name!r} missing or not a string", url=url)
    return value


def _opt_str(data: Mapping[str, Any], name: str, url: str | None) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedResponse(f"field {name!r} is not a string", url=url)
    return value


def _str_list(data: Mapping[str, Any], name: str, url: str | None) -> tuple[str, ...]:
    value = data.get(name, [])
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MalformedResponse(f"field {name!r} is not a list of strings", url=url)
    return tuple(value)


def _problem(data: Mapping[str, Any], name: str, url: str | None) -> AcmeProblem | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MalformedResponse(f"field {name!r} is not a problem document", url=url)
    return AcmeProblem.from_json(value, url=url)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_timestamp(value: str) -> datetime:
    """RFC 3339 (as RFC 8555 uses it) to an aware datetime; Go's nanoseconds are truncated."""
    text = _FRACTION.sub(r"\1", value.strip())
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def serial_hex(serial: int) -> str:
    """A certificate serial as logs, errors and the sidecar's status print it: upper-case hex,
    no colons, padded to whole bytes (``66E6F329``), as HAProxy's ``show ssl cert`` shows it."""
    text = format(serial, "X")
    return "0" + text if len(text) % 2 else text


# --- resources -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Directory:
    """RFC 8555 §7.1.1, plus ``renewalInfo`` (RFC 9773 §4)."""

    url: str
    new_nonce: str
    new_account: str
    new_order: str
    revoke_cert: str
    key_change: str | None = None
    new_authz: str | None = None
    renewal_info: str | None = None
    terms_of_service: str | None = None
    external_account_required: bool = False
    profiles: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: object, *, url: str) -> Directory:
        body = _require_mapping(data, "directory", url)
        meta = body.get("meta")
        meta = meta if isinstance(meta, Mapping) else {}
        profiles = meta.get("profiles")
        return cls(
            url=url,
            new_nonce=_str(body, "newNonce", url),
            new_account=_str(body, "newAccount", url),
            new_order=_str(body, "newOrder", url),
            revoke_cert=_str(body, "revokeCert", url),
            key_change=_opt_str(body, "keyChange", url),
            new_authz=_opt_str(body, "newAuthz", url),
            renewal_info=_opt_str(body, "renewalInfo", url),
            terms_of_service=_opt_str(meta, "termsOfService", url),
            external_account_required=meta.get("externalAccountRequired") is True,
            profiles=tuple(profiles) if isinstance(profiles, Mapping) else (),
        )


@dataclass(frozen=True, slots=True)
class ExternalAccountBinding:
    """The CA-issued key id and MAC key that bind a new account (RFC 8555 §7.3.4).

    ``repr`` hides the key so that it never reaches a log line.
    """

    kid: str
    hmac_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Account:
    """RFC 8555 §7.1.2."""

    url: str
    status: str
    contact: tuple[str, ...] = ()
    orders: str | None = None

    @classmethod
    def from_json(cls, data: object, *, url: str) -> Account:
        body = _require_mapping(data, "account", url)
        return cls(
            url=url,
            status=_str(body, "status", url),
            contact=_str_list(body, "contact", url),
            orders=_opt_str(body, "orders", url),
        )


@dataclass(frozen=True, slots=True)
class Challenge:
    """RFC 8555 §7.1.5 and §8."""

    type: str
    url: str
    status: str
    token: str | None = None
    error: AcmeProblem | None = field(default=None, compare=False)
    validated: str | None = None

    @classmethod
    def from_json(cls, data: object, *, url: str | None = None) -> Challenge:
        body = _require_mapping(data, "challenge", url)
        challenge_url = _str(body, "url", url)
        return cls(
            type=_str(body, "type", challenge_url),
            url=challenge_url,
            status=_str(body, "status", challenge_url),
            token=_opt_str(body, "token", challenge_url),
            error=_problem(body, "error", challenge_url),
            validated=_opt_str(body, "validated", challenge_url),
        )


@dataclass(frozen=True, slots=True)
class Authorization:
    """RFC 8555 §7.1.4; for a wildcard the identifier has no ``*.`` and ``wildcard`` is set."""

    url: str
    identifier: Identifier
    status: str
    challenges: tuple[Challenge, ...]
    wildcard: bool = False
    expires: str | None = None

    @classmethod
    def from_json(cls, data: object, *, url: str) -> Authorization:
        body = _require_mapping(data, "authorization", url)
        raw_challenges = body.get("challenges", [])
        if not isinstance(raw_challenges, list):
            raise MalformedResponse("field 'challenges' is not a list", url=url)
        return cls(
            url=url,
            identifier=Identifier.from_json(body.get("identifier"), url=url),
            status=_str(body, "status", url),
            challenges=tuple(Challenge.from_json(item, url=url) for item in raw_challenges),
            wildcard=body.get("wildcard") is True,
            expires=_opt_str(body, "expires", url),
        )

    def challenge(self, challenge_type: str) -> Challenge | None:
        for challenge in self.challenges:
            if challenge.type == challenge_type:
                return challenge
        return None


@dataclass(frozen=True, slots=True)
class Order:
    """RFC 8555 §7.1.3, plus ``replaces`` (RFC 9773 §5)."""

    url: str
    status: str
    identifiers: tuple[Identifier, ...]
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None = None
    expires: str | None = None
    error: AcmeProblem | None = field(default=None, compare=False)
    replaces: str | None = None

    @classmethod
    def from_json(cls, data: object, *, url: str) -> Order:
        body = _require_mapping(data, "order", url)
        raw_identifiers = body.get("identifiers")
        if not isinstance(raw_identifiers, list):
            raise MalformedResponse("field 'identifiers' is not a list", url=url)
        return cls(
            url=url,
            status=_str(body, "status", url),
            identifiers=tuple(Identifier.from_json(item, url=url) for item in raw_identifiers),
            authorizations=_str_list(body, "authorizations", url),
            finalize=_str(body, "finalize", url),
            certificate=_opt_str(body, "certificate", url),
            expires=_opt_str(body, "expires", url),
            error=_problem(body, "error", url),
            replaces=_opt_str(body, "replaces", url),
        )


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """What ``obtain`` returns.

    ``pem``: leaf then intermediates, as the CA sent the chosen chain. ``leaf_pem`` and
    ``chain_pems`` are the same certificates split. ``alternates`` holds the other chains the
    CA offered (each a full PEM text like ``pem``), ``certificate_url`` where ``pem`` came from.
    """

    pem: str
    leaf_pem: str
    chain_pems: tuple[str, ...]
    order_url: str
    alternates: tuple[str, ...] = ()
    certificate_url: str = ""


@dataclass(frozen=True, slots=True)
class RenewalInfo:
    """RFC 9773 §4.2: the CA's suggested renewal window; ``retry_after`` in seconds (§4.3)."""

    start: datetime
    end: datetime
    explanation_url: str | None = None
    retry_after: float | None = None

    @classmethod
    def from_json(cls, data: object, *, url: str, retry_after: float | None) -> RenewalInfo:
        body = _require_mapping(data, "renewal info", url)
        window = _require_mapping(body.get("suggestedWindow"), "suggestedWindow", url)
        try:
            start = parse_timestamp(_str(window, "start", url))
            end = parse_timestamp(_str(window, "end", url))
        except ValueError as exc:
            raise MalformedResponse(f"suggestedWindow has a bad timestamp: {exc}", url=url) from exc
        # RFC 9773 §4.2: "If the end is less than or equal to the start, the client SHOULD treat
        # the window as invalid".
        if end <= start:
            raise MalformedResponse("suggestedWindow ends before it starts", url=url)
        return cls(
            start=start,
            end=end,
            explanation_url=_opt_str(body, "explanationURL", url),
            retry_after=retry_after,
        )


__all__ = [
    "Account",
    "Authorization",
    "Challenge",
    "Directory",
    "ExternalAccountBinding",
    "Identifier",
    "IssuedCertificate",
    "Order",
    "RenewalInfo",
    "parse_timestamp",
    "serial_hex",
]
