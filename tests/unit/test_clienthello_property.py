"""Property tests (Hypothesis) for the tls-alpn-01 responder's ClientHello parser.

For any input: only the module's own errors escape, feeding it in any chunks gives the same
answer as feeding it whole, and it never needs more than one pass. Valid ClientHellos, built
here or by a real OpenSSL client, parse to their SNI and ALPN however they are fragmented over
records (up to the record cap) and however the bytes arrive.
"""

from __future__ import annotations

import itertools
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca_client.challenges._client_hello import (
    MAX_RECORDS,
    ClientHello,
    ClientHelloReader,
    IncompleteClientHello,
    MalformedClientHello,
    parse_client_hello,
)

pytestmark = pytest.mark.timeout(300)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
HOST_NAMES = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
ALPN = st.lists(
    st.binary(min_size=1, max_size=20).map(lambda raw: raw.decode("latin-1")),
    min_size=1,
    max_size=5,
)


def _vector(length_size: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def build_client_hello_message(
    server_name: str | None, alpn: list[str] | None, other_extensions: dict[int, bytes]
) -> bytes:
    """A handshake message: ClientHello (RFC 8446 §4.1.2) with the given extensions."""
    extensions = b""
    if server_name is not None:
        entry = b"\x00" + _vector(2, server_name.encode("ascii"))
        extensions += (0).to_bytes(2, "big") + _vector(2, _vector(2, entry))
    if alpn is not None:
        names = b"".join(_vector(1, name.encode("latin-1")) for name in alpn)
        extensions += (16).to_bytes(2, "big") + _vector(2, _vector(2, names))
    for extension_type, data in other_extensions.items():
        extensions += extension_type.to_bytes(2, "big") + _vector(2, data)
    body = (
        b"\x03\x03"
        + bytes(32)
        + _vector(1, bytes(32))
        + _vector(2, b"\x13\x01\x13\x02")
        + _vector(1, b"\x00")
        + _vector(2, extensions)
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, cuts: list[int]) -> bytes:
    """``message`` as TLS handshake records, split at the given (sorted, unique) offsets."""
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < len(message)}), len(message)]
    return b"".join(
        b"\x16\x03\x01" + _vector(2, message[start:end])
        for start, end in itertools.pairwise(bounds)
    )


def feed_in_chunks(data: bytes, cuts: list[int]) -> ClientHello | type[Exception] | None:
    """The reader's verdict for ``data`` arriving in pieces: a hello, None, or the error type."""
    reader = ClientHelloReader()
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < len(data)}), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            hello = reader.feed(data[start:end])
            if hello is not None:
                return hello
    except MalformedClientHello:
        return MalformedClientHello
    return None


def verdict_whole(data: bytes) -> ClientHello | type[Exception] | None:
    try:
        return parse_client_hello(data)
    except IncompleteClientHello:
        return None
    except MalformedClientHello:
        return MalformedClientHello


@SETTINGS
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_raise_only_the_parsers_errors(data: bytes) -> None:
    try:
        hello = parse_client_hello(data)
    except (IncompleteClientHello, MalformedClientHello):
        return
    assert isinstance(hello, ClientHello)


@SETTINGS
@given(
    st.lists(
        st.one_of(
            # Plausible records (the right header, arbitrary payloads) reach the message parser.
            st.binary(min_size=1, max_size=300).map(
                lambda body: b"\x16\x03\x01" + _vector(2, body)
            ),
            st.binary(max_size=8),
        ),
        max_size=12,
    ).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
)
def test_chunked_feeding_agrees_with_whole(data: bytes, cuts: list[int]) -> None:
    assert feed_in_chunks(data, cuts) == verdict_whole(data)


@SETTINGS
@given(
    st.one_of(st.none(), HOST_NAMES),
    st.one_of(st.none(), ALPN),
    st.dictionaries(
        st.integers(min_value=1, max_value=65535).filter(lambda kind: kind not in (0, 16)),
        st.binary(max_size=50),
        max_size=5,
    ),
    st.lists(st.integers(min_value=1, max_value=3000), max_size=MAX_RECORDS - 1),
    st.lists(st.integers(min_value=1, max_value=6000), max_size=30),
)
def test_valid_client_hellos_parse_however_fragmented(
    server_name: str | None,
    alpn: list[str] | None,
    other: dict[int, bytes],
    record_cuts: list[int],
    chunk_cuts: list[int],
) -> None:
    message = build_client_hello_message(server_name, alpn, other)
    data = records(message, record_cuts)
    expected = ClientHello(server_name, None if alpn is None else tuple(alpn))
    assert parse_client_hello(data) == expected
    assert feed_in_chunks(data, chunk_cuts) == expected
    # Any strict prefix is merely incomplete.
    assert verdict_whole(data[: len(data) // 2]) is None


@SETTINGS
@given(st.data())
def test_more_records_than_the_cap_are_refused(data: st.DataObject) -> None:
    message = build_client_hello_message("a.example", ["acme-tls/1"], {})
    count = data.draw(st.integers(min_value=MAX_RECORDS + 1, max_value=len(message)))
    cuts = data.draw(st.permutations(range(1, len(message))))[: count - 1]
    with pytest.raises(MalformedClientHello, match="records"):
        parse_client_hello(records(message, cuts))


def _openssl_client_hello(server_name: str, alpn: list[str]) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@settings(max_examples=60, deadline=None)
@given(
    # All-digit dotted names ("0.0.0.0") are IP literals to OpenSSL, which sends no SNI for them.
    HOST_NAMES.filter(lambda name: len(name) < 200 and not name.replace(".", "").isdigit()),
    st.lists(st.sampled_from(["acme-tls/1", "h2", "http/1.1"]), min_size=1, unique=True),
    st.lists(st.integers(min_value=1, max_value=2000), max_size=MAX_RECORDS - 1),
    st.lists(st.integers(min_value=1, max_value=3000), max_size=20),
)
def test_real_openssl_client_hellos_parse_however_fragmented(
    server_name: str, alpn: list[str], record_cuts: list[int], chunk_cuts: list[int]
) -> None:
    sent = _openssl_client_hello(server_name, alpn)
    message = b"".join(  # the handshake message(s) inside OpenSSL's record(s)
        sent[offset + 5 : offset + 5 + int.from_bytes(sent[offset + 3 : offset + 5], "big")]
        for offset in _record_offsets(sent)
    )
    expected = ClientHello(server_name, tuple(alpn))
    assert feed_in_chunks(records(message, record_cuts), chunk_cuts) == expected


def _record_offsets(data: bytes) -> list[int]:
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 5 + int.from_bytes(data[offset + 3 : offset + 5], "big")
    return offsets


def test_one_byte_records_cost_one_pass() -> None:
    # The old parser re-read everything on each read: 11,600 1-byte records, fed one at a time,
    # meant about 67 million record headers parsed. Now each record is looked at once, and the
    # cap ends it after MAX_RECORDS.
    reader = ClientHelloReader()
    header = b"\x01" + (65000).to_bytes(3, "big")
    with pytest.raises(MalformedClientHello, match="records"):
        for byte in header + bytes(65000):
            reader.feed(b"\x16\x03\x01\x00\x01" + bytes([byte]))
    assert reader.records == MAX_RECORDS + 1
