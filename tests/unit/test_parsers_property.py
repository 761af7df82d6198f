"""Property tests (Hypothesis) for every parser of outside input owned by this module set.

The property is the same everywhere: arbitrary input either parses or raises the module's own
error (``ValueError`` subclasses, ``PemError``, ``MalformedResponse``, ``ConfigError``), never
anything else, and never hangs (each test runs under pytest-timeout). Inputs are drawn both
fully at random and shaped like the real thing, so the parsers' inner branches are reached.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ca_client.errors import AcmeError, MalformedResponse
from ca_client.models import Account, Authorization, Challenge, Directory, Order, RenewalInfo
from ca_client.transport import AcmeResponse, AcmeTransport, parse_link_headers
from sidecar import pem
from sidecar.cli import build_parser
from sidecar.config import OPTIONS, ConfigError, load_settings
from sidecar.control import ControlProtocolError, _decode, _option_error, _validate_answer
from sidecar.haproxy import (
    normalize_serial,
    parse_haproxy_address,
    parse_show_proc,
    parse_show_ssl_cert,
    parse_show_ssl_cert_list,
)

pytestmark = pytest.mark.timeout(300)

PROPERTY = settings(
    max_examples=120,
    deadline=None,  # a shared 2-core machine; hangs are caught by the timeout above
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # nothing written into the work tree; failures print their example
)

# --- HAProxy answers -------------------------------------------------------------------------

_KEYS = [
    "Filename",
    "Status",
    "Serial",
    "notBefore",
    "notAfter",
    "Subject",
    "Issuer",
    "Subject Alternative Name",
    "Algorithm",
    "SHA1 FingerPrint",
]
_show_line = st.one_of(
    st.tuples(st.sampled_from(_KEYS), st.text(max_size=40)).map(lambda kv: f"{kv[0]}: {kv[1]}"),
    st.text(max_size=60),
)
show_answers = st.one_of(st.text(max_size=2000), st.lists(_show_line, max_size=20).map("\n".join))


@PROPERTY
@given(show_answers)
@example("Can't show!\nOperations on certificates are currently locked!\n")
@example("Filename: *a\nStatus: Unused\nnotAfter: Feb 30 00:00:00 2030 GMT\n")
def test_show_ssl_cert_parses_or_raises_value_error(text: str) -> None:
    try:
        info = parse_show_ssl_cert(text)
    except ValueError:
        return
    assert info is None or isinstance(info.filename, str)


@PROPERTY
@given(st.text(max_size=2000))
def test_show_ssl_cert_list_never_raises(text: str) -> None:
    listing = parse_show_ssl_cert_list(text)
    assert all("\n" not in name for name in listing.filenames)


_proc_line = st.one_of(
    st.from_regex(r"\A\d{1,6}\s+(master|worker)\s+\d{1,3}\s+\[failed:\s*\d{1,3}\].*\Z"),
    st.sampled_from(["# workers", "#<PID>  <type>", "# old workers", "#"]),
    st.text(max_size=60),
)


@PROPERTY
@given(st.one_of(st.text(max_size=1000), st.lists(_proc_line, max_size=12).map("\n".join)))
def test_show_proc_parses_or_raises_value_error(text: str) -> None:
    try:
        info = parse_show_proc(text)
    except ValueError:
        return
    assert info.master_pid >= 0


@PROPERTY
@given(st.one_of(st.text(max_size=200), st.integers(min_value=0, max_value=2**160)))
def test_serials_and_addresses(value: str | int) -> None:
    try:
        serial = normalize_serial(value)
    except ValueError:
        pass
    else:
        assert len(serial) % 2 == 0 and all(c in string.hexdigits for c in serial)
    if isinstance(value, str):
        for prefix in ("", "unix:", "tcp:", "master:unix:", "master:tcp:"):
            with contextlib.suppress(ValueError):
                parse_haproxy_address(prefix + value)


# --- PEM files on disk -----------------------------------------------------------------------

_LABELS = [
    "CERTIFICATE",
    "PRIVATE KEY",
    "EC PRIVATE KEY",
    "RSA PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "X",
]
_pem_block = st.tuples(st.sampled_from(_LABELS), st.binary(max_size=300)).map(
    lambda lb: (
        f"-----BEGIN {lb[0]}-----\n".encode()
        + base64.encodebytes(lb[1])
        + f"-----END {lb[0]}-----\n".encode()
    )
)
pem_files = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.one_of(_pem_block, st.binary(max_size=20)), max_size=6).map(b"".join),
)


@PROPERTY
@given(pem_files)
@example(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
def test_pem_parsers_raise_only_pem_error(data: bytes) -> None:
    for parse in (pem.parse_combined, pem.parse_certificates):
        with contextlib.suppress(pem.PemError):
            parse(data)


# --- ACME JSON -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
_acme_keys = [
    "status",
    "expires",
    "identifiers",
    "authorizations",
    "finalize",
    "certificate",
    "error",
    "type",
    "value",
    "url",
    "token",
    "challenges",
    "identifier",
    "wildcard",
    "newNonce",
    "newAccount",
    "newOrder",
    "revokeCert",
    "keyChange",
    "renewalInfo",
    "meta",
    "contact",
    "orders",
    "suggestedWindow",
    "start",
    "end",
    "detail",
    "subproblems",
    "validated",
]
acme_objects = st.dictionaries(st.sampled_from(_acme_keys), json_values, max_size=10)
_URL = "https://ca.test/x"


@PROPERTY
@given(st.one_of(json_values, acme_objects))
def test_acme_models_raise_only_malformed_response(body: Any) -> None:
    parsers = [
        lambda: Directory.from_json(body, url=_URL),
        lambda: Account.from_json(body, url=_URL),
        lambda: Challenge.from_json(body, url=_URL),
        lambda: Authorization.from_json(body, url=_URL),
        lambda: Order.from_json(body, url=_URL),
        lambda: RenewalInfo.from_json(body, url=_URL, retry_after=None),
    ]
    for parse in parsers:
        with contextlib.suppress(MalformedResponse):
            parse()


@PROPERTY
@given(
    st.one_of(st.binary(max_size=2000), json_values.map(lambda v: json.dumps(v).encode())),
    st.sampled_from(["application/problem+json", "application/json", "text/html", ""]),
    st.integers(min_value=100, max_value=599),
)
@example(b"[" * 100_000, "application/json", 400)
@example(b'{"type": ' + b"[" * 50_000, "application/problem+json", 500)
def test_acme_bodies_and_errors(body: bytes, content_type: str, status: int) -> None:
    response = AcmeResponse(_URL, status, {"content-type": content_type}, body)
    with contextlib.suppress(MalformedResponse):
        response.json()
    assert isinstance(AcmeTransport.error_for(response), AcmeError)


@PROPERTY
@given(st.lists(st.text(max_size=200), max_size=4))
def test_link_headers_never_raise(values: list[str]) -> None:
    for rel, url in parse_link_headers(values, _URL):
        assert isinstance(rel, str) and isinstance(url, str)


# --- the config loader -----------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string is a JSON string, \u escapes included


_toml_scalars = st.one_of(
    st.text(max_size=30),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
_tables = sorted({option.table for option in OPTIONS})
_keys_by_table = {t: [o.key for o in OPTIONS if o.table == t] + ["bogus"] for t in _tables}


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for table in draw(st.lists(st.sampled_from(_tables), unique=True, max_size=4)):
        lines.append(f"[{table}]")
        for key in draw(st.lists(st.sampled_from(_keys_by_table[table]), unique=True, max_size=5)):
            value = draw(st.one_of(_toml_scalars, st.lists(_toml_scalars, max_size=3)))
            lines.append(f"{key} = {_toml_value(value)}")
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        lines.append("[[certificates]]")
        lines.append(f"domains = {_toml_value(draw(st.lists(st.text(max_size=20), max_size=3)))}")
        if draw(st.booleans()):
            lines.append(f"name = {_toml_value(draw(st.text(max_size=300)))}")
    return "\n".join(lines) + "\n"


_env_names = [
    *sorted({env for option in OPTIONS for env in option.envs}),
    "CERT_SIDECAR_DOMAINS",
    "CERT_SIDECAR_EAB_HMAC_KEY",
]
_env_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


@settings(PROPERTY, max_examples=60)
@given(
    st.one_of(toml_documents(), st.text(max_size=500)),
    st.dictionaries(st.sampled_from(_env_names), _env_text, max_size=5),
)
def test_config_loader_raises_only_config_error(document: str, environ: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sidecar.toml"
        path.write_text(document, encoding="utf-8", errors="surrogatepass")
        args: argparse.Namespace = build_parser().parse_args(
            ["check-config", "--config", str(path)]
        )
        try:
            load_settings(args, environ)
        except ConfigError as exc:
            assert "\n" not in str(exc)


# --- the control socket's JSON ---------------------------------------------------------------


@PROPERTY
@given(st.one_of(st.binary(max_size=3000), json_values.map(lambda v: json.dumps(v).encode())))
@example(b"[" * 60_000)
@example(b'"' + b"\\" * 1000 + b"[[[[")
def test_control_messages_decode_or_raise_value_error(line: bytes) -> None:
    try:
        payload = _decode(line)
    except ValueError:
        return
    if isinstance(payload, dict):
        error = _option_error(payload)
        assert error is None or "\n" not in error
        with contextlib.suppress(ControlProtocolError):
            _validate_answer(payload)
