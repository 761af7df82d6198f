"""An in-process ACME CA behind ``httpx.MockTransport``, for faults real servers will not produce
on demand (429/503, badNonce storms, broken JSON, HTML pages, resets, wrong keys, database
resets, endless processing).

It is strict where the client's correctness is at stake: every POST's JWS is verified against
the account key (or the ``jwk`` for newAccount/revokeCert-by-key), nonces are single-use,
``kid`` vs ``jwk`` is enforced, POST-as-GET must have an empty payload, and finalize checks the
CSR's names against the order. Faults are injected with :meth:`FakeAcme.add_fault`.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

BASE = "https://ca.test"
DIRECTORY_URL = f"{BASE}/directory"


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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
            return httpx.Response(
                200, json=self._account_json(existing), headers={"Location": existing}
            )
        if payload.get("onlyReturnExisting"):
            return problem(400, "accountDoesNotExist", "no account for this key")
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
        self.accounts[url] = {"key": key, "contact": payload.get("contact", []), "status": "valid"}
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
            return httpx.Response(200, json=self._account_json(account_url))
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

    def _authz_json(self, authz: FakeAuthz) -> dict[str, Any]:
        types = ("dns-01",) if authz.wildcard else self.challenge_types
        challenges = []
        for index, challenge_type in enumerate(types):
            challenge: dict[str, Any] = {
                "type": challenge_type,
                "url": f"{BASE}/chall/{authz.id * 10 + index}",
                "status": authz.challenge_status,
                "token": authz.token,
            }
            if authz.challenge_status == "invalid":
                challenge["error"] = {
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
                authz.status = "valid"
                authz.challenge_status = "valid"
            authz.polls_after_response += 1
        return httpx.Response(200, json=self._authz_json(authz))

    def _respond_challenge(
        self, challenge_id: int, payload: dict[str, Any] | None
    ) -> httpx.Response:
        if payload != {}:
            return problem(400, "malformed", "challenge response must be {}")
        authz = self.authzs[challenge_id // 10]
        authz.responded = True
        authz.challenge_status = "processing"
        if self.validate_on_response:
            authz.status = authz.challenge_status = "valid"
        body = self._authz_json(authz)["challenges"][challenge_id % 10]
        return httpx.Response(
            200, json=body, headers={"Link": f'<{BASE}/authz/{authz.id}>;rel="up"'}
        )

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
        return httpx.MockTransport(self.handler)
