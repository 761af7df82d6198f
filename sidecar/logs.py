"""Logging: structlog for the sidecar's own events, stdlib records rendered the same way.

``ca_client`` logs through ``logging.getLogger(__name__)`` and httpx through stdlib logging
too; both go through one ``ProcessorFormatter`` on the root logger, so every line on stderr has
the same shape: one JSON object per line, or one console line on a terminal.

Each line is written for a person as well as a machine. It begins with a short sentence, the
``message`` (``demo.example: new certificate issued``: the certificate's name, then what
happened, from `MESSAGES`), then the fields; the event's name (``cert_issued``) stays in
``event`` for filters and alerts. A field whose value is None is left out. A ``ca_client``
record that says what a sidecar event says too (`COVERED`) shows at debug level only, so each
fact is one line; a program using ``ca_client`` alone still gets it at info.

The console format leaves out its timestamp and starts each line with a ``<N>`` priority under
journald, which stamps and ranks each line itself (sd-daemon(3)).

The last processor before rendering drops anything that looks like private key material: the
code never logs keys on purpose, and this catches the accident (a PEM in an exception message,
a ``repr`` of a request body).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import IO, Any, Final

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from sidecar.log_messages import COVERED, MESSAGES, sentence_for

__all__ = [
    "NOISY_LOGGERS",
    "REDACTED",
    "ConsoleLine",
    "add_message",
    "configure_logging",
    "get_logger",
    "redact_secrets",
    "writes_to_journal",
]

REDACTED: Final = "[redacted]"
_PEM_PRIVATE_KEY: Final = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# Event keys whose values are secrets whatever they look like.
_SECRET_KEYS: Final = frozenset(
    {"private_key", "key_pem", "eab_hmac_key", "hmac_key", "password", "secret"}
)
_MAX_DEPTH: Final = 8
NOISY_LOGGERS: Final = ("httpx", "httpcore", "asyncio", "watchfiles", "apscheduler")


def _scrub(value: object, depth: int = 0) -> object:
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, str):
        return _PEM_PRIVATE_KEY.sub(REDACTED, value) if "PRIVATE KEY" in value else value
    if isinstance(value, bytes | bytearray):
        return REDACTED if b"PRIVATE KEY" in value else value
    if isinstance(value, dict):
        return {
            k: REDACTED if k in _SECRET_KEYS else _scrub(v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace PEM private keys and secret-named fields by ``[redacted]``.

    Runs after exceptions are formatted into text, so a key inside a traceback is caught too.
    """
    for key, value in list(event_dict.items()):
        event_dict[key] = REDACTED if key in _SECRET_KEYS else _scrub(value)
    return event_dict


def _drop_color_message(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)
    return event_dict


def add_message(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: a ``message`` first, the sentence a person reads; None fields out.

    A sidecar event's sentence comes from `MESSAGES`, after its certificate's name; a stdlib
    record (``ca_client``, httpx) is a sentence already. Runs before the processors' meta keys
    are removed: ``_from_structlog`` tells the two apart.
    """
    event = str(event_dict.get("event", ""))
    # A stdlib record may carry an event name too (sidecar.health logs through stdlib).
    if event_dict.get("_from_structlog") or event in MESSAGES:
        sentence = sentence_for(event)
        cert = event_dict.get("cert")
        message = f"{cert}: {sentence}" if cert else sentence
    else:
        message = event
    fields = {key: value for key, value in event_dict.items() if value is not None}
    return {"message": message, **fields}


# JSON keys in this order, then the event's own fields, then the logger: what a person scanning
# raw lines needs first.
_LEADING_KEYS: Final = ("message", "timestamp", "level", "event", "cert")


def _order_keys(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    ordered = {key: event_dict[key] for key in _LEADING_KEYS if key in event_dict}
    ordered.update((key, value) for key, value in event_dict.items() if key != "logger")
    if "logger" in event_dict:
        ordered["logger"] = event_dict["logger"]
    return ordered


# syslog priorities (sd-daemon(3) "<N>" prefixes) by level name.
_PRIORITIES: Final = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_BARE_VALUE: Final = re.compile(r"[^\s\"=]+")


def _console_value(value: object) -> str:
    """logfmt style: bare when that cannot be misread, else JSON-quoted (one line always)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value if _BARE_VALUE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, default=str, ensure_ascii=False)


class ConsoleLine:
    """structlog renderer: ``[time ]level message  key=value ...  [event]``, one line.

    The certificate's name is in the message, so not repeated as ``cert=``; a sidecar event
    ends with its name in brackets (what the README and alerts call it), a stdlib record with
    its logger's. A traceback follows on its own lines. ``journal``: no timestamp (journald
    stamps each line) and a ``<N>`` priority prefix that journald reads as the line's level.
    """

    def __init__(self, *, journal: bool = False) -> None:
        self._journal = journal

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
        fields = dict(event_dict)
        message = str(fields.pop("message", ""))
        event = str(fields.pop("event", ""))
        level = str(fields.pop("level", "info"))
        timestamp = str(fields.pop("timestamp", ""))
        logger_name = str(fields.pop("logger", ""))
        exception = fields.pop("exception", None)
        stack = fields.pop("stack", None)
        if message.startswith(f"{fields.get('cert')}: "):
            fields.pop("cert")
        parts = []
        if self._journal:
            parts.append(f"<{_PRIORITIES.get(level, 6)}>{level:<7}")
        else:
            # 2026-12-07T15:40:01.123456Z -> 2026-12-07T15:40:01Z: seconds are enough to read.
            short = timestamp.split(".", 1)[0].rstrip("Z") + "Z" if timestamp else ""
            parts.append(f"{short} {level:<7}" if short else f"{level:<7}")
        parts.append(message)
        line = " ".join(parts)
        if fields:
            line += "  " + " ".join(f"{k}={_console_value(v)}" for k, v in fields.items())
        name = event if event != message else logger_name
        if name:
            line += f"  [{name}]"
        for block in (stack, exception):
            if block:
                line += "\n" + str(block).rstrip("\n")
        return line


def writes_to_journal(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is journald's: systemd sets ``JOURNAL_STREAM`` to the device and
    inode of the stream it connects to stdout/stderr (systemd.exec(5)); a child that inherited
    the variable but writes elsewhere (a terminal, a pipe) does not match."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


class _CoveredBySidecarEvents(logging.Filter):
    """A ``ca_client`` record whose fact a sidecar event logs too (`COVERED`) becomes a debug
    record: shown only at debug level, so each fact is one line at info."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "acme_event", None) not in COVERED:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self._level <= logging.DEBUG


def configure_logging(
    format: str,
    level: str,
    *,
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Configure structlog and the stdlib root logger; safe to call again (it replaces both).

    ``format`` is ``json`` or ``console``; ``level`` one of debug, info, warning, error.
    ``environ`` (default ``os.environ``) is where ``JOURNAL_STREAM`` is looked up.
    """
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    output = stream if stream is not None else sys.stderr
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        timestamper,
    ]
    renderer: Processor
    if format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = ConsoleLine(journal=writes_to_journal(output, environ))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            add_message,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_color_message,
            structlog.processors.format_exc_info,
            redact_secrets,
            _order_keys,
            renderer,
        ],
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)
    handler.addFilter(_CoveredBySidecarEvents(numeric_level))
    handler.set_name("cert-sidecar")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "cert-sidecar":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # Libraries that log every request at INFO would drown the sidecar's own events.
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.DEBUG if numeric_level <= logging.DEBUG else logging.WARNING
        )

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: configure_logging may run again (tests, config reload) and must win.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A bound logger named ``name`` (shown as ``logger`` in each event)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial_values)
    return logger
