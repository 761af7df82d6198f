"""sidecar.logs: structlog and stdlib records in one format, private keys never printed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
import trustme

from sidecar.logs import REDACTED, configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_for_structlog_and_stdlib_records() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    get_logger("sidecar.issuance").info("cert_issued", cert="a.example", serial="0a")
    logging.getLogger("ca_client.client").info("order %s is %s", "https://ca/o/1", "valid")
    logging.getLogger("ca_client.client").debug("not shown at info")
    first, second = lines(stream)
    assert first["event"] == "cert_issued"
    assert first["cert"] == "a.example"
    assert first["level"] == "info"
    assert first["logger"] == "sidecar.issuance"
    assert "timestamp" in first
    assert second["event"] == "order https://ca/o/1 is valid"
    assert second["logger"] == "ca_client.client"
    assert second["level"] == "info"


def test_level_filters_and_httpx_is_quiet_below_debug() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream=stream)
    get_logger("x").info("hidden")
    get_logger("x").warning("shown")
    logging.getLogger("httpx").warning("httpx warning shown")
    assert [line["event"] for line in lines(stream)] == ["shown", "httpx warning shown"]

    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    logging.getLogger("httpx").info('HTTP Request: POST https://ca/ "HTTP/1.1 200 OK"')
    assert lines(stream) == []

    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: GET")
    get_logger("x").debug("dbg")
    assert [line["event"] for line in lines(stream)] == ["HTTP Request: GET", "dbg"]


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", stream=first)
    configure_logging("json", "info", stream=second)
    get_logger("x").info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_console_format() -> None:
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    get_logger("x").info("cert_issued", cert="a.example", serial="0A")
    text = stream.getvalue()
    # The name leads the sentence, so it is not repeated as cert=; the event's name ends it.
    assert " a.example: new certificate issued and written  serial=0A  [cert_issued]\n" in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal


@pytest.fixture(scope="module")
def key_pem() -> str:
    return trustme.CA().issue_cert("a.example").private_key_pem.bytes().decode()


@pytest.mark.parametrize("format_", ["json", "console"])
def test_private_keys_are_redacted_everywhere(key_pem: str, format_: str) -> None:
    body = key_pem.splitlines()[1]
    stream = io.StringIO()
    configure_logging(format_, "debug", stream=stream)
    log = get_logger("x")
    log.info("oops", detail=f"payload: {key_pem}")
    log.info("nested", data={"list": [key_pem.encode()], "inner": {"pem": key_pem}})
    log.info("by_name", private_key="anything", eab_hmac_key=b"secret-bytes")
    logging.getLogger("ca_client.transport").warning("stdlib %s", key_pem)
    try:
        raise ValueError("bad key " + key_pem)
    except ValueError:
        log.exception("with_traceback")
    partial = key_pem[: len(key_pem) // 2]  # a truncated key, no END line
    log.info("partial", text="x " + partial)
    output = stream.getvalue()
    assert body not in output
    assert "secret-bytes" not in output
    assert "PRIVATE KEY-----" not in output
    assert output.count(REDACTED) >= 7
    for event in ("oops", "nested", "by_name", "stdlib", "with_traceback", "partial"):
        assert event in output
