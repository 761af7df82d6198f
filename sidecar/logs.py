"""Logging: structlog for the sidecar's own events, stdlib records rendered the same way.

``ca_client`` logs through ``logging.getLogger(__name__)`` and httpx through stdlib logging
too; both go through one ``ProcessorFormatter`` on the root logger, so every line on stderr has
the same shape (one JSON object per line, or the console renderer on a terminal).

The last processor before rendering drops anything that looks like private key material: the
code never logs keys on purpose, and this catches the accident (a PEM in an exception message,
a ``repr`` of a request body).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO, Any, Final

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

__all__ = ["REDACTED", "configure_logging", "get_logger", "redact_secrets"]

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
_NOISY_LOGGERS: Final = ("httpx", "httpcore", "asyncio", "watchfiles", "apscheduler")


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


def configure_logging(format: str, level: str, *, stream: IO[str] | None = None) -> None:
    """Configure structlog and the stdlib root logger; safe to call again (it replaces both).

    ``format`` is ``json`` or ``console``; ``level`` one of debug, info, warning, error.
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
        renderer = structlog.dev.ConsoleRenderer(
            colors=output.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_color_message,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)
    handler.set_name("cert-sidecar")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "cert-sidecar":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # Libraries that log every request at INFO would drown the sidecar's own events.
    for name in _NOISY_LOGGERS:
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
