"""The control socket: one-shot commands hand their work to a running ``cert-sidecar run``.

While ``run`` is active it holds the challenge ports and schedules every certificate, so
``issue``, ``renew`` and ``revoke`` must not compete with it: they send their request over
``<state_dir>/control.sock`` and exit with the answer (CONTRACT: "While ``run`` is active ...").

Protocol: a Unix stream socket, one request per connection, each message one line of JSON::

    -> {"command": "renew", "force": true, "dry_run": false}
    <- {"ok": true, "exit_code": 0, "results": [...], "error": null}

Each result of ``issue``, ``renew``, ``revoke`` and ``remove-orphan`` is one
`sidecar.outcome.Outcome`, deploy report included: this module is where it becomes JSON
(`outcome_to_json`, `outcomes_answer`) and where a one-shot rebuilds what it prints from that
JSON (`outcome_from_json`). Nothing before this edge handles an outcome as JSON.

Commands are ``renew`` (``force``, ``dry_run``), ``issue`` (``force``), ``revoke`` (``name``,
``reason``, ``remove``), ``remove-orphan`` (``name``: ``revoke --remove`` of a name no longer
configured), ``status`` (the answer adds ``not_configured``; asked when the config file does
not load) and ``settings`` (the answer adds ``work``, `config.work_fingerprint`: a one-shot
asks it first, and refuses to hand over work whose settings differ). The server adds
``peer_uid``, ``peer_gid`` and ``peer_pid`` (from ``SO_PEERCRED``, so the client cannot forge
them) before calling the handler.

Access: the socket is mode 0600, so only the sidecar's user (and root) can connect; the server
also refuses peers with another uid, in case the state directory's permissions are loose, and
refuses every peer whose credentials it cannot read (no ``SO_PEERCRED``): it fails closed.

Input is bounded before it is trusted: one line of at most ``MAX_REQUEST_BYTES``, JSON nested at
most ``MAX_JSON_DEPTH`` deep (deeper input would exhaust the parser's recursion), and the
options typed strictly: ``"force": "false"`` is an error, not a true value.
The socket file is bound in a private directory, given its mode, then renamed into place, so it
is never reachable with a looser mode (no process-wide ``umask`` juggling while threads run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import structlog

from ca_client.lifecycle import StartStop
from sidecar.deploy_result import DeployResult
from sidecar.errors import OperationError, error_text, one_line, os_error_text
from sidecar.outcome import Action, Outcome

__all__ = [
    "ANSWER_KEYS",
    "DEFAULT_TIMEOUT",
    "SOCKET_NAME",
    "ControlError",
    "ControlProtocolError",
    "ControlServer",
    "ControlSocketBusy",
    "ControlTimeout",
    "Handler",
    "make_answer",
    "outcome_from_json",
    "outcome_to_json",
    "outcomes_answer",
    "request",
    "socket_path",
]

log = structlog.get_logger(__name__)

SOCKET_NAME = "control.sock"
# A renewal of many certificates against a slow CA can take minutes; the client waits this long.
DEFAULT_TIMEOUT = 15 * 60.0
MAX_REQUEST_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # ``status`` for 1,000 certificates is well below this
REQUEST_READ_TIMEOUT = 10.0  # a client writes its one line right after connecting
PROBE_TIMEOUT = 2.0
ANSWER_KEYS = ("ok", "exit_code", "results", "error")
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_BIND_DIR_PREFIX = ".ctl"  # a dot-file, like every temporary file the sidecar makes
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: Deepest nesting of arrays and objects accepted in a message; requests use 1.
MAX_JSON_DEPTH = 32
#: Request options: their JSON types and how to name them; absent or null is allowed for each.
_OPTION_TYPES: Final[Mapping[str, tuple[type | tuple[type, ...], str]]] = {
    "force": (bool, "true or false"),
    "dry_run": (bool, "true or false"),
    "remove": (bool, "true or false"),
    "name": (str, "a string"),
    "reason": ((int, str), "a number or a reason name"),
}

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(OperationError):
    """The control socket could not be used: the message says why in one line."""


class ControlTimeout(ControlError):
    """The running sidecar did not answer within the client's timeout."""


class ControlProtocolError(ControlError):
    """A message that does not follow the protocol (not JSON, wrong shape)."""


class ControlSocketBusy(ControlError):
    """Another live process already answers on the control socket."""


def socket_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / SOCKET_NAME


def make_answer(
    ok: bool,
    exit_code: int,
    results: Sequence[Any] = (),
    error: str | None = None,
) -> dict[str, Any]:
    """An answer in the protocol's shape (handlers may use it; the server uses it for errors)."""
    return {
        "ok": ok,
        "exit_code": exit_code,
        "results": list(results),
        "error": None if error is None else one_line(error),
    }


# --- results: outcomes as the protocol carries them ---------------------------------------------


def outcomes_answer(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The answer to a command that did one step per certificate: ok (exit code 0) only when
    every step was."""
    ok = all(outcome.ok for outcome in outcomes)
    return make_answer(ok, 0 if ok else 1, results=[outcome_to_json(o) for o in outcomes])


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    """One result as the control socket sends it (``error_kind`` is for /metrics: left out)."""
    return {
        "name": outcome.name,
        "action": str(outcome.action),
        "ok": outcome.ok,
        "serial": outcome.serial,
        "not_after": outcome.not_after.isoformat() if outcome.not_after else None,
        "reason": outcome.reason,
        "error": outcome.error,
        "next_retry_at": outcome.next_retry_at.isoformat() if outcome.next_retry_at else None,
        "deploy": _deploy_to_json(outcome.deploy) if outcome.deploy is not None else {},
    }


def _deploy_to_json(result: DeployResult) -> dict[str, Any]:
    """The deployer's full report; only ``{"ok": false, "error": ...}`` when it raised."""
    if result.mode is None:
        return {"ok": False, "error": result.error}
    data = asdict(result)
    data["verified"] = result.verified
    data["error"] = result.error
    return data


def outcome_from_json(data: Mapping[str, Any]) -> Outcome:
    """What a one-shot prints (`Outcome.line`), rebuilt from a result of the running sidecar.

    The deploy report is not rebuilt: no line shows it. Lenient, as the answer may come from
    an older or newer sidecar: an action this release does not know reads as a failure.
    """

    def when(key: str) -> datetime | None:
        value = data.get(key)
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    try:
        action = Action(str(data.get("action")))
    except ValueError:  # a newer sidecar's action: print it as a failure, never crash
        action = Action.FAILED
    return Outcome(
        name=str(data.get("name", "?")),
        action=action,
        ok=bool(data.get("ok")),
        serial=data.get("serial"),
        not_after=when("not_after"),
        reason=data.get("reason"),
        error=data.get("error"),
        next_retry_at=when("next_retry_at"),
    )


def _validate_answer(answer: object) -> dict[str, Any]:
    """Check an answer's shape; `ControlProtocolError` names what is wrong."""
    if not isinstance(answer, dict):
        raise ControlProtocolError("the answer is not a JSON object")
    ok = answer.get("ok")
    exit_code = answer.get("exit_code")
    if not isinstance(ok, bool):
        raise ControlProtocolError("'ok' is missing or not a boolean")
    if not isinstance(exit_code, int) or isinstance(exit_code, bool):
        raise ControlProtocolError("'exit_code' is missing or not an integer")
    results = answer.get("results", [])
    if not isinstance(results, list):
        raise ControlProtocolError("'results' is not a list")
    error = answer.get("error")
    if error is not None and not isinstance(error, str):
        raise ControlProtocolError("'error' is not a string")
    return {**answer, "results": results, "error": error}


def _json_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``data`` nests arrays/objects deeper than ``limit`` (strings skipped).

    ``json.loads`` recurses once per level and raises ``RecursionError`` (not ``ValueError``)
    near a thousand levels, so the depth is checked before parsing.
    """
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def _decode(line: bytes) -> object:
    """One JSON message; ``ValueError`` for anything that is not bounded, valid JSON."""
    if _json_too_deep(line):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(line)
    except RecursionError:  # belt and braces: the depth check should make this unreachable
        raise ValueError("nested too deeply") from None


def _option_error(payload: Mapping[str, Any]) -> str | None:
    """Why a request's options are mistyped, or None. Strict: ``"false"`` is not a boolean."""
    for key, (kind, wanted) in _OPTION_TYPES.items():
        value = payload.get(key)
        if value is None:
            continue
        # bool is an int in Python: true must not pass as a reason code.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            return f"'{key}' must be {wanted}, not {json.dumps(value)[:40]}"
    return None


def _encode(message: Mapping[str, Any]) -> bytes:
    # default=str: results may carry datetimes or paths; a readable string beats a failed answer.
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def _peer_credentials(writer: asyncio.StreamWriter) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the connecting process, from the kernel (``SO_PEERCRED``); None
    when the platform or the socket cannot tell (the caller then refuses the peer)."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size)
    except OSError:
        return None
    if len(raw) != _PEERCRED.size:
        return None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


# --- server ------------------------------------------------------------------------------------


class ControlServer(StartStop):
    """Serve the control socket at ``path``, calling ``handler`` once per request.

    Start refuses (`ControlSocketBusy`) when another live server answers at ``path`` and removes
    a socket file left by a dead process. Close removes the socket file if it is still ours and
    cancels requests in progress, answering them with an error.
    """

    def __init__(self, path: str | os.PathLike[str], handler: Handler) -> None:
        self._path = Path(path)
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        if self._server is not None:
            return
        # The socket is first bound at <dir>/.ctlXXXXXXXX/s (see _bind), a little longer.
        bind_path = self._path.parent / f"{_BIND_DIR_PREFIX}XXXXXXXX" / "s"
        if max(len(os.fsencode(self._path)), len(os.fsencode(bind_path))) > _MAX_SOCKET_PATH:
            raise ControlError(
                f"control socket path {self._path} is longer than {_MAX_SOCKET_PATH} bytes; "
                "use a shorter --state-dir"
            )
        await self._claim_path()
        sock = self._bind()
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connection, sock=sock, limit=MAX_REQUEST_BYTES
            )
        except BaseException:
            sock.close()
            self._remove_socket_file()
            raise
        log.info("control_socket_listening", path=str(self._path))

    async def _claim_path(self) -> None:
        """Make sure nothing else owns ``path``: remove a stale socket, refuse a live one."""
        try:
            info = self._path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ControlError(f"{self._path} exists and is not a socket; remove it")
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                _, writer = await asyncio.open_unix_connection(str(self._path))
        except (ConnectionRefusedError, FileNotFoundError):
            # Nothing listens: the file was left by a process that died without cleaning up.
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            log.info("control_socket_stale_removed", path=str(self._path))
            return
        except TimeoutError as exc:
            raise ControlSocketBusy(
                f"{self._path} is held by a process that does not answer; "
                "is another cert-sidecar run active?"
            ) from exc
        except OSError as exc:
            raise ControlError(f"cannot check {self._path}: {os_error_text(exc)}") from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise ControlSocketBusy(f"another cert-sidecar run is active: it answers on {self._path}")

    def _bind(self) -> socket.socket:
        directory = self._path.parent
        try:
            private = Path(tempfile.mkdtemp(prefix=_BIND_DIR_PREFIX, dir=directory))  # mode 0700
        except OSError as exc:
            raise ControlError(
                f"cannot create the control socket in {directory}: {os_error_text(exc)}"
            ) from exc
        temporary = private / "s"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(temporary))
            os.chmod(temporary, 0o600)
            os.rename(temporary, self._path)
            self._inode = self._path.stat().st_ino
            sock.listen(16)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self._remove_socket_file()
            raise ControlError(
                f"cannot create the control socket {self._path}: {os_error_text(exc)}"
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()
            with contextlib.suppress(OSError):
                private.rmdir()
        return sock

    def _remove_socket_file(self) -> None:
        """Unlink the socket file only if it is still the one we bound (not a successor's)."""
        if self._inode is None:
            return
        with contextlib.suppress(OSError):
            if self._path.stat().st_ino == self._inode:
                self._path.unlink()
        self._inode = None

    async def aclose(self, *, finish: bool = False) -> None:
        """Stop listening and remove the socket file. Requests in progress are cancelled and
        told that the sidecar stopped, unless ``finish``: then they run to the end and get
        their real answer (the socket moves, the sidecar keeps running)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._remove_socket_file()
        if not finish:
            for task in list(self._connections):
                task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
        log.info("control_socket_closed", path=str(self._path))

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            answer = await self._serve_one(reader, writer)
            if answer is not None:
                writer.write(_encode(answer))
                await writer.drain()
        except asyncio.CancelledError:
            # Shutting down in the middle of a request (aclose cancels us): tell the client
            # rather than hang up. Not re-raised: this task is the connection's own leaf task,
            # and asyncio (3.11) would log a cancelled connection task as an unhandled error.
            with contextlib.suppress(Exception):
                writer.write(
                    _encode(
                        make_answer(False, 1, error="the running sidecar stopped before finishing")
                    )
                )
        except ConnectionError:
            pass  # the client gave up; the work it asked for has been done anyway
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(REQUEST_READ_TIMEOUT):
                line = await reader.readline()
        except TimeoutError:
            return make_answer(False, 2, error="no request received")
        except ValueError:  # readline's form of LimitOverrunError
            return make_answer(False, 2, error=f"request longer than {MAX_REQUEST_BYTES} bytes")
        if not line.strip():
            return None  # a liveness probe (connect and close), e.g. from another ControlServer
        if not line.endswith(b"\n"):
            return make_answer(False, 2, error="request must end with a newline")
        try:
            payload = _decode(line)
        except ValueError as exc:
            detail = str(exc) if "nested" in str(exc) else "not JSON"
            return make_answer(False, 2, error=f"request is {detail}")
        if not isinstance(payload, dict) or not isinstance(payload.get("command"), str):
            return make_answer(False, 2, error="request must be an object with a 'command'")
        mistyped = _option_error(payload)
        if mistyped is not None:
            return make_answer(False, 2, error=mistyped)

        credentials = _peer_credentials(writer)
        # Never trust peer_* keys from the client: they are the kernel's word only.
        request = {key: value for key, value in payload.items() if not key.startswith("peer_")}
        if credentials is None:
            # Fail closed: a peer whose uid cannot be read may be anyone.
            log.warning("control_request_refused", command=request["command"], peer_uid=None)
            return make_answer(False, 1, error="cannot check the peer's uid (no SO_PEERCRED)")
        pid, uid, gid = credentials
        request.update(peer_pid=pid, peer_uid=uid, peer_gid=gid)
        if uid not in (0, os.geteuid()):
            log.warning("control_request_refused", command=request["command"], peer_uid=uid)
            return make_answer(False, 1, error=f"uid {uid} may not control this sidecar")
        # debug: the service's handler logs the request with its own context at info.
        log.debug(
            "control_request",
            command=request["command"],
            peer_uid=request.get("peer_uid"),
            peer_pid=request.get("peer_pid"),
        )
        try:
            answer = await self._handler(request)
        except Exception as exc:
            # The handler should answer failures itself; this keeps a bug from leaving the
            # client without an answer (and the listener keeps serving).
            log.exception("control_request_failed", command=request["command"])
            return make_answer(False, 1, error=error_text(exc))
        try:
            return _validate_answer(answer)
        except ControlProtocolError as exc:
            log.error("control_bad_answer", command=request["command"], error=str(exc))
            return make_answer(False, 1, error=f"internal error: bad answer: {exc}")


# --- client ------------------------------------------------------------------------------------


async def request(
    state_dir: str | os.PathLike[str],
    payload: Mapping[str, Any],
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - the interface others code against
) -> dict[str, Any] | None:
    """Send ``payload`` to the running sidecar and return its answer.

    ``None`` when no sidecar is running there (no socket file, or nothing listens on it: a file
    left by a dead process): the caller then does the work itself. Raises `ControlTimeout` when
    no answer arrives within ``timeout`` seconds and `ControlError` when the socket cannot be
    used (e.g. permission denied: doing the work ourselves would then compete with ``run``) or
    the answer is malformed.
    """
    path = socket_path(state_dir)
    if not path.exists():
        return None
    data = _encode(payload)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_unix_connection(
                    str(path), limit=MAX_ANSWER_BYTES
                )
            except (FileNotFoundError, ConnectionRefusedError):
                return None
            writer.write(data)
            await writer.drain()
            line = await reader.readline()
    except TimeoutError as exc:
        raise ControlTimeout(
            f"the running sidecar did not answer within {timeout:g} s (control socket {path})"
        ) from exc
    except ValueError as exc:  # readline's form of LimitOverrunError
        raise ControlError(
            f"the running sidecar's answer is larger than {MAX_ANSWER_BYTES} bytes"
        ) from exc
    except OSError as exc:
        raise ControlError(
            f"cannot talk to the running sidecar at {path}: {os_error_text(exc)}"
        ) from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not line.endswith(b"\n"):
        raise ControlError("the running sidecar closed the connection before answering")
    try:
        answer = _decode(line)
    except ValueError as exc:
        raise ControlProtocolError("malformed answer from the running sidecar: not JSON") from exc
    try:
        return _validate_answer(answer)
    except ControlProtocolError as exc:
        raise ControlProtocolError(f"malformed answer from the running sidecar: {exc}") from exc
