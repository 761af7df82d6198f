"""The sidecar's one error tree, and the exit code each branch maps to.

::

    SidecarError                 base; ``exit_code`` says how ``cli.main`` ends
     ├── ConfigError             exit 2: usage or configuration, found before any network I/O
     │                           (``setting`` names the flag/env/TOML key as the user wrote it)
     └── OperationError          exit 1: the CA, HAProxy, the disk or a hook failed at run time

``ca_client.errors.AcmeError`` stays in its own tree (the library knows nothing of the sidecar);
``sidecar.cli`` maps it to exit 1 beside ``OperationError``. New subclasses go under one of the
two branches so that the exit code follows from the branch.
"""

from __future__ import annotations

import os

__all__ = [
    "ConfigError",
    "OperationError",
    "SidecarError",
    "error_text",
    "one_line",
    "os_error_text",
    "with_hint",
]


def one_line(text: str) -> str:
    """Collapse whitespace (newlines included) so an error is always a single line."""
    return " ".join(text.split())


def error_text(error: BaseException) -> str:
    """A failure in one line: its message, or its type's name when it has none."""
    return one_line(str(error)) or type(error).__name__


def os_error_text(error: OSError) -> str:
    """``connection refused`` rather than asyncio's ``Connect call failed ('127.0.0.1', 1)``."""
    if error.errno:
        return os.strerror(error.errno).lower()
    return error_text(error)


# Failures whose words do not say what to do: (a fragment of the text, case-insensitive, and
# the hint added after it). Matched on text because they come from the CA, in its words.
_HINTS: tuple[tuple[str, str], ...] = (
    (
        "could not connect to validation target",
        "the CA must resolve the name to this container (a network alias in compose, or a "
        "hosts entry) and reach its port 80 (http-01) or 443 (tls-alpn-01)",
    ),
)


def with_hint(text: str) -> str:
    """``text`` with what to do about it, where the CA's words do not say (see ``_HINTS``)."""
    lowered = text.lower()
    for fragment, hint in _HINTS:
        if fragment in lowered and hint not in text:
            return f"{text} (hint: {hint})"
    return text


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""

    exit_code: int = 1


class ConfigError(SidecarError):
    """A setting is wrong; ``str()`` is one line: ``<setting>: <message>``.

    ``setting`` is the name in the form the user wrote it (``--pem-mode``,
    ``CERT_SIDECAR_PEM_MODE``, ``files.pem_mode in /etc/cert-sidecar.toml``) so that the
    message points at the place to fix. Messages never contain secrets.
    """

    exit_code = 2

    def __init__(self, setting: str, message: str) -> None:
        self.setting = one_line(setting)
        self.message = one_line(message)
        super().__init__(f"{self.setting}: {self.message}")


class OperationError(SidecarError):
    """Something outside the configuration failed (CA, HAProxy, disk, hook)."""

    exit_code = 1
