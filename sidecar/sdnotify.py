"""systemd's notify protocol for `cert-sidecar run`: READY, STATUS, STOPPING, RELOADING, WATCHDOG.

Under systemd (``Type=notify``, or podman's ``Notify=true``, which hands the container the unit's
``NOTIFY_SOCKET``) the sidecar says:

- ``READY=1`` once, when every configured certificate has a file HAProxy can load (a placeholder
  counts), so that ``After=cert-sidecar.service`` in HAProxy's unit means "its files are there";
- ``STATUS=<one line>`` at start and after each check: what is served, the next renewal, the
  last error; ``systemctl status`` shows it;
- ``STOPPING=1`` at shutdown, ``RELOADING=1`` ... ``READY=1`` around a config reload;
- ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` from a task on the event loop, so a loop that hangs
  stops the pings and systemd (``WatchdogSec=``) restarts the service.

The protocol (sd_notify(3)): each message is a datagram of ``KEY=VALUE`` lines sent to the
AF_UNIX SOCK_DGRAM socket named by ``NOTIFY_SOCKET``, a path, or an abstract name written
``@name``. Nobody answers.

Podman puts conmon in between. conmon before 2.1.10 forwarded only ``READY=1`` and
``WATCHDOG=1``, and found them with a substring search over the whole datagram: so each message
here is a datagram of its own, and a STATUS text never carries anything shaped like ``KEY=``
(a CA's error text saying ``READY=1`` would otherwise mark the service ready). Later conmon
forwards STATUS, STOPPING and RELOADING too.

Failure policy: the notifications are a courtesy to the supervisor, never a reason to stop
serving certificates. Without ``NOTIFY_SOCKET`` nothing is done at all; a socket that cannot be
reached is logged once and the sidecar goes on; sends never block the event loop (a full socket
buffer drops the message: the next STATUS or ping replaces it). The variables never reach a
child process (`ca_client.childenv.SUPERVISOR_NAMES`).

The pure parts (addresses, the watchdog interval, message and STATUS text) come first, then
`Notifier` (the socket), then `ServiceNotify` (when the service says what).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from sidecar.errors import error_text, one_line, os_error_text
from sidecar.logs import get_logger
from sidecar.metrics import CertStatus

__all__ = [
    "Notifier",
    "NotifyEnvironment",
    "NotifySocketError",
    "ServiceNotify",
    "every_file_in_place",
    "format_message",
    "notify_environment",
    "socket_address",
    "status_line",
    "status_text",
    "watchdog_interval",
]

log = get_logger("sidecar.sdnotify")

#: `sockaddr_un.sun_path` is 108 bytes on Linux, the terminating NUL included for a path.
_SUN_PATH_MAX: Final = 108
#: systemd shows STATUS on one line of `systemctl status`; longer text is cut there anyway.
STATUS_MAX: Final = 160
#: How much of an error a STATUS line carries (the whole text is in the log and `status`).
ERROR_MAX: Final = 60
#: The most room the names take in a STATUS line with several certificates.
NAMES_MAX: Final = 60
#: At most one STATUS computation per this many seconds: a renewal pass over many
#: certificates ends in one check after another, and each asks for a new line.
STATUS_MIN_INTERVAL: Final = 1.0
#: The shortest ping interval honoured: a WATCHDOG_USEC of a few microseconds must not turn
#: the watchdog into a busy loop.
WATCHDOG_MIN_INTERVAL: Final = 0.01

# Anything shaped like a notify assignment ("READY=", "WATCHDOG=", "MAINPID=") in free text.
_ASSIGNMENT: Final = re.compile(r"([A-Z][A-Z0-9_]*)=")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class NotifySocketError(ValueError):
    """``NOTIFY_SOCKET`` names nothing this process can send to; ``str()`` says why."""


# --- pure: environment, messages, STATUS text ---------------------------------------------------


def socket_address(value: str) -> str | bytes:
    """The address to send to for a ``NOTIFY_SOCKET`` value: a path, or ``b"\\0name"`` for
    ``@name`` (the abstract namespace). Raises `NotifySocketError` for anything else."""
    if not value:
        raise NotifySocketError("NOTIFY_SOCKET is empty")
    if value.startswith("@"):
        name = value[1:].encode()
        if not name:
            raise NotifySocketError("NOTIFY_SOCKET names an empty abstract socket")
        if len(name) + 1 > _SUN_PATH_MAX:
            raise NotifySocketError(f"NOTIFY_SOCKET is too long ({len(name) + 1} bytes)")
        return b"\0" + name
    if not value.startswith("/"):
        # systemd only ever passes absolute paths (or "vsock:" for a VM, which is not ours).
        raise NotifySocketError(f"NOTIFY_SOCKET is not an absolute path: {value[:64]!r}")
    if len(os.fsencode(value)) >= _SUN_PATH_MAX:
        raise NotifySocketError(f"NOTIFY_SOCKET is too long ({len(os.fsencode(value))} bytes)")
    return value


def watchdog_interval(environ: Mapping[str, str], pid: int) -> tuple[float | None, str | None]:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    advises), or ``None``; and why a watchdog setting was ignored, when it was.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for: another one (a
    parent that kept the variable in our environment) means it is not ours.
    """
    raw = environ.get("WATCHDOG_USEC")
    if raw is None:
        return None, None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid):
        return None, None
    try:
        usec = int(raw.strip())
    except ValueError:
        return None, f"WATCHDOG_USEC is not a number of microseconds: {raw[:32]!r}"
    if usec <= 0:
        return None, f"WATCHDOG_USEC must be positive: {usec}"
    return max(usec / 2 / 1_000_000, WATCHDOG_MIN_INTERVAL), None


@dataclass(frozen=True)
class NotifyEnvironment:
    """What the environment asks for: where to send (``None``: not under a notify-aware
    supervisor), the watchdog interval, and any problem worth one warning."""

    address: str | bytes | None
    watchdog: float | None
    problems: tuple[str, ...] = ()


def notify_environment(environ: Mapping[str, str], pid: int) -> NotifyEnvironment:
    """Read the protocol's variables (pure: ``environ`` and ``pid`` are given)."""
    value = environ.get("NOTIFY_SOCKET")
    if value is None:
        return NotifyEnvironment(None, None)
    problems: list[str] = []
    address: str | bytes | None
    try:
        address = socket_address(value)
    except NotifySocketError as error:
        address, problems = None, [str(error)]
    interval, problem = watchdog_interval(environ, pid)
    if problem:
        problems.append(problem)
    if address is None:
        interval = None
    return NotifyEnvironment(address, interval, tuple(problems))


def status_text(text: str, limit: int = STATUS_MAX) -> str:
    """Free text made safe for a ``STATUS=`` value: one line, no control characters, nothing
    shaped like ``KEY=`` (see the module docstring), at most ``limit`` characters."""
    text = one_line(_CONTROL.sub(" ", text))
    text = _ASSIGNMENT.sub(r"\1:", text)
    if "PRIVATE KEY" in text:  # never expected; the logs' redaction rule, applied here too
        text = "[redacted]"
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def format_message(*assignments: tuple[str, str]) -> bytes:
    """One datagram: ``KEY=VALUE`` lines. Values are made single-line here, since a newline
    would start another assignment."""
    lines = []
    for key, value in assignments:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ValueError(f"not a notify variable name: {key!r}")
        lines.append(f"{key}={one_line(_CONTROL.sub(' ', value))}")
    return "\n".join(lines).encode()


def _when(moment: datetime, now: datetime | None = None) -> str:
    """``2026-12-07 21:10 UTC``; only ``21:10 UTC`` when ``now`` is given and it is that day
    (a retry is minutes away; a renewal is read next to no date at all)."""
    moment = moment.astimezone(UTC)
    if now is not None and moment.date() == now.astimezone(UTC).date():
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _error_phrase(status: CertStatus, now: datetime) -> str:
    error = status_text(status.last_error or "", ERROR_MAX)
    retry = f" (retry {_when(status.next_retry_at, now)})" if status.next_retry_at else ""
    return f"{status.name}: last error: {error}{retry}"


def _cert_phrase(status: CertStatus, now: datetime) -> str:
    """One certificate's state, as the single-certificate STATUS line says it."""
    if status.state == "missing":
        return f"{status.name}: no certificate yet"
    if status.state == "placeholder":
        return f"{status.name}: placeholder served, waiting for the first certificate"
    serial = status.deployed_serial or status.serial or "?"
    expired = " EXPIRED" if status.state == "expired" else ""
    renewal = f", next renewal {_when(status.next_renewal)}" if status.next_renewal else ""
    return f"{status.name} serial {serial} served{expired}{renewal}"


def _names(statuses: Sequence[CertStatus], room: int) -> str:
    """``a.example, b.example +3 more`` in at most ``room`` characters ("" if not even one
    name fits)."""
    shown: list[str] = []
    for count, status in enumerate(statuses, start=1):
        rest = len(statuses) - count
        candidate = ", ".join([*shown, status.name]) + (f" +{rest} more" if rest else "")
        if len(candidate) > room:
            break
        shown.append(status.name)
    if not shown:
        return ""
    rest = len(statuses) - len(shown)
    return ", ".join(shown) + (f" +{rest} more" if rest else "")


def status_line(statuses: Sequence[CertStatus], now: datetime) -> str:
    """The ``STATUS=`` text for the certificates as they are now (pure; ``now`` is aware).

    One certificate: its serial served and next renewal, or its last error. Several: how many
    are served, the soonest renewal, and the first failing one's error.
    """
    if not statuses:
        return "no certificates configured"
    failing = [s for s in statuses if s.last_error]
    if len(statuses) == 1:
        only = statuses[0]
        line = _error_phrase(only, now) if failing else f"1 certificate: {_cert_phrase(only, now)}"
        return status_text(line)
    served = sum(1 for s in statuses if s.state in ("valid", "expired"))
    parts = [f"{served} served"]
    for state in ("placeholder", "missing", "expired"):
        count = sum(1 for s in statuses if s.state == state)
        if count:
            parts.append(f"{count} {state}")
    head = f"{len(statuses)} certificates"
    error = f"; {len(failing)} failing, {_error_phrase(failing[0], now)}" if failing else ""
    upcoming = [s for s in statuses if s.next_renewal is not None and s.state == "valid"]
    if upcoming:
        soonest = min(upcoming, key=lambda s: s.next_renewal or now)
        assert soonest.next_renewal is not None
        renewal = f"next renewal {_when(soonest.next_renewal)}"
        # Which certificate renews first, when the error leaves room for its name.
        named = f"{renewal} ({soonest.name})"
        fits = len(head) + len(", ".join([*parts, named])) + len(error) + 2 <= STATUS_MAX
        parts.append(named if fits else renewal)
    summary = ", ".join(parts) + error
    # The names get what room is left: the counts and the error matter more.
    names = _names(statuses, min(NAMES_MAX, STATUS_MAX - len(head) - len(summary) - 5))
    return status_text(f"{head} ({names}): {summary}" if names else f"{head}: {summary}")


def every_file_in_place(statuses: Sequence[CertStatus]) -> bool:
    """Whether each certificate has a file HAProxy can load (a placeholder or an expired
    certificate loads; a missing or unparseable file does not)."""
    return bool(statuses) and all(s.state != "missing" for s in statuses)


# --- I/O: the socket ------------------------------------------------------------------------------


class Notifier:
    """Sends notify messages to ``NOTIFY_SOCKET``; does nothing when there is none.

    Never raises and never blocks: the socket is non-blocking, a full buffer drops the message,
    and only the first failure is a warning (later ones are logged at debug level: a watchdog
    pinging a socket that is gone would otherwise fill the journal).
    """

    def __init__(self, address: str | bytes | None, *, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog if address is not None else None
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        found = notify_environment(
            os.environ if environ is None else environ, os.getpid() if pid is None else pid
        )
        notifier = cls(found.address, watchdog=found.watchdog)
        for problem in found.problems[:1]:  # at most one warning for a broken environment
            notifier._warn_once(problem)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: tuple[str, str]) -> bool:
        """Send one datagram; whether it left. Never raises."""
        if self.address is None:
            return False
        try:
            data = format_message(*assignments)
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto(data, self.address)
        except BlockingIOError:
            # The supervisor is not reading (or is stopped): drop it, the next one replaces it.
            log.debug("sd_notify_dropped", message=assignments[0][0] if assignments else "")
            return False
        except OSError as error:
            self._warn_once(os_error_text(error))
            return False
        except ValueError as error:  # a message this module should not have built
            self._warn_once(error_text(error))
            return False
        return True

    def _warn_once(self, problem: str) -> None:
        if self._warned:
            log.debug("sd_notify_failed", problem=problem)
        else:
            log.warning("sd_notify_failed", problem=problem, socket=self._shown_address())
        self._warned = True

    def _shown_address(self) -> str | None:
        if isinstance(self.address, bytes):
            return "@" + self.address[1:].decode(errors="replace")
        return self.address

    async def watchdog(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping every `watchdog_interval` seconds from the event loop, forever (cancel it).

        Being a task on the loop is the point: a loop that hangs (a blocking call, a busy
        coroutine) stops the pings, and systemd restarts the service. ``healthy`` can withhold
        a ping for a process whose loop runs but which is broken in a way it can see."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            if healthy is None or healthy():
                self.send(("WATCHDOG", "1"))
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


# --- when the service says what -------------------------------------------------------------------


class ServiceNotify:
    """The service's side of the protocol: READY once, STATUS kept current (at most once per
    `STATUS_MIN_INTERVAL`), STOPPING, RELOADING around a reload, the watchdog task.

    ``statuses`` is the one status of every certificate (`Service.statuses`), ``waiting_for``
    the CA bundle while the service waits for it (else ``None``); both are asked only when a
    notify socket exists.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        statuses: Callable[[], Sequence[CertStatus]],
        waiting_for: Callable[[], Path | None],
        now: Callable[[], datetime],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self._statuses = statuses
        self._waiting_for = waiting_for
        self._now = now
        self._clock = clock
        self.ready_sent = False
        self._stopping = False
        self._reloading = False
        self._last_status: str | None = None
        self._last_status_at: float | None = None
        self._pending: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    def started(self) -> None:
        """The start-up files are written (placeholders, when on): READY if each certificate
        has a file, and the first STATUS (the CA bundle has not been looked at yet, so it says
        nothing of it)."""
        self.update(bundle_known=False)

    def changed(self) -> None:
        """Something a STATUS line shows may have changed (a check ended, the bundle came):
        update it soon, at most once per `STATUS_MIN_INTERVAL`."""
        if not self.enabled or self._pending is not None or self._stopping:
            return
        delay = 0.0
        if self._last_status_at is not None:
            delay = max(0.0, self._last_status_at + STATUS_MIN_INTERVAL - self._clock())
        self._pending = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.update()

    def update(self, *, bundle_known: bool = True) -> None:
        """Send READY (the first time every file is in place) and STATUS now."""
        if not self.enabled or self._stopping:
            return
        self._last_status_at = self._clock()
        try:
            waiting = self._waiting_for() if bundle_known else None
            statuses = self._statuses()
            line = (
                status_text(f"waiting for CA bundle {waiting}")
                if waiting is not None
                else status_line(statuses, self._now())
            )
            in_place = every_file_in_place(statuses)
        except Exception as error:  # a status is not worth a crash of the service
            log.debug("sd_notify_status_failed", error=error_text(error))
            return
        if in_place and not self.ready_sent and not self._reloading:
            self.ready_sent = True
            self.notifier.send(("READY", "1"))
            log.info("sd_notify_ready")
        if line != self._last_status:
            self._last_status = line
            self.notifier.send(("STATUS", line))

    def reloading(self) -> None:
        """A config reload begins (only said once READY was, as systemd expects READY after)."""
        if self.enabled and self.ready_sent and not self._stopping:
            self._reloading = True
            monotonic_usec = str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
            self.notifier.send(("RELOADING", "1"), ("MONOTONIC_USEC", monotonic_usec))

    def reloaded(self) -> None:
        if self._reloading:
            self._reloading = False
            if not self._stopping:
                self.notifier.send(("READY", "1"))
            self.changed()

    def stopping(self) -> None:
        if self.enabled and not self._stopping:
            self._stopping = True
            if self._pending is not None:
                self._pending.cancel()
                self._pending = None
            self.notifier.send(("STOPPING", "1"))
            self.notifier.send(("STATUS", "stopping"))

    async def watchdog(self, healthy: Callable[[], bool] | None = None) -> None:
        await self.notifier.watchdog(healthy)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self.notifier.close()
