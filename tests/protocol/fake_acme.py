"""An in-process ACME CA behind ``httpx.MockTransport``, for faults real servers will not produce
on demand (429/503, badNonce storms, broken JSON, HTML pages, resets, wrong keys, database
resets, endless processing).

It is strict where the client's correctness is at stake: every POST's JWS is verified against
the account key (or the ``jwk`` for newAccount/revokeCert-by-key), nonces are single-use,
``kid`` vs ``jwk`` is enforced, POST-as-GET must have an empty payload, and finalize checks the
CSR's names against the order. Faults are injected with :meth:`FakeAcme.add_fault`.

Challenges are validated as a real CA does (RFC 8555 §8): the CA computes the key authorization
from the account's own key (its thumbprint computed here, not by the client's code), then looks
through the solver for the proof, and marks the challenge invalid when the proof is not served
or not the right one. What it can reach is declared with :meth:`FakeAcme.reach`:

- a real ``Http01Responder``: an HTTP GET of ``/.well-known/acme-challenge/<token>`` with the
  identifier as ``Host``, the body compared with the key authorization (§8.3);
- a real ``TlsAlpn01Responder``: a TLS handshake offering only ALPN ``acme-tls/1`` with the
  identifier as SNI, the certificate's SAN and critical acmeIdentifier extension checked
  (RFC 8737 §3);
- a recording solver (``present_calls``/``cleanup_calls``, as in the protocol conftest): what it
  presented and has not cleaned up yet is what it serves, for any challenge type;
- any object with ``async proofs(challenge_type, identifier, token) -> list[str]`` (e.g.
  :class:`Dns01Records` over a DNS hook's records).

A CA that can reach nothing marks every challenge invalid. The proof is looked for when the
client answers the challenge and again at each authorization poll until the authorization
settles, so a solver that cleans up before validation fails just as it would with Pebble.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import hashlib
import ipaddress
import itertools
import json
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

BASE = "https://ca.test"
DIRECTORY_URL = f"{BASE}/directory"

ACME_TLS_1 = "acme-tls/1"
# RFC 8737 §6.1: id-pe-acmeIdentifier
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# How long the CA waits for a solver to answer; real time, not the fake clock: the solver is a
# real server on loopback that answers in milliseconds.
FETCH_TIMEOUT = 10.0


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 §3, written out here so that the CA does not trust the client's own maths."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return _b64e(hashlib.sha256(canonical.encode()).digest())


def expected_proof(challenge_type: str, key_authorization: str) -> str:
    """What the CA must find for a challenge type, in the form `proofs` returns it."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    if challenge_type == "http-01":
        return key_authorization  # RFC 8555 §8.3: the body is the key authorization
    if challenge_type == "dns-01":
        return _b64e(digest)  # RFC 8555 §8.4: base64url(SHA-256(keyAuthorization))
    if challenge_type == "tls-alpn-01":
        return digest.hex()  # RFC 8737 §3: the acmeIdentifier holds SHA-256(keyAuthorization)
    raise ValueError(f"unknown challenge type {challenge_type!r}")


class Unreachable(Exception):
    """The CA could not talk to the solver at all (a ``connection`` problem)."""


class ProofSource(Protocol):
    """Something the CA can look at for a challenge's proof.

    ``proofs`` returns what is served for (challenge type, identifier, token), in the form of
    :func:`expected_proof` (empty when nothing is), or raises :class:`Unreachable`.
    """

    async def proofs(self, challenge_type: str, identifier: str, token: str) -> list[str]: ...


@dataclass
class RecordedProofs:
    """What a recording solver serves: what it presented and has not cleaned up yet."""

    solver: Any

    async def proofs(self, challenge_type: str, identifier: str, token: str) -> list[str]:
        if getattr(self.solver, "challenge_type", None) != challenge_type:
            return []
        live = Counter((i.value, t, k) for i, t, k in self.solver.present_calls) - Counter(
            (i.value, t, k) for i, t, k in self.solver.cleanup_calls
        )
        found = []
        for (value, presented_token, key_authorization), count in live.items():
            if count <= 0:
                continue
            if challenge_type == "dns-01":
                # A TXT record names no token, only _acme-challenge.<base name>.
                matches = value.removeprefix("*.") == identifier
            else:
                matches = value == identifier and presented_token == token
            if matches:
                found.append(expected_proof(challenge_type, key_authorization))
        return found


@dataclass
class Http01Fetch:
    """RFC 8555 §8.3: GET http://<identifier>/.well-known/acme-challenge/<token>, the name
    resolved to ``host:port`` (the responder's address)."""

    host: str
    port: int
    requests: list[tuple[str, str]] = field(default_factory=list)

    async def proofs(self, challenge_type: str, identifier: str, token: str) -> list[str]:
        if challenge_type != "http-01":
            return []
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{host}:{self.port}/.well-known/acme-challenge/{token}"
        self.requests.append((identifier, token))
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=FETCH_TIMEOUT) as http:
                response = await http.get(url, headers={"Host": identifier})
        except httpx.TransportError as error:
            raise Unreachable(f"fetching {url}: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            return []
        # Pebble and Boulder trim trailing whitespace; anything else must match exactly.
        return [response.text.rstrip()]


@dataclass
class TlsAlpn01Handshake:
    """RFC 8737 §3: a TLS handshake to ``host:port`` offering only ALPN ``acme-tls/1``, with
    the identifier (an IP's reverse-DNS name, RFC 8738 §6) as SNI."""

    host: str
    port: int

    async def proofs(self, challenge_type: str, identifier: str, token: str) -> list[str]:
        if challenge_type != "tls-alpn-01":
            return []
        try:
            address = ipaddress.ip_address(identifier)
        except ValueError:
            sni, wanted_san = identifier, [identifier]
            san_type: type[x509.DNSName] | type[x509.IPAddress] = x509.DNSName
        else:
            sni, wanted_san = address.reverse_pointer, [address]  # type: ignore[list-item]
            san_type = x509.IPAddress
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the certificate is self-signed by design
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols([ACME_TLS_1])
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                _reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=context, server_hostname=sni
                )
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            raise Unreachable(f"TLS to {self.host}:{self.port}: {error}") from None
        try:
            tls = writer.get_extra_info("ssl_object")
            alpn = tls.selected_alpn_protocol()
            der = tls.getpeercert(binary_form=True)
        finally:
            writer.close()
        if alpn != ACME_TLS_1 or der is None:
            return []
        certificate = x509.load_der_x509_certificate(der)
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        except x509.ExtensionNotFound:
            return []
        # "a subjectAltName extension containing the dNSName being validated and no other".
        if list(san.value.get_values_for_type(san_type)) != wanted_san or len(san.value) != 1:
            return []
        value = extension.value
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        # "The acmeIdentifier extension MUST be critical"; its value an OCTET STRING (SIZE (32)).
        if not extension.critical or raw[:2] != b"\x04\x20" or len(raw) != 34:
            return []
        return [raw[2:].hex()]


@dataclass
class Dns01Records:
    """RFC 8555 §8.4: the TXT values at ``_acme-challenge.<name>.``, from ``lookup(record)``
    (a DNS hook's published records, say)."""

    lookup: Callable[[str], Awaitable[list[str]]]

    async def proofs(self, challenge_type: str, identifier: str, token: str) -> list[str]:
        if challenge_type != "dns-01":
            return []
        return list(await self.lookup(f"_acme-challenge.{identifier.removeprefix('*.')}."))


def problem(
    status: int, short_type: str, detail: str = "", headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": f"urn:ietf:params:acme:error:{short_type}", "detail": detail},
        headers={"Content-Type": "application/problem+json", **(headers or {})},
    )


def _public_key_from_jwk(jwk: dict[str, str]) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if jwk["kty"] == "EC":
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[jwk["crv"]]
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(b64d(jwk["x"]), "big"), int.from_bytes(b64d(jwk["y"]), "big"), curve
        ).public_key()
    return rsa.RSAPublicNumbers(
        int.from_bytes(b64d(jwk["e"]), "big"), int.from_bytes(b64d(jwk["n"]), "big")
    ).public_key()


def _verify(jws: dict[str, str], key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> None:
    signing_input = f"{jws['protected']}.{jws['payload']}".encode()
    signature = b64d(jws["signature"])
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        digest: hashes.HashAlgorithm = hashes.SHA256() if size == 32 else hashes.SHA384()
        der = encode_dss_signature(
            int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        )
        key.verify(der, signing_input, ec.ECDSA(digest))
    else:
        key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())


@dataclass
class FakeOrder:
    id: int
    account: str
    identifiers: list[dict[str, str]]
    authz_ids: list[int]
    status: str = "pending"
    certificate_id: int | None = None
    replaces: str | None = None
    error: dict[str, Any] | None = None


@dataclass
class FakeAuthz:
    id: int
    identifier: dict[str, str]
    status: str = "pending"
    challenge_status: str = "pending"
    token: str = ""
    wildcard: bool = False
    responded: bool = False
    polls_after_response: int = 0
    account: str = ""
    responded_type: str | None = None
    #: the last look for each challenge type's proof: None when it was served, else the problem
    checked: dict[str, dict[str, str] | None] = field(default_factory=dict)
    error: dict[str, str] | None = None


Fault = Callable[[httpx.Request, str], httpx.Response | None]


@dataclass
class FakeAcme:
    """The fake CA's state. ``handler`` is what ``httpx.MockTransport`` calls."""

    renewal_info: bool = False
    challenge_types: tuple[str, ...] = ("http-01", "dns-01")
    #: authorizations stay pending for this many polls after the challenge response
    polls_until_valid: int = 0
    #: an order stays "processing" after finalize for this many polls (-1: forever)
    polls_until_issued: int = 0
    #: issue the certificate for this key instead of the CSR's (the "wrong key" fault)
    issue_for_key: ec.EllipticCurvePrivateKey | None = None
    alternate_roots: tuple[str, ...] = ()
    #: validate while answering the challenge POST, as step-ca does
    validate_on_response: bool = False
    eab_keys: dict[str, bytes] = field(default_factory=dict)
    date_offset: float = 0.0
    clock: Callable[[], float] = lambda: 0.0
    #: where the CA looks for challenge proofs (see `reach`); nothing: every challenge fails
    reachable: list[ProofSource] = field(default_factory=list)

    # Deviations from RFC 8555 seen in CAs other than step-ca and Pebble (docs/ACME-DEVIATIONS.md).
    #: newAccount's body for a key it knows already: "account" (§7.3.1), "{}" or "" (no body)
    existing_account_body: str = "account"
    #: an account fetched from its URL (POST-as-GET) has a ``status``
    account_fetch_has_status: bool = True
    #: a failed challenge carries an ``error`` document (§7.1.5 "SHOULD")
    challenge_error: bool = True
    #: refuse a newAccount without a contact with this problem type ("malformed", ...)
    contact_required: str | None = None

    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    account_urls_by_thumb: dict[str, str] = field(default_factory=dict)
    orders: dict[int, FakeOrder] = field(default_factory=dict)
    authzs: dict[int, FakeAuthz] = field(default_factory=dict)
    certificates: dict[int, list[str]] = field(default_factory=dict)
    revoked: list[tuple[int, int | None, str]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    new_account_payloads: list[dict[str, Any]] = field(default_factory=list)
    new_order_payloads: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    _nonces: set[str] = field(default_factory=set)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.root_name = "Fake Root"

    # --- what the CA can reach -----------------------------------------------------------

    def reach(self, *solvers: Any) -> None:
        """Let the CA validate through these solvers (see the module docstring)."""
        from ca_client.challenges.http01 import Http01Responder
        from ca_client.challenges.tlsalpn01 import TlsAlpn01Responder

        for solver in solvers:
            if isinstance(solver, Http01Responder):
                self.reachable.append(Http01Fetch(_connect_host(solver.host), solver.bound_port))
            elif isinstance(solver, TlsAlpn01Responder):
                self.reachable.append(
                    TlsAlpn01Handshake(_connect_host(solver.host), solver.bound_port)
                )
            elif hasattr(solver, "proofs"):
                self.reachable.append(solver)
            elif hasattr(solver, "present_calls") and hasattr(solver, "cleanup_calls"):
                self.reachable.append(RecordedProofs(solver))
            else:
                raise TypeError(f"the fake CA cannot reach a {type(solver).__name__}")

    # --- faults ---------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        """``fault(request, route)`` returns a response to send instead, or None to pass."""
        self.faults.append(fault)

    def fail_times(self, route: str, times: int, make: Callable[[], httpx.Response]) -> None:
        """The next ``times`` requests to ``route`` get ``make()`` (or ``make`` raises)."""
        remaining = [times]

        def fault(request: httpx.Request, request_route: str) -> httpx.Response | None:
            if request_route == route and remaining[0] > 0:
                remaining[0] -= 1
                return make()
            return None

        self.add_fault(fault)

    def reset_database(self) -> None:
        """What a CA restarted on an empty database looks like: nothing is known any more."""
        self.accounts.clear()
        self.account_urls_by_thumb.clear()
        self.orders.clear()
        self.authzs.clear()
        self._nonces.clear()

    @staticmethod
    def handler_b64(request: httpx.Request) -> bytes:
        """The decoded protected header of a JWS request (for faults that look at it)."""
        return b64d(json.loads(request.content)["protected"])

    # --- plumbing -------------------------------------------------------------------------

    def _nonce(self) -> str:
        nonce = f"nonce-{next(self._counter)}"
        self._nonces.add(nonce)
        return nonce

    def _headers(self) -> dict[str, str]:
        date = email.utils.formatdate(self.clock() + self.date_offset, usegmt=True)
        return {"Replay-Nonce": self._nonce(), "Date": date}

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        """What the transport calls: look for challenge proofs (network I/O), then `handler`."""
        route = self._route(request.url.path)
        if request.method == "POST" and route in ("chall", "authz"):
            await self._look_for_proof(route, request.url.path)
        return self.handler(request)

    def handler(self, request: httpx.Request) -> httpx.Response:
        route = self._route(request.url.path)
        self.requests.append((request.method, route))
        for fault in self.faults:
            injected = fault(request, route)
            if injected is not None:
                injected.headers.setdefault("Replay-Nonce", self._nonce())
                return injected
        response = self._dispatch(request, route)
        for name, value in self._headers().items():
            response.headers.setdefault(name, value)
        return response

    @staticmethod
    def _route(path: str) -> str:
        parts = path.strip("/").split("/")
        return parts[0] if parts and parts[0] else "/"

    def _dispatch(self, request: httpx.Request, route: str) -> httpx.Response:
        if route == "directory":
            directory: dict[str, Any] = {
                "newNonce": f"{BASE}/new-nonce",
                "newAccount": f"{BASE}/new-account",
                "newOrder": f"{BASE}/new-order",
                "revokeCert": f"{BASE}/revoke-cert",
                "keyChange": f"{BASE}/key-change",
                "meta": {"externalAccountRequired": bool(self.eab_keys)},
            }
            if self.renewal_info:
                directory["renewalInfo"] = f"{BASE}/renewal-info"
            return httpx.Response(200, json=directory)
        if route == "new-nonce":
            return httpx.Response(
                200 if request.method == "HEAD" else 204, headers={"Cache-Control": "no-store"}
            )
        if route == "renewal-info":
            return self._renewal_info(request)
        if request.method != "POST":
            return httpx.Response(405)
        if request.headers.get("content-type") != "application/jose+json":
            return problem(415, "malformed", "content type must be application/jose+json")
        jws = json.loads(request.content)
        protected = json.loads(b64d(jws["protected"]))
        nonce = protected.get("nonce")
        if nonce not in self._nonces:
            return problem(400, "badNonce", "unknown nonce")
        self._nonces.discard(nonce)
        if protected.get("url") != str(request.url):
            return problem(401, "unauthorized", "url mismatch")
        payload = json.loads(b64d(jws["payload"])) if jws["payload"] else None
        if route == "new-account":
            return self._new_account(jws, protected, payload)
        if route == "revoke-cert" and "jwk" in protected:
            key = _public_key_from_jwk(protected["jwk"])
            _verify(jws, key)
            return self._revoke(payload, by="certificate key")
        if "jwk" in protected or "kid" not in protected:
            return problem(400, "malformed", "kid required")
        account_url = protected["kid"]
        account = self.accounts.get(account_url)
        if account is None:
            return problem(400, "accountDoesNotExist", f"no account {account_url}")
        _verify(jws, account["key"])
        return self._account_route(route, request, account_url, payload)

    # --- resources ------------------------------------------------------------------------

    def _new_account(
        self, jws: dict[str, str], protected: dict[str, Any], payload: dict[str, Any] | None
    ) -> httpx.Response:
        if "jwk" not in protected or "kid" in protected:
            return problem(400, "malformed", "newAccount needs jwk")
        key = _public_key_from_jwk(protected["jwk"])
        _verify(jws, key)
        assert payload is not None
        self.new_account_payloads.append(payload)
        thumb = json.dumps(protected["jwk"], sort_keys=True)
        existing = self.account_urls_by_thumb.get(thumb)
        if existing is not None:
            headers = {"Location": existing}
            if self.existing_account_body == "account":
                return httpx.Response(200, json=self._account_json(existing), headers=headers)
            content = self.existing_account_body.encode()
            headers["Content-Type"] = "application/json"
            return httpx.Response(200, content=content, headers=headers)
        if payload.get("onlyReturnExisting"):
            return problem(400, "accountDoesNotExist", "no account for this key")
        if self.contact_required and not payload.get("contact"):
            return problem(400, self.contact_required, "a contact address is required")
        if self.eab_keys:
            binding = payload.get("externalAccountBinding")
            if not binding:
                return problem(400, "externalAccountRequired", "EAB needed")
            eab_header = json.loads(b64d(binding["protected"]))
            mac = hmac.HMAC(self.eab_keys[eab_header["kid"]], hashes.SHA256())
            mac.update(f"{binding['protected']}.{binding['payload']}".encode())
            mac.verify(b64d(binding["signature"]))
            assert json.loads(b64d(binding["payload"])) == protected["jwk"]
        url = f"{BASE}/acct/{next(self._counter)}"
        self.accounts[url] = {
            "key": key,
            "jwk": protected["jwk"],
            "contact": payload.get("contact", []),
            "status": "valid",
        }
        self.account_urls_by_thumb[thumb] = url
        return httpx.Response(201, json=self._account_json(url), headers={"Location": url})

    def _account_json(self, url: str) -> dict[str, Any]:
        account = self.accounts[url]
        return {
            "status": account["status"],
            "contact": account["contact"],
            "orders": f"{url}/orders",
        }

    def _account_route(
        self, route: str, request: httpx.Request, account_url: str, payload: dict[str, Any] | None
    ) -> httpx.Response:
        path = request.url.path.strip("/").split("/")
        if route == "acct":
            if payload is not None:
                if "contact" in payload:
                    self.accounts[account_url]["contact"] = payload["contact"]
                if payload.get("status") == "deactivated":
                    self.accounts[account_url]["status"] = "deactivated"
            body = self._account_json(account_url)
            if payload is None and not self.account_fetch_has_status:
                del body["status"]
            return httpx.Response(200, json=body)
        if route == "new-order":
            assert payload is not None
            return self._new_order(account_url, payload)
        if route == "order":
            if payload is not None:
                return problem(400, "malformed", "POST-as-GET must have an empty payload")
            return self._order_response(int(path[1]), poll=True)
        if route == "authz":
            return self._authz_response(int(path[1]), poll=payload is None)
        if route == "chall":
            return self._respond_challenge(int(path[1]), payload)
        if route == "finalize":
            assert payload is not None
            return self._finalize(int(path[1]), payload)
        if route == "cert":
            if payload is not None:
                return problem(400, "malformed", "POST-as-GET must have an empty payload")
            return self._certificate(int(path[1]), int(path[2]) if len(path) > 2 else 0)
        if route == "revoke-cert":
            return self._revoke(payload, by=account_url)
        return httpx.Response(404)

    def _new_order(self, account_url: str, payload: dict[str, Any]) -> httpx.Response:
        self.new_order_payloads.append(payload)
        authz_ids = []
        for identifier in payload["identifiers"]:
            authz_id = next(self._counter)
            wildcard = identifier["value"].startswith("*.")
            value = identifier["value"].removeprefix("*.")
            self.authzs[authz_id] = FakeAuthz(
                authz_id,
                {"type": identifier["type"], "value": value},
                token=f"token{authz_id}",
                wildcard=wildcard,
                account=account_url,
            )
            authz_ids.append(authz_id)
        order = FakeOrder(
            next(self._counter),
            account_url,
            payload["identifiers"],
            authz_ids,
            replaces=payload.get("replaces"),
        )
        self.orders[order.id] = order
        return self._order_response(order.id, status=201)

    def _order_json(self, order: FakeOrder) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": order.status,
            "identifiers": order.identifiers,
            "authorizations": [f"{BASE}/authz/{i}" for i in order.authz_ids],
            "finalize": f"{BASE}/finalize/{order.id}",
        }
        if order.certificate_id is not None and order.status == "valid":
            body["certificate"] = f"{BASE}/cert/{order.certificate_id}"
        if order.error:
            body["error"] = order.error
        return body

    def _order_response(
        self, order_id: int, *, status: int = 200, poll: bool = False
    ) -> httpx.Response:
        order = self.orders.get(order_id)
        if order is None:
            return problem(404, "malformed", "no such order")
        if order.status == "pending":
            states = [self.authzs[i].status for i in order.authz_ids]
            if all(state == "valid" for state in states):
                order.status = "ready"
            elif "invalid" in states:
                order.status = "invalid"
        if order.status == "processing" and poll:
            if self.polls_until_issued == 0:
                order.status = "valid"
            elif self.polls_until_issued > 0:
                self.polls_until_issued -= 1
        return httpx.Response(
            status, json=self._order_json(order), headers={"Location": f"{BASE}/order/{order.id}"}
        )

    def _types(self, authz: FakeAuthz) -> tuple[str, ...]:
        return ("dns-01",) if authz.wildcard else self.challenge_types

    def _authz_json(self, authz: FakeAuthz) -> dict[str, Any]:
        challenges = []
        for index, challenge_type in enumerate(self._types(authz)):
            challenge: dict[str, Any] = {
                "type": challenge_type,
                "url": f"{BASE}/chall/{authz.id * 10 + index}",
                "status": authz.challenge_status,
                "token": authz.token,
            }
            if authz.challenge_status == "invalid" and self.challenge_error:
                challenge["error"] = authz.error or {
                    "type": "urn:ietf:params:acme:error:connection",
                    "detail": "refused",
                }
            challenges.append(challenge)
        body: dict[str, Any] = {
            "identifier": authz.identifier,
            "status": authz.status,
            "challenges": challenges,
        }
        if authz.wildcard:
            body["wildcard"] = True
        return body

    def _authz_response(self, authz_id: int, *, poll: bool) -> httpx.Response:
        authz = self.authzs.get(authz_id)
        if authz is None:
            return problem(404, "malformed", "no such authorization")
        if poll and authz.responded and authz.status == "pending":
            if authz.polls_after_response >= self.polls_until_valid:
                self._settle(authz)
            authz.polls_after_response += 1
        return httpx.Response(200, json=self._authz_json(authz))

    def _respond_challenge(
        self, challenge_id: int, payload: dict[str, Any] | None
    ) -> httpx.Response:
        if payload != {}:
            return problem(400, "malformed", "challenge response must be {}")
        authz = self.authzs[challenge_id // 10]
        if authz.status == "pending":
            authz.responded = True
            authz.responded_type = self._types(authz)[challenge_id % 10]
            authz.challenge_status = "processing"
            if self.validate_on_response:
                self._settle(authz)
        body = self._authz_json(authz)["challenges"][challenge_id % 10]
        return httpx.Response(
            200, json=body, headers={"Link": f'<{BASE}/authz/{authz.id}>;rel="up"'}
        )

    # --- validation -----------------------------------------------------------------------

    async def _look_for_proof(self, route: str, path: str) -> None:
        """Before a challenge answer or an authorization poll: look through the solver now,
        as the CA's validation would at this moment."""
        parts = path.strip("/").split("/")
        try:
            number = int(parts[1])
        except (IndexError, ValueError):
            return
        if route == "chall":
            authz = self.authzs.get(number // 10)
            if authz is None or authz.status != "pending":
                return
            types = self._types(authz)
            if number % 10 >= len(types):
                return
            challenge_type = types[number % 10]
        else:
            authz = self.authzs.get(number)
            if authz is None or not authz.responded or authz.status != "pending":
                return
            assert authz.responded_type is not None
            challenge_type = authz.responded_type
        authz.checked[challenge_type] = await self._validate(authz, challenge_type)

    async def _validate(self, authz: FakeAuthz, challenge_type: str) -> dict[str, str] | None:
        """None when the solver serves the right proof, else the problem document."""
        account = self.accounts.get(authz.account)
        if account is None:
            return _problem_json("unauthorized", "the order's account is gone")
        key_authorization = f"{authz.token}.{jwk_thumbprint(account['jwk'])}"
        expected = expected_proof(challenge_type, key_authorization)
        identifier = authz.identifier["value"]
        found: list[str] = []
        unreachable: list[str] = []
        for source in self.reachable:
            try:
                found += await source.proofs(challenge_type, identifier, authz.token)
            except Unreachable as error:
                unreachable.append(str(error))
        if expected in found:
            return None
        if found:
            return _problem_json(
                "incorrectResponse",
                f"{challenge_type} for {identifier}: expected {expected!r}, found {found!r}",
            )
        if unreachable or not self.reachable:
            detail = "; ".join(unreachable) or "the CA reaches no solver (FakeAcme.reach)"
            return _problem_json("connection", f"{challenge_type} for {identifier}: {detail}")
        return _problem_json(
            "unauthorized", f"{challenge_type} for {identifier}: no proof served for {authz.token}"
        )

    def _settle(self, authz: FakeAuthz) -> None:
        """The validation's outcome: the last look at the proof decides."""
        assert authz.responded_type is not None
        # Never looked (the handler was called without `async_handler`): nothing was seen.
        problem = authz.checked.get(
            authz.responded_type, _problem_json("connection", "the proof was never fetched")
        )
        if problem is None:
            authz.status = authz.challenge_status = "valid"
        else:
            authz.status = authz.challenge_status = "invalid"
            authz.error = problem

    def _finalize(self, order_id: int, payload: dict[str, Any]) -> httpx.Response:
        order = self.orders[order_id]
        self._order_response(order_id)  # refresh pending -> ready
        if order.status != "ready":
            return problem(403, "orderNotReady", f"order is {order.status}")
        csr = x509.load_der_x509_csr(b64d(payload["csr"]))
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = {("dns", n) for n in san.get_values_for_type(x509.DNSName)}
        names |= {("ip", str(a)) for a in san.get_values_for_type(x509.IPAddress)}
        wanted = {(i["type"], i["value"]) for i in order.identifiers}
        if names != wanted:
            return problem(400, "badCSR", "CSR names differ from the order")
        public_key = (
            self.issue_for_key.public_key() if self.issue_for_key is not None else csr.public_key()
        )
        cert_id = next(self._counter)
        leaf = self._issue(public_key, san)
        chains = [leaf + self._intermediate(self.root_name)]
        chains.extend(leaf + self._intermediate(root) for root in self.alternate_roots)
        self.certificates[cert_id] = chains
        order.certificate_id = cert_id
        order.status = "processing"
        return httpx.Response(
            200, json=self._order_json(order), headers={"Location": f"{BASE}/order/{order.id}"}
        )

    def _issue(self, public_key: Any, san: x509.SubjectAlternativeName) -> str:
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake Int")]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(san, critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def _intermediate(self, root_name: str) -> str:
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake Int")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, root_name)]))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(hours=1))
            .sign(self.ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def _certificate(self, cert_id: int, index: int) -> httpx.Response:
        chains = self.certificates[cert_id]
        links = [
            f'<{BASE}/cert/{cert_id}/{i}>;rel="alternate"' for i in range(len(chains)) if i != index
        ]
        headers = {"Content-Type": "application/pem-certificate-chain"}
        if links:
            headers["Link"] = ", ".join(links)
        return httpx.Response(200, content=chains[index].encode(), headers=headers)

    def _revoke(self, payload: dict[str, Any] | None, *, by: str) -> httpx.Response:
        assert payload is not None
        cert = x509.load_der_x509_certificate(b64d(payload["certificate"]))
        if any(serial == cert.serial_number for serial, _, _ in self.revoked):
            return problem(400, "alreadyRevoked", "already revoked")
        self.revoked.append((cert.serial_number, payload.get("reason"), by))
        return httpx.Response(200)

    def _renewal_info(self, request: httpx.Request) -> httpx.Response:
        if request.method != "GET":
            return httpx.Response(405)
        cert_id = request.url.path.rsplit("/", 1)[1]
        key_id, serial = cert_id.split(".")
        assert b64d(key_id) and b64d(serial)
        return httpx.Response(
            200,
            json={
                "suggestedWindow": {"start": "2026-01-02T04:00:00Z", "end": "2026-01-03T04:00:00Z"},
                "explanationURL": f"{BASE}/docs/{cert_id}",
            },
            headers={"Retry-After": "21600"},
        )

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.async_handler)


def _problem_json(short_type: str, detail: str) -> dict[str, str]:
    return {"type": f"urn:ietf:params:acme:error:{short_type}", "detail": detail}


def _connect_host(host: str) -> str:
    """Where to connect to reach a responder bound to ``host`` ("" and 0.0.0.0: loopback)."""
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0"):
        return "127.0.0.1"
    return "::1" if bare == "::" else bare
