"""What a deploy did, as one typed value: `DeployResult` and its parts.

The deployer (`sidecar.deploy`) makes it; the manager puts it in the `sidecar.outcome.Outcome`
unchanged; the service counts it (/metrics), logs it and reports it (sd_notify STATUS). It
becomes JSON only at the control socket (`sidecar.control.outcome_to_json`), the one place
that speaks JSON about it.

Plain values only (no I/O, nothing heavy imported): `sidecar.outcome`, which the CLI imports
before anything else, holds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from sidecar.config import ReloadMode

__all__ = [
    "DeployResult",
    "FallbackKind",
    "HookOutcome",
    "NameCheck",
    "SocketOutcome",
    "VerifyOutcome",
]

# The reloads the runtime API may fall back to when a hot update fails.
FallbackKind = Literal["command", "signal"]


@dataclass(frozen=True)
class SocketOutcome:
    """One socket's part. ``action``: updated, added (new file), reloaded, confirmed, failed."""

    address: str
    ok: bool
    action: str
    serial: str | None = None  # what the socket reported at the end
    attempts: int = 0
    error: str | None = None
    reachable: bool = True  # False: the socket itself could not be used (missing, refused...)


@dataclass(frozen=True)
class NameCheck:
    name: str
    sni: str | None
    ok: bool
    served_serial: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class VerifyOutcome:
    """The ``--verify-address`` handshakes. IP names are skipped: SNI cannot carry them."""

    address: str
    ok: bool
    checks: tuple[NameCheck, ...] = ()
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class HookOutcome:
    ok: bool
    returncode: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class DeployResult:
    """Everything a deploy did. ``ok``: the new certificate is what HAProxy serves (as far as
    could be checked); the hook's failure does not change ``ok``.

    ``mode`` is None only for `crashed`: the deployer raised before it could say how it
    deployed, and ``errors`` holds what it raised.
    """

    name: str
    serial: str
    mode: ReloadMode | None
    ok: bool
    sockets: tuple[SocketOutcome, ...] = ()
    fallback: FallbackKind | None = None  # when runtime-api fell back
    fallback_ok: bool | None = None
    verification: VerifyOutcome | None = None
    hook: HookOutcome | None = None
    errors: tuple[str, ...] = ()
    duration: float = 0.0

    @classmethod
    def crashed(cls, name: str, serial: str, error: str) -> DeployResult:
        """The deployer raised (a bug, a lost socket): a failed deploy saying only why."""
        return cls(name, serial, None, False, errors=(error,))

    @property
    def verified(self) -> bool | None:
        return None if self.verification is None else self.verification.ok

    @property
    def error(self) -> str | None:
        """Every error in one line; None when there was none."""
        return "; ".join(self.errors) or None

    def summary(self) -> str:
        """One line for logs and `Outcome.error`."""
        if self.mode is None:
            return self.error or "failed"
        if self.ok:
            text = f"{self.mode}: serial {self.serial} deployed"
            if self.fallback:
                text += f" (after falling back to {self.fallback})"
        else:
            text = f"{self.mode}: " + (self.error or "failed")
        return text

    def log_fields(self) -> dict[str, Any]:
        """The fields ``haproxy_updated`` / ``haproxy_update_failed`` have always carried."""
        if self.mode is None:
            return {"error": self.error}
        return {
            "mode": self.mode,
            "fallback": self.fallback,
            "verified": self.verified,
            "error": self.error,
        }
