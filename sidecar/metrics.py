"""What the sidecar knows about its certificates, when it counts as ready, and its Prometheus text.

Pure: values in, values out; the time is always passed in. ``run`` builds one `CertStatus` per
certificate from its state and hands them, with the process-wide `Metrics`, to the health
server, which calls `readiness` for ``/readyz`` and `render` for ``/metrics``; ``status`` can use
the same values so that every view agrees.

This module is imported by ``cert-sidecar healthcheck``, which runs every few seconds inside the
container, so it deliberately imports nothing heavy (no cryptography, no structlog).

Readiness follows the contract (``--health-listen``): a certificate blocks readiness while it is
missing, a placeholder, expired, has less than 1/20 of its lifetime left, or is not what HAProxy
serves (only when that was checked). Failing to reach the CA does *not* make the sidecar unready:
the certificates HAProxy serves are still good, and restarting the container would not help; the
error shows in the ``/readyz`` body and in ``/metrics`` instead.
"""

from __future__ import annotations

import math
import platform
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sidecar import __version__
from sidecar.errors import ERROR_KINDS, ErrorKind

if TYPE_CHECKING:
    from sidecar.pem import CertFacts

__all__ = [
    "CERT_STATES",
    "CONTENT_TYPE",
    "ERROR_KINDS",
    "URGENT_FRACTION",
    "CertState",
    "CertStatus",
    "ErrorKind",
    "Metrics",
    "certificate_problems",
    "certificate_state",
    "escape_label_value",
    "readiness",
    "render",
    "status_from_facts",
    "status_to_json",
]

CertState = Literal["missing", "placeholder", "valid", "expired"]
CERT_STATES: tuple[CertState, ...] = ("missing", "placeholder", "valid", "expired")

# Same value as ``sidecar.policy.URGENT_FRACTION`` (a test keeps them equal): importing policy
# would pull in cryptography, which the healthcheck must not pay for every few seconds.
URGENT_FRACTION = 1 / 20

# Prometheus text exposition format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "cert_sidecar_"

RenewalResult = Literal["success", "failure"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CertStatus:
    """One certificate as the running sidecar sees it at one moment.

    Keyword-only; times are timezone-aware. ``serial`` is the certificate on disk (upper-case
    hex, as `sidecar.pem.CertFacts.serial_hex`); ``deployed_serial`` is what HAProxy reports
    with ``show ssl cert`` when a socket is configured, else the file's. ``served_matches`` is
    the result of the last check that HAProxy serves this certificate (runtime API or
    handshake), ``None`` when nothing was checked. ``last_failure`` is when an attempt to
    obtain it last failed; ``last_error_kind`` classifies the current ``last_error``
    (`sidecar.errors.error_kind`), ``None`` when there is none or it is not known.
    `status_from_facts` fills ``state``.
    """

    name: str
    domains: tuple[str, ...]
    state: CertState
    not_before: datetime | None = None
    not_after: datetime | None = None
    serial: str | None = None
    next_renewal: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    last_success: datetime | None = None
    is_placeholder: bool = False
    deployed_serial: str | None = None
    served_matches: bool | None = None
    last_failure: datetime | None = None
    last_error_kind: ErrorKind | None = None
    # For ``status`` only: the file exists but does not parse (``state`` says "missing", the one
    # state label /metrics has for "no usable certificate"), the policy's reason to renew now,
    # and when the stored backoff ends.
    unreadable: bool = False
    due: str | None = None
    next_retry_at: datetime | None = None


def certificate_state(not_after: datetime | None, is_placeholder: bool, now: datetime) -> CertState:
    """Classify a certificate; ``not_after`` is ``None`` when there is none at all."""
    if not_after is None:
        return "missing"
    if is_placeholder:
        return "placeholder"
    if now >= not_after:
        return "expired"
    return "valid"


def status_from_facts(
    name: str,
    domains: Sequence[str],
    facts: CertFacts | None,
    now: datetime,
    *,
    next_renewal: datetime | None = None,
    last_error: str | None = None,
    consecutive_failures: int = 0,
    last_success: datetime | None = None,
    deployed_serial: str | None = None,
    served_matches: bool | None = None,
    last_failure: datetime | None = None,
    last_error_kind: ErrorKind | None = None,
    unreadable: bool = False,
    due: str | None = None,
    next_retry_at: datetime | None = None,
) -> CertStatus:
    """Build a `CertStatus` from a described certificate (``None``: no usable certificate)."""
    common = CertStatus(
        name=name,
        domains=tuple(domains),
        state="missing",
        next_renewal=next_renewal,
        last_error=last_error,
        consecutive_failures=consecutive_failures,
        last_success=last_success,
        deployed_serial=deployed_serial,
        served_matches=served_matches,
        last_failure=last_failure,
        last_error_kind=last_error_kind,
        unreadable=unreadable,
        due=due,
        next_retry_at=next_retry_at,
    )
    if facts is None:
        return common
    return replace(
        common,
        not_before=facts.not_before,
        not_after=facts.not_after,
        serial=facts.serial_hex,
        is_placeholder=facts.is_placeholder,
        state=certificate_state(facts.not_after, facts.is_placeholder, now),
    )


# --- readiness ---------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def certificate_problems(status: CertStatus, now: datetime) -> list[str]:
    """Why this certificate keeps the sidecar from being ready; empty when it does not.

    Decided from the times and flags, with ``now``, rather than from ``status.state`` alone, so
    that a snapshot taken a moment before expiry still reports the expiry when it is read.
    """
    # Where no real certificate is there, the last error is why: say it with the problem, so
    # that `healthcheck` (Docker's health log) shows what to fix, not only that it is broken.
    why = f"; last error: {status.last_error}" if status.last_error else ""
    if status.state == "missing" or status.not_after is None:
        return [f"no certificate{why}"]
    problems: list[str] = []
    if status.is_placeholder or status.state == "placeholder":
        problems.append(f"placeholder certificate, not yet issued by the CA{why}")
    elif now >= status.not_after:
        problems.append(f"expired at {status.not_after.isoformat()}{why}")
    elif status.not_before is not None and status.not_after > status.not_before:
        lifetime = status.not_after - status.not_before
        if status.not_after - now < lifetime * URGENT_FRACTION:
            problems.append(
                f"under 1/20 of its lifetime left (expires {status.not_after.isoformat()})"
            )
    if status.served_matches is False:
        if status.deployed_serial and status.serial and status.deployed_serial != status.serial:
            problems.append(f"HAProxy serves serial {status.deployed_serial}, not {status.serial}")
        else:
            problems.append("HAProxy does not serve the current certificate")
    return problems


def readiness(statuses: Iterable[CertStatus], now: datetime) -> tuple[bool, list[str]]:
    """``/readyz``: ready unless some certificate has a problem; reasons are ``"<name>: ..."``.

    CA errors (``last_error``) are deliberately not reasons: see the module docstring.
    """
    reasons = [
        f"{status.name}: {problem}"
        for status in statuses
        for problem in certificate_problems(status, now)
    ]
    return not reasons, reasons


def status_to_json(status: CertStatus, now: datetime) -> dict[str, Any]:
    """One certificate for the ``/readyz`` body (and ``status --json``): JSON-ready values."""
    problems = certificate_problems(status, now)
    return {
        "name": status.name,
        "domains": list(status.domains),
        "state": status.state,
        "ready": not problems,
        "reasons": problems,
        "serial": status.serial,
        "deployed_serial": status.deployed_serial,
        "served_matches": status.served_matches,
        "not_before": _iso(status.not_before),
        "not_after": _iso(status.not_after),
        "next_renewal": _iso(status.next_renewal),
        "last_success": _iso(status.last_success),
        "consecutive_failures": status.consecutive_failures,
        "last_error": status.last_error,
    }


# --- counters and process-wide gauges ---------------------------------------------------------


class Metrics:
    """The process-wide counters and gauges that are not per certificate.

    Updated by the service loop as things happen; read by `render`. A lock keeps it safe if an
    update ever comes from a worker thread (apscheduler can run jobs in threads).
    """

    def __init__(self, *, deploy_mode: str | None = None) -> None:
        self._lock = threading.Lock()
        # Both results exist from the start so that rate() sees a 0 before the first event;
        # deploys likewise in the configured mode (``None``: the sidecar deploys nowhere).
        self._renewals: dict[str, int] = {"success": 0, "failure": 0}
        self._deploys: dict[tuple[str, str], int] = (
            {("success", deploy_mode): 0, ("failure", deploy_mode): 0} if deploy_mode else {}
        )
        self._haproxy_up: dict[str, bool] = {}
        self._ca_reachable: bool | None = None
        self._ca_error: str | None = None
        self._clock_skew: float | None = None
        self._not_configured: int | None = None

    def set_not_configured(self, count: int) -> None:
        """How many PEMs in the certs directory no configured certificate owns (orphans)."""
        with self._lock:
            self._not_configured = count

    @property
    def not_configured(self) -> int | None:
        return self._not_configured

    def record_renewal(self, result: RenewalResult) -> None:
        """One finished attempt to obtain a certificate (issue or renewal)."""
        if result not in ("success", "failure"):
            raise ValueError(f"renewal result must be 'success' or 'failure', not {result!r}")
        with self._lock:
            self._renewals[result] += 1

    def record_deploy(self, result: str, mode: str) -> None:
        """One deploy to HAProxy; ``mode`` is the reload mode actually used (after a fallback,
        the fallback's), ``result`` e.g. ``success`` or ``failure``."""
        if not result or not mode:
            raise ValueError("deploy result and mode must not be empty")
        with self._lock:
            key = (result, mode)
            self._deploys[key] = self._deploys.get(key, 0) + 1

    def set_haproxy_up(self, socket: str, up: bool) -> None:
        """The outcome of the last runtime-API exchange with one HAProxy socket; ``socket`` is
        the address as configured (a label value: it must never hold a secret)."""
        if not socket:
            raise ValueError("socket must not be empty")
        with self._lock:
            self._haproxy_up[socket] = up

    def set_ca_reachable(self, reachable: bool, error: str | None = None) -> None:
        """The outcome of the last exchange with the CA; ``error`` is a one-line message."""
        with self._lock:
            self._ca_reachable = reachable
            self._ca_error = None if reachable else error

    def set_clock_skew(self, seconds: float | None) -> None:
        """Local clock minus the CA's ``Date`` header, in seconds (``None``: not known)."""
        with self._lock:
            self._clock_skew = seconds

    @property
    def renewals(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._renewals)

    @property
    def deploys(self) -> Mapping[tuple[str, str], int]:
        with self._lock:
            return dict(self._deploys)

    @property
    def haproxy_up(self) -> Mapping[str, bool]:
        with self._lock:
            return dict(self._haproxy_up)

    @property
    def ca_reachable(self) -> bool | None:
        return self._ca_reachable

    @property
    def ca_error(self) -> str | None:
        return self._ca_error

    @property
    def clock_skew(self) -> float | None:
        return self._clock_skew


# --- Prometheus text exposition format 0.0.4 ---------------------------------------------------


def escape_label_value(value: str) -> str:
    """Exposition format: in a label value, backslash, double quote and line feed are escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    # HELP text escapes only backslash and line feed.
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Family:
    def __init__(self, name: str, kind: Literal["gauge", "counter"], help_text: str) -> None:
        self.name = _PREFIX + name
        self.kind = kind
        self.help_text = help_text
        self.samples: list[tuple[tuple[tuple[str, str], ...], float]] = []

    def add(self, value: float | None, **labels: str) -> None:
        if value is not None:
            self.samples.append((tuple(labels.items()), value))

    def lines(self) -> list[str]:
        out = [
            f"# HELP {self.name} {_escape_help(self.help_text)}",
            f"# TYPE {self.name} {self.kind}",
        ]
        for labels, value in self.samples:
            label_text = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in labels)
            sample = f"{self.name}{{{label_text}}}" if labels else self.name
            out.append(f"{sample} {_format_value(value)}")
        return out


def _timestamp(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


# A per-certificate family's samples for one certificate: (value, labels after ``name``); a
# ``None`` value is left out.
_CertSamples = Callable[[CertStatus, datetime], Sequence[tuple[float | None, Mapping[str, str]]]]


def _one(value: float | None) -> Sequence[tuple[float | None, Mapping[str, str]]]:
    return [(value, {})]


def _flag(flag: bool) -> int:
    return 1 if flag else 0


# The per-certificate families in exposition order: name, HELP text, samples per certificate.
_CERTIFICATE_FAMILIES: tuple[tuple[str, str, _CertSamples], ...] = (
    (
        "certificate_not_before_timestamp_seconds",
        "Certificate notBefore, Unix time.",
        lambda status, now: _one(_timestamp(status.not_before)),
    ),
    (
        "certificate_not_after_timestamp_seconds",
        "Certificate notAfter, Unix time.",
        lambda status, now: _one(_timestamp(status.not_after)),
    ),
    (
        "certificate_next_renewal_timestamp_seconds",
        "When the next renewal (or retry) of the certificate is scheduled, Unix time.",
        lambda status, now: _one(_timestamp(status.next_renewal)),
    ),
    (
        "certificate_consecutive_failures",
        "Failed renewal attempts since the certificate's last success.",
        lambda status, now: _one(status.consecutive_failures),
    ),
    (
        "certificate_last_success_timestamp_seconds",
        "When the certificate was last obtained successfully, Unix time.",
        lambda status, now: _one(_timestamp(status.last_success)),
    ),
    (
        "certificate_is_placeholder",
        "1 while the certificate is the self-signed placeholder.",
        lambda status, now: _one(_flag(status.is_placeholder)),
    ),
    (
        "certificate_ready",
        "1 when the certificate does not block readiness.",
        lambda status, now: _one(_flag(not certificate_problems(status, now))),
    ),
    (
        "certificate_state",
        "1 for the certificate's current state (missing, placeholder, valid, expired).",
        lambda status, now: [
            (_flag(status.state == candidate), {"state": candidate}) for candidate in CERT_STATES
        ],
    ),
    (
        "certificate_info",
        "The certificate on disk; the serial is in a label.",
        lambda status, now: [] if status.serial is None else [(1, {"serial": status.serial})],
    ),
    (
        "certificate_deployed_info",
        "The certificate HAProxy reports (show ssl cert) or, without a socket, the file's; "
        "the serial is in a label.",
        lambda status, now: (
            [] if status.deployed_serial is None else [(1, {"serial": status.deployed_serial})]
        ),
    ),
    (
        "certificate_served_matches",
        "1 when the last check found HAProxy serving the current certificate, 0 when not.",
        lambda status, now: (
            [] if status.served_matches is None else _one(_flag(status.served_matches))
        ),
    ),
    (
        "certificate_last_failure_timestamp_seconds",
        "When an attempt to obtain the certificate last failed, Unix time.",
        lambda status, now: _one(_timestamp(status.last_failure)),
    ),
    (
        "certificate_last_error_info",
        "1 while the certificate's renewal is failing; the kind of its last error is in a label "
        "(" + ", ".join(ERROR_KINDS) + ").",
        lambda status, now: (
            [] if status.last_error_kind is None else [(1, {"kind": status.last_error_kind})]
        ),
    ),
)


def _process_families(statuses: Sequence[CertStatus], now: datetime) -> list[_Family]:
    build = _Family("build_info", "gauge", "Build information; always 1.")
    build.add(1, version=__version__, python=platform.python_version())
    ready, _ = readiness(statuses, now)
    ready_family = _Family(
        "ready", "gauge", "1 when /readyz answers 200: no certificate blocks readiness."
    )
    ready_family.add(_flag(ready))
    certificates = _Family("certificates", "gauge", "Number of configured certificates.")
    certificates.add(len(statuses))
    return [build, ready_family, certificates]


def _certificate_families(statuses: Sequence[CertStatus], now: datetime) -> list[_Family]:
    families = []
    for name, help_text, samples in _CERTIFICATE_FAMILIES:
        family = _Family(name, "gauge", help_text)
        for status in statuses:
            for value, labels in samples(status, now):
                family.add(value, name=status.name, **labels)
        families.append(family)
    return families


def _activity_families(metrics: Metrics) -> list[_Family]:
    renewals = _Family("renewals_total", "counter", "Attempts to obtain a certificate, by result.")
    for result, count in sorted(metrics.renewals.items()):
        renewals.add(count, result=result)
    deploys = _Family(
        "haproxy_deploys_total", "counter", "Certificate deploys to HAProxy, by result and mode."
    )
    for (result, mode), count in sorted(metrics.deploys.items()):
        deploys.add(count, result=result, mode=mode)
    haproxy_up = _Family(
        "haproxy_up",
        "gauge",
        "1 when the last exchange with HAProxy's runtime API on the socket succeeded, 0 when "
        "it failed; the socket as configured.",
    )
    for socket, up in sorted(metrics.haproxy_up.items()):
        haproxy_up.add(_flag(up), socket=socket)
    ca_reachable = _Family(
        "ca_reachable", "gauge", "1 when the last exchange with the ACME CA succeeded."
    )
    if metrics.ca_reachable is not None:
        ca_reachable.add(_flag(metrics.ca_reachable))
    skew = _Family(
        "clock_skew_seconds",
        "gauge",
        "Local clock minus the CA's Date header, in seconds, at the last exchange.",
    )
    skew.add(metrics.clock_skew)
    not_configured = _Family(
        "certificates_not_configured",
        "gauge",
        "PEMs in the certs directory that no configured certificate owns: still served by "
        "HAProxy, never renewed (remove with revoke NAME --remove).",
    )
    not_configured.add(metrics.not_configured)
    return [renewals, deploys, haproxy_up, ca_reachable, skew, not_configured]


def render(statuses: Sequence[CertStatus], metrics: Metrics, now: datetime) -> str:
    """All metrics as Prometheus text (format 0.0.4); ends with a newline.

    Samples whose value is unknown (no certificate yet, no success yet, CA not asked yet) are
    left out rather than given a made-up value.
    """
    families = [
        *_process_families(statuses, now),
        *_certificate_families(statuses, now),
        *_activity_families(metrics),
    ]
    lines = [line for family in families for line in family.lines()]
    return "\n".join(lines) + "\n"
