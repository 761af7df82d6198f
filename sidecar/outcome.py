"""What one step did to one certificate, as values: the `Outcome`, its `Action`, and the
revocation reasons a subscriber may give. A deploy's part is the deployer's own
`sidecar.deploy_result.DeployResult`, carried as it is.

Plain values only (no I/O, nothing heavy imported): the CLI parses ``--reason`` with this module
before it loads anything else. An `Outcome` becomes JSON only at the control socket
(`sidecar.control.outcome_to_json`), and the one-shot commands rebuild what they print from
that JSON there (`sidecar.control.outcome_from_json`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from sidecar.deploy_result import DeployResult
from sidecar.metrics import ErrorKind

__all__ = [
    "REVOCATION_REASONS",
    "Action",
    "Outcome",
    "canonical_reason",
    "revocation_code",
]


class Action(StrEnum):
    """What a step did. The values are what logs, ``issue``'s lines and the control socket's
    JSON have always said, so they must not change."""

    ISSUED = "issued"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    DRY_RUN = "dry-run"
    WAITING = "waiting"
    REVOKED_AND_REPLACED = "revoked and replaced"
    REMOVED = "removed"


# RFC 5280 §5.3.1 CRLReason codes a subscriber may give (RFC 8555 §7.6 passes the code).
# The CA-only reasons (cACompromise, certificateHold, ...) are left out on purpose.
REVOCATION_REASONS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "unspecified": 0,
        "keyCompromise": 1,
        "affiliationChanged": 3,
        "superseded": 4,
        "cessationOfOperation": 5,
    }
)


def _fold(text: str) -> str:
    return text.replace("-", "").replace("_", "").lower()


_REASON_BY_FOLDED: Final = {_fold(name): name for name in REVOCATION_REASONS}


def canonical_reason(text: str) -> str | None:
    """``--reason`` as RFC 5280 spells it (``key-compromise`` -> ``keyCompromise``); None when
    it is not a reason a subscriber may give."""
    return _REASON_BY_FOLDED.get(_fold(text))


def revocation_code(text: str | None) -> int | None:
    """The CRLReason code for a reason name (any spelling `canonical_reason` takes) or for its
    code as digits; None for no reason. Raises ValueError naming the choices otherwise."""
    if text is None:
        return None
    name = canonical_reason(text)
    if name is not None:
        return REVOCATION_REASONS[name]
    if text.isdigit() and int(text) in REVOCATION_REASONS.values():
        return int(text)
    names = ", ".join(REVOCATION_REASONS)
    raise ValueError(f"unknown revocation reason {text!r} (one of: {names})")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one step for one certificate, as commands print and `run` reports it."""

    name: str
    action: Action
    ok: bool
    serial: str | None = None
    not_after: datetime | None = None
    reason: str | None = None
    error: str | None = None
    next_retry_at: datetime | None = None
    # What the deployer did, when this step deployed (None: nothing deployed, or no deployer).
    deploy: DeployResult | None = None
    # For /metrics only (a label, never the text); not part of the JSON answer.
    error_kind: ErrorKind | None = None
    # What the renewal loop needs after the step, carried so that it reads nothing back from
    # the manager or the issuer (issue 18, item 4). Filled by `Manager` at the end of each
    # step; not part of the JSON answer, nor of equality (they describe the certificate and
    # the CA after the step, not what the step did).
    #: The CA's error of the issuer's last order (None once one succeeded), for
    #: ``cert_sidecar_ca_reachable``.
    ca_error: str | None = field(default=None, compare=False)
    #: This clock minus the CA's ``Date``, in seconds, as the issuer last measured it.
    clock_skew: float | None = field(default=None, compare=False)
    #: When the certificate on disk is next due, as the inventory sees it after the step.
    next_renewal: datetime | None = field(default=None, compare=False)
    #: The lifetime of the real certificate on disk after the step (None: a placeholder, or
    #: none), from which the loop's check cadence follows (`policy.check_interval`).
    lifetime: timedelta | None = field(default=None, compare=False)

    @classmethod
    def failed(cls, name: str, error: str, **values: Any) -> Outcome:
        return cls(name, Action.FAILED, ok=False, error=error, **values)

    def line(self) -> str:
        """One human line for the one-shot commands."""
        until = f", valid until {self.not_after:%Y-%m-%d %H:%M:%S}Z" if self.not_after else ""
        serial = f" serial {self.serial}" if self.serial else ""
        if self.action is Action.FAILED:
            retry = (
                f" (next retry {self.next_retry_at:%Y-%m-%d %H:%M:%S}Z)"
                if self.next_retry_at
                else ""
            )
            return f"{self.name}: failed: {self.error}{retry}"
        if self.action is Action.UNCHANGED:
            return f"{self.name}: unchanged{serial}{until}"
        why = f" ({self.reason})" if self.reason else ""
        warn = f"; warning: {self.error}" if self.error else ""
        return f"{self.name}: {self.action}{serial}{until}{why}{warn}"
