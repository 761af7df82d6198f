"""Reading SNI and ALPN from a TLS ClientHello, incrementally and at a bounded cost.

A ClientHello may be split over several records (RFC 8446 §5.1: "Handshake messages MAY be
fragmented across multiple records"), so the responder has to reassemble it. An earlier version
re-parsed everything received on every read and accepted 1-byte records up to 64 KiB: a client
sending one tiny record at a time made each read cost a parse of the whole history (about 11,600
records, 22.6 ms per parse, 8 such clients took 8.9 s of CPU in 10 s). `ClientHelloReader`
looks at each byte once, as it arrives, and allows at most `MAX_RECORDS` records: real clients
(OpenSSL, Go's crypto/tls behind step-ca, BoringSSL) send the whole ClientHello in one record.

Pure: no I/O. Errors are `IncompleteClientHello` (only from `parse_client_hello`, for a prefix)
and `MalformedClientHello`; nothing else escapes for any input.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_CLIENT_HELLO",
    "MAX_RECORDS",
    "ClientHello",
    "ClientHelloReader",
    "IncompleteClientHello",
    "MalformedClientHello",
    "parse_client_hello",
]

_HANDSHAKE_RECORD = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
MAX_CLIENT_HELLO = 1 << 16  # the handshake message body; real ones are a few hundred bytes
MAX_RECORD = (1 << 14) + 2048  # RFC 8446 §5.1/§5.2 plaintext limit plus expansion slack
MAX_RECORDS = 32  # enough for a 64 KiB ClientHello in full records, or a fragmenting client


class IncompleteClientHello(Exception):
    """More bytes are needed before the ClientHello can be parsed."""


class MalformedClientHello(Exception):
    """The bytes are not a TLS ClientHello this responder understands."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None  # host_name from server_name (RFC 6066 §3), as sent
    alpn_protocols: tuple[str, ...] | None  # None when the extension is absent (RFC 7301)


class ClientHelloReader:
    """Feed the bytes of a connection as they arrive; `feed` returns the ClientHello once whole.

    Each record is checked and copied once, when its last byte arrives; the message is parsed
    once, when its last byte arrives. Bytes after the ClientHello are ignored (the caller keeps
    everything it read, for the TLS library).
    """

    def __init__(self, *, max_records: int = MAX_RECORDS) -> None:
        self._max_records = max_records
        self._pending = bytearray()  # the start of a record whose end has not arrived
        self._handshake = bytearray()  # record payloads so far: the handshake message
        self._records = 0
        self._hello: ClientHello | None = None

    @property
    def records(self) -> int:
        return self._records

    def feed(self, data: bytes) -> ClientHello | None:
        if self._hello is not None:
            return self._hello
        pending = self._pending
        pending += data
        offset = 0
        try:
            while len(pending) - offset >= 5:
                record_length = _record_length(pending, offset)
                end = offset + 5 + record_length
                if len(pending) < end:
                    break
                self._records += 1
                if self._records > self._max_records:
                    raise MalformedClientHello(
                        f"ClientHello spread over more than {self._max_records} records"
                    )
                self._handshake += pending[offset + 5 : end]
                offset = end
                self._hello = self._complete()
                if self._hello is not None:
                    return self._hello
        finally:
            del pending[:offset]
        if len(pending) >= 1 and pending[0] != _HANDSHAKE_RECORD:
            raise MalformedClientHello("not a TLS handshake record")  # say so before 5 bytes
        return None

    def _complete(self) -> ClientHello | None:
        handshake = self._handshake
        if len(handshake) < 4:
            return None
        if handshake[0] != _CLIENT_HELLO:
            raise MalformedClientHello("first handshake message is not a ClientHello")
        length = int.from_bytes(handshake[1:4], "big")
        if length > MAX_CLIENT_HELLO:
            raise MalformedClientHello("ClientHello too large")
        if len(handshake) < 4 + length:
            return None
        return _parse_client_hello_body(bytes(handshake[4 : 4 + length]))


def _record_length(data: bytearray, offset: int) -> int:
    """Check a record header (RFC 8446 §5.1) and return its length."""
    if data[offset] != _HANDSHAKE_RECORD or data[offset + 1] != 3:
        raise MalformedClientHello("not a TLS handshake record")
    length = int.from_bytes(data[offset + 3 : offset + 5], "big")
    # "Zero-length fragments of Handshake types ... MUST NOT be sent" (RFC 8446 §5.1).
    if length == 0 or length > MAX_RECORD:
        raise MalformedClientHello("bad TLS record length")
    return length


def parse_client_hello(data: bytes) -> ClientHello:
    """Read SNI and ALPN from the first handshake message in ``data`` (TLS records).

    Raises `IncompleteClientHello` when ``data`` ends before the message does, and
    `MalformedClientHello` for anything else that is not a well-formed ClientHello
    (RFC 8446 §4.1.2, §5.1; RFC 5246 §7.4.1.2 has the same layout).
    """
    hello = ClientHelloReader().feed(data)
    if hello is None:
        raise IncompleteClientHello
    return hello


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, length: int) -> bytes:
        if length > self.remaining:
            raise MalformedClientHello("field runs past the end of its container")
        chunk = self._data[self._pos : self._pos + length]
        self._pos += length
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.uint(length_size))


def _parse_client_hello_body(body: bytes) -> ClientHello:
    cursor = _Cursor(body)
    cursor.take(2 + 32)  # legacy_version, random
    cursor.vector(1)  # legacy_session_id
    cursor.vector(2)  # cipher_suites
    cursor.vector(1)  # legacy_compression_methods
    if cursor.remaining == 0:
        return ClientHello(None, None)  # RFC 5246 §7.4.1.2: extensions may be absent
    extensions = _Cursor(cursor.vector(2))
    if cursor.remaining:
        raise MalformedClientHello("bytes after the extensions")
    server_name: str | None = None
    alpn: tuple[str, ...] | None = None
    seen: set[int] = set()
    while extensions.remaining:
        extension_type = extensions.uint(2)
        extension_data = extensions.vector(2)
        if extension_type in seen:  # RFC 8446 §4.2: at most one of each type
            raise MalformedClientHello("repeated extension")
        seen.add(extension_type)
        if extension_type == _EXT_SERVER_NAME:
            server_name = _parse_server_name(extension_data)
        elif extension_type == _EXT_ALPN:
            alpn = _parse_alpn(extension_data)
    return ClientHello(server_name, alpn)


def _parse_server_name(data: bytes) -> str | None:
    outer = _Cursor(data)
    names = _Cursor(outer.vector(2))
    if outer.remaining:
        raise MalformedClientHello("bytes after server_name list")
    host_name: str | None = None
    while names.remaining:
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type == 0:  # RFC 6066 §3: host_name(0); at most one per type
            if host_name is not None:
                raise MalformedClientHello("two host_name entries")
            try:
                host_name = name.decode("ascii")
            except UnicodeDecodeError:
                raise MalformedClientHello("host_name is not ASCII") from None
    return host_name


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    outer = _Cursor(data)
    protocols = _Cursor(outer.vector(2))
    if outer.remaining:
        raise MalformedClientHello("bytes after ALPN list")
    names: list[str] = []
    while protocols.remaining:
        name = protocols.vector(1)
        if not name:  # RFC 7301 §3.1: empty strings MUST NOT be included
            raise MalformedClientHello("empty ALPN protocol name")
        names.append(name.decode("latin-1"))
    if not names:
        raise MalformedClientHello("empty ALPN list")
    return tuple(names)
