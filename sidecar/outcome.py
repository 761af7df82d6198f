"""What one step did to one certificate, as values: the `Outcome`, its `Action`, a deploy's
`DeploySummary`, and the revocation reasons a subscriber may give.

Plain values only (no I/O, nothing heavy imported): the CLI parses ``--reason`` with this module
before it loads anything else, and the one-shot commands rebuild an `Outcome` from the control
socket's JSON with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from sidecar.metrics import ErrorKind

__all__ = [
    "REVOCATION_REASONS",
    "Action",
    "DeploySummary",
    "Outcome",
    "SocketSummary",
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
class SocketSummary:
    """One HAProxy socket's part in a deploy: whether it took the certificate, and whether the
    socket could be used at all (``reachable`` False: missing, refused...)."""

    address: str
    ok: bool
    reachable: bool = True


@dataclass(frozen=True, slots=True)
class DeploySummary:
    """What a deploy did, as `Service` needs it, plus the deployer's full report (``details``)
    which the control socket's JSON carries unchanged.

    ``mode`` is None when the deployer raised before it could say how it deployed.
    """

    ok: bool
    mode: str | None = None
    sockets: tuple[SocketSummary, ...] = ()
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    # The deployer's one line for logs and `Outcome.error` (not carried over the socket).
    summary: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, summary: str = "") -> DeploySummary:
        """From a deployer's report (`sidecar.deploy.DeployResult.to_json`), or the short one
        written when the deployer raised (``{"ok": False, "error": ...}``)."""
        mode = data.get("mode")
        error = data.get("error")
        return cls(
            ok=bool(data.get("ok")),
            mode=str(mode) if mode else None,
            sockets=tuple(_sockets(data.get("sockets") or ())),
            error=str(error) if error else None,
            details=dict(data),
            summary=summary or str(error or ""),
        )

    @classmethod
    def crashed(cls, error: str) -> DeploySummary:
        return cls.from_json({"ok": False, "error": error})

    def to_json(self) -> dict[str, Any]:
        return dict(self.details)

    def log_fields(self) -> dict[str, Any]:
        """The fields ``haproxy_updated`` / ``haproxy_update_failed`` have always carried."""
        keep = ("mode", "fallback", "verified", "error")
        return {k: v for k, v in self.details.items() if k in keep}


def _sockets(items: Iterable[Any]) -> Iterable[SocketSummary]:
    for item in items:
        if isinstance(item, Mapping) and item.get("address"):
            yield SocketSummary(
                str(item["address"]), bool(item.get("ok")), bool(item.get("reachable", True))
            )


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
    deploy: DeploySummary | None = None
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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": str(self.action),
            "ok": self.ok,
            "serial": self.serial,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "reason": self.reason,
            "error": self.error,
            "next_retry_at": self.next_retry_at.isoformat() if self.next_retry_at else None,
            "deploy": self.deploy.to_json() if self.deploy is not None else {},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        def when(key: str) -> datetime | None:
            value = data.get(key)
            return datetime.fromisoformat(value) if isinstance(value, str) else None

        try:
            action = Action(str(data.get("action")))
        except ValueError:  # a newer sidecar's action: print it as a failure, never crash
            action = Action.FAILED
        deploy = data.get("deploy")
        return cls(
            name=str(data.get("name", "?")),
            action=action,
            ok=bool(data.get("ok")),
            serial=data.get("serial"),
            not_after=when("not_after"),
            reason=data.get("reason"),
            error=data.get("error"),
            next_retry_at=when("next_retry_at"),
            deploy=DeploySummary.from_json(deploy) if isinstance(deploy, dict) and deploy else None,
        )

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
