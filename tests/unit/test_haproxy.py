"""Pure parts of sidecar.haproxy: addresses, answers as HAProxy 2.6 prints them, payload rules."""

from __future__ import annotations

import datetime as dt

import pytest

from sidecar.errors import OperationError
from sidecar.haproxy import (
    HAProxyAddress,
    HAProxyCommandError,
    HAProxyError,
    HAProxyRuntime,
    HAProxySocketMissing,
    InvalidPayload,
    check_payload,
    cli_word_problem,
    normalize_serial,
    parse_haproxy_address,
    parse_show_proc,
    parse_show_ssl_cert,
    parse_show_ssl_cert_list,
)

# Captured from HAProxy 2.6.12 (Debian 12).
SHOW_CERT = (
    "Filename: /tmp/hapE/certs/a.pem\n"
    "Status: Used\n"
    "Serial: 006A8526BCAE66436D6852E6E2684883A4D7E57322\n"
    "notBefore: Jan  1 00:00:00 2000 GMT\n"
    "notAfter: Nov 28 01:02:03 3000 GMT\n"
    "Subject Alternative Name: DNS:a.test, DNS:b.test, IP Address:127.0.0.1\n"
    "Algorithm: EC256\n"
    "SHA1 FingerPrint: 5214A5D88025EB319E4C63736DAF20D077FD336B\n"
    "Subject: /O=trustme v1.2.1/OU=Testing cert #X2c5BeNluB3V8GHi\n"
    "Issuer: /O=trustme v1.2.1/OU=Testing CA #NBNE-qwDrCB1cRME\n"
    "OCSP Response Key: \n"
    "\n"
)
SHOW_PROC = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "11652           master          2 [failed: 1]   0d00h13m17s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "21010           worker          1               0d00h00m02s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "20000           worker          3               0d00h00m43s     2.6.12-1+deb12u4\n"
    "# programs\n"
    "\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/haproxy/admin.sock", HAProxyAddress("unix", path="/run/haproxy/admin.sock")),
        ("/run/haproxy/admin.sock", HAProxyAddress("unix", path="/run/haproxy/admin.sock")),
        ("tcp:haproxy:9999", HAProxyAddress("tcp", host="haproxy", port=9999)),
        ("tcp:127.0.0.1:9999", HAProxyAddress("tcp", host="127.0.0.1", port=9999)),
        ("tcp:[::1]:9999", HAProxyAddress("tcp", host="::1", port=9999)),
        ("master:unix:/m.sock", HAProxyAddress("unix", path="/m.sock", master=True)),
        ("master:tcp:h:1", HAProxyAddress("tcp", host="h", port=1, master=True)),
        (" unix:/a ", HAProxyAddress("unix", path="/a")),
    ],
)
def test_parse_address(text: str, expected: HAProxyAddress) -> None:
    address = parse_haproxy_address(text)
    assert address == expected
    assert parse_haproxy_address(str(address)) == address  # str() round-trips


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected unix:/path"),
        ("http://x", "expected unix:/path"),
        ("unix:", "empty path"),
        ("unix:relative.sock", "must be absolute"),
        ("tcp:host", "expected tcp:host:port"),
        ("tcp:host:port", "expected tcp:host:port"),
        ("tcp::1:99", "expected tcp:host:port"),
        ("tcp:h:0", "out of range"),
        ("tcp:h:70000", "out of range"),
        ("master:", "expected unix:/path"),
        ("master:master:unix:/a", "expected unix:/path"),
    ],
)
def test_parse_address_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        parse_haproxy_address(text)
    assert repr(text) in str(error.value)


def test_str_of_addresses() -> None:
    assert str(HAProxyAddress("tcp", host="::1", port=9)) == "tcp:[::1]:9"
    assert str(HAProxyAddress("unix", path="/a", master=True)) == "master:unix:/a"


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        ("006A85", "6A85"),  # HAProxy's DER bytes with the sign byte
        ("6a:85", "6A85"),
        ("A85", "0A85"),  # whole bytes, as sidecar.pem.CertFacts.serial_hex
        (0x1A2B, "1A2B"),
        (1, "01"),
    ],
)
def test_normalize_serial(serial: str | int, expected: str) -> None:
    assert normalize_serial(serial) == expected


def test_normalize_serial_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="hexadecimal"):
        normalize_serial("xyz")


def test_parse_show_ssl_cert() -> None:
    info = parse_show_ssl_cert(SHOW_CERT)
    assert info is not None
    assert info.filename == "/tmp/hapE/certs/a.pem"
    assert info.status == "Used" and info.loaded and not info.transaction
    assert info.serial == "6A8526BCAE66436D6852E6E2684883A4D7E57322"
    assert info.not_before == dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert info.not_after == dt.datetime(3000, 11, 28, 1, 2, 3, tzinfo=dt.UTC)
    assert info.sans == ("DNS:a.test", "DNS:b.test", "IP Address:127.0.0.1")
    assert info.algorithm == "EC256"
    assert info.subject is not None and info.subject.startswith("/O=trustme")


def test_parse_show_ssl_cert_transaction_and_empty() -> None:
    pending = parse_show_ssl_cert(
        SHOW_CERT.replace("Filename: /", "Filename: */", 1).replace(
            "Status: Used", "Status: Unused"
        )
    )
    assert pending is not None and pending.transaction and not pending.loaded
    assert pending.filename == "/tmp/hapE/certs/a.pem"
    empty = parse_show_ssl_cert("Filename: /c/new.pem\nStatus: Empty\nOCSP Response Key: \n\n")
    assert empty is not None and empty.status == "Empty" and empty.serial is None


def test_parse_show_ssl_cert_not_found_and_garbage() -> None:
    not_found = "Can't display the certificate: Not found or the certificate is a bundle!\n\n"
    assert parse_show_ssl_cert(not_found) is None
    with pytest.raises(ValueError, match="unexpected line"):
        parse_show_ssl_cert("something else entirely\n")
    with pytest.raises(ValueError, match="no Filename"):
        parse_show_ssl_cert("Serial: 01\n")


def test_parse_listing() -> None:
    text = "# transaction\n*/c/a.pem\n# filename\n/c/a.pem\n/c/b.pem\n\n"
    listing = parse_show_ssl_cert_list(text)
    assert listing.filenames == ("/c/a.pem", "/c/b.pem")
    assert listing.transaction == "/c/a.pem"
    assert parse_show_ssl_cert_list("# filename\n\n").filenames == ()


def test_parse_show_proc() -> None:
    info = parse_show_proc(SHOW_PROC)
    assert info.master_pid == 11652
    assert (info.reloads, info.failed_reloads) == (2, 1)
    assert info.worker_pids == (21010,)  # old workers are draining: not counted
    with pytest.raises(ValueError, match="no master"):
        parse_show_proc("# workers\n1 worker 0 0d 2.6\n")


PEM = (
    b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
    b"-----BEGIN EC PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END EC PRIVATE KEY-----\n"
)


def test_check_payload_accepts_the_combined_layout() -> None:
    text = check_payload(PEM)
    assert not text.endswith("\n")  # the CLI adds the terminating empty line itself
    assert text.count("\n") == PEM.count(b"\n") - 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            PEM.replace(b"-----\n-----BEGIN CERTIFICATE", b"-----\n\n-----BEGIN CERTIFICATE", 1),
            "blank line \\(line 4\\)",
        ),
        (PEM.replace(b"MIIC\n", b"MIIC\n   \n"), "blank line"),
        (PEM + b"\n", "blank line"),
        (b"\n" + PEM, "blank line \\(line 1\\)"),
        (PEM.replace(b"\n", b"\r\n"), "CR"),
        (PEM.split(b"-----BEGIN EC")[0], "no private key"),
        (b"-----BEGIN EC PRIVATE KEY-----\nX\n-----END EC PRIVATE KEY-----\n", "no certificate"),
        ("é".encode() + PEM, "not ASCII"),
    ],
)
def test_check_payload_rejects(data: bytes, message: str) -> None:
    with pytest.raises(InvalidPayload, match=message) as error:
        check_payload(data)
    assert b"SECRETKEYMATERIAL".decode() not in str(error.value)


def test_errors_are_one_line_operation_errors() -> None:
    error = HAProxyCommandError("unix:/s", "commit ssl cert", "line one\nCan't commit /a!\n\n")
    assert str(error) == "haproxy unix:/s: commit ssl cert: line one Can't commit /a!"
    assert isinstance(error, HAProxyError) and isinstance(error, OperationError)
    assert isinstance(HAProxySocketMissing("unix:/s", "x"), OperationError)
    long = HAProxyCommandError("a", "b", "x" * 1000)
    assert len(str(long)) < 400


@pytest.mark.parametrize(
    ("word", "bad"),
    [
        ("/etc/haproxy/certs/a.example.pem", False),
        ("/etc/haproxy/certs/_wildcard.x.org.pem", False),
        ("/etc/ha proxy/a.pem", True),
        ("/c/a.pem;show info", True),
        ("/c/a\\b.pem", True),
        ("*/c/a.pem", True),
        ("@1", True),
        ("", True),
    ],
)
def test_cli_word_problem(word: str, bad: bool) -> None:
    assert (cli_word_problem(word) is not None) is bad


@pytest.mark.anyio
async def test_unsendable_names_are_refused_before_connecting(tmp_path: object) -> None:
    # The socket does not exist: reaching it would raise HAProxySocketMissing instead.
    runtime = HAProxyRuntime("unix:/nonexistent/admin.sock")
    with pytest.raises(HAProxyCommandError, match="cannot take the file name"):
        await runtime.update_certificate("/c/a b.pem", PEM, crt_list="/c")
    with pytest.raises(HAProxyCommandError, match="cannot take the file name"):
        await runtime.remove_certificate("/c/a.pem", "/c;x")
