"""The sidecar's one error tree, and the exit code each branch maps to.

::

    SidecarError                 base; ``exit_code`` says how ``cli.main`` ends
     ├── ConfigError             exit 2: usage or configuration, found before any network I/O
     │                           (``setting`` names the flag/env/TOML key as the user wrote it)
     └── OperationError          exit 1: the CA, HAProxy, the disk or a hook failed at run time

``ca_client.errors.AcmeError`` stays in its own tree (the library knows nothing of the sidecar);
``sidecar.cli`` maps it to exit 1 beside ``OperationError``. New subclasses go under one of the
two branches so that the exit code follows from the branch.

`error_kind` sorts any failure of an attempt, a ``ca_client`` error included, into the few
`ErrorKind` values that ``/metrics`` labels and the alerts name; the renderer only prints them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ca_client.errors import AcmeProblem

__all__ = [
    "ERROR_KINDS",
    "ConfigError",
    "ErrorKind",
    "OperationError",
    "SidecarError",
    "error_kind",
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


# --- the kind of a failed attempt, for a metric label ----------------------------------------

# Why the last attempt to obtain a certificate failed, as a label: a small fixed set, never the
# error's text (which carries URLs and the CA's detail, and would make a new series per message).
ErrorKind = Literal["ca_unreachable", "challenge_failed", "rate_limited", "rejected", "other"]
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "ca_unreachable",
    "challenge_failed",
    "rate_limited",
    "rejected",
    "other",
)


def error_kind(error: BaseException) -> ErrorKind:
    """The `ErrorKind` of a failed attempt to obtain a certificate, from the error's type.

    ``ca_client.errors`` is imported here, not at the top: most commands never call this, and
    ``--help`` and ``healthcheck`` should not pay for the import.
    """
    from ca_client import errors

    if isinstance(error, errors.OrderFailed):
        # An order or authorization became invalid: almost always a failed validation; the
        # CA's problem, when it names a refusal or a rate limit, says more.
        kind = _problem_kind(error.problem) if error.problem is not None else None
        return kind if kind in ("rate_limited", "rejected") else "challenge_failed"
    if isinstance(error, errors.AcmeProblem):
        return _problem_kind(error)
    if isinstance(error, errors.TransportError | errors.ACMETimeout):
        # Not talked to as an ACME server (refused, reset, TLS, not ACME) or not in time.
        return "ca_unreachable"
    if isinstance(error, errors.NoSolver):
        return "challenge_failed"
    return "other"  # CertificateMismatch, a bad certificate, the disk, a bug: see the log


def _problem_kind(problem: AcmeProblem) -> ErrorKind:
    from ca_client import errors

    if isinstance(problem, errors.RateLimited):
        return "rate_limited"
    if isinstance(
        problem,
        errors.IncorrectResponse
        | errors.ConnectionProblem
        | errors.DNSProblem
        | errors.TLSProblem
        | errors.Unauthorized,
    ):
        return "challenge_failed"  # the CA could not validate a challenge (RFC 8555 §8)
    if isinstance(problem, errors.CompoundProblem) and problem.subproblems:
        kinds = {_problem_kind(sub) for sub in problem.subproblems}
        return kinds.pop() if len(kinds) == 1 else "rejected"
    if isinstance(problem, errors.ServerInternal):
        return "other"  # the CA answered, broken: neither unreachable nor a refusal
    return "rejected"  # any other problem: the CA refused the request (policy, CSR, account)
