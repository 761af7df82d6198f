"""HAProxy runtime API client: hot certificate updates without a reload.

Addresses (``--haproxy-socket``)::

    unix:/path            a worker's ``stats socket ... level admin``
    tcp:host:port         the same over TCP (``tcp:[::1]:9999`` for IPv6)
    master:unix:/path     the master CLI (``haproxy -W -S /path``); commands go to ``@1``
    master:tcp:host:port

Connection model: one command per connection, in HAProxy's non-interactive mode. We send the
command (and its payload), half-close our side, and read until HAProxy closes. The close is an
unambiguous end-of-response marker, so there is no prompt to parse and a response can never be
confused with the next one; the cost is one connect per command (four or five per update, on a
local socket). The half-close matters: the 2.6 master CLI keeps a non-interactive connection
open until it sees end-of-input.

Certificate transactions are global to an HAProxy process (there is at most one pending
``set ssl cert`` transaction), and 2.6 has a sharp edge: ``set ssl cert B`` while a transaction
for ``A`` is open silently *updates A's transaction* with B's payload. So before ``set`` we check
that no transaction for another file is open, serialise our own updates per address with a
lock, and check that the ``set`` response names our file.

The certificate store has a second sharp edge: one lock, which every ``ssl cert`` command takes
with a *try*-lock and holds until its answer is written (``show ssl cert <file>``) or its work
is done (``set``, ``commit``). A command arriving meanwhile is not queued but refused::

    Can't show!
    Operations on certificates are currently locked!

(seen on 2.6.12 with two ``show ssl cert`` at once: two checks of one HAProxy at the same moment
collided that way). So every conversation with one address is serialised by a per-address lock
in this process, and an answer saying the store is locked (by another process, an operator's
``socat``) is retried briefly: HAProxy did nothing, so repeating is safe.

Answers are read up to ``MAX_ANSWER_BYTES``; a peer that sends more is not an HAProxy we
understand, and its answer is refused rather than held in memory.

Master CLI and several workers: since HAProxy 2.5 (``nbproc`` removed) a master has exactly one
current worker, ``@1``; threads share one certificate store. Workers left over from a reload
are draining and accept no new connections, so updating ``@1`` is enough; a reload starts a
worker that reads the PEM files from disk, which the caller has already written.

Errors (one line each, never containing payload or key material)::

    HAProxyError (a sidecar.errors.OperationError)
     +-- HAProxyUnreachable          cannot talk to the socket at all
     |    +-- HAProxySocketMissing       no such socket file
     |    +-- HAProxyConnectionRefused   nobody listening
     |    +-- HAProxySocketPermission    the socket file is not ours to open
     |    +-- HAProxyTimeout             no complete answer within the timeout
     +-- HAProxyCommandError         HAProxy answered with an error text
     |    +-- HAProxyAccessDenied        the socket's level is below "admin"
     |    +-- HAProxyTransactionBusy     another certificate's transaction is open
     |    +-- HAProxyReloadFailed        the master reports a failed reload
     +-- HAProxyProtocolError        an answer we do not understand
    InvalidPayload (also a ValueError)   a PEM that cannot be sent (blank lines, no certificate)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import os
import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ca_client.retry import poll_delays
from sidecar.errors import OperationError, one_line

__all__ = [
    "HAProxyAccessDenied",
    "HAProxyAddress",
    "HAProxyCommandError",
    "HAProxyConnectionRefused",
    "HAProxyError",
    "HAProxyProtocolError",
    "HAProxyReloadFailed",
    "HAProxyRuntime",
    "HAProxySocketMissing",
    "HAProxySocketPermission",
    "HAProxyTimeout",
    "HAProxyTransactionBusy",
    "HAProxyUnreachable",
    "InvalidPayload",
    "ProcessInfo",
    "SslCertInfo",
    "SslCertListing",
    "UpdateResult",
    "check_payload",
    "cli_word_problem",
    "normalize_serial",
    "parse_haproxy_address",
    "parse_show_proc",
    "parse_show_ssl_cert",
    "parse_show_ssl_cert_list",
]


# --------------------------------------------------------------------------- errors


class HAProxyError(OperationError):
    """Base of every error this module raises; ``str()`` is one line naming the socket.

    An ``OperationError``: the CLI ends with exit 1 for it (sidecar/errors.py).
    """

    def __init__(self, address: str, message: str) -> None:
        self.address = address
        self.message = _one_line(message)
        super().__init__(f"haproxy {address}: {self.message}")


class HAProxyUnreachable(HAProxyError):
    """The socket could not be used at all (nothing was executed by HAProxy)."""


class HAProxySocketMissing(HAProxyUnreachable):
    pass


class HAProxyConnectionRefused(HAProxyUnreachable):
    pass


class HAProxySocketPermission(HAProxyUnreachable):
    pass


class HAProxyTimeout(HAProxyUnreachable):
    pass


class HAProxyCommandError(HAProxyError):
    """HAProxy answered, with an error. ``command`` is the command's verb (no arguments)."""

    def __init__(self, address: str, command: str, message: str) -> None:
        self.command = command
        super().__init__(address, f"{command}: {message}")


class HAProxyAccessDenied(HAProxyCommandError):
    pass


class HAProxyTransactionBusy(HAProxyCommandError):
    pass


class HAProxyReloadFailed(HAProxyCommandError):
    pass


class HAProxyProtocolError(HAProxyError):
    pass


class InvalidPayload(ValueError):
    """A PEM that cannot be sent over the CLI. The message never quotes the PEM."""


def _one_line(text: str, limit: int = 300) -> str:
    line = one_line(text)
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class HAProxyAddress:
    """Where a runtime API listens. ``master`` selects the master CLI (commands go to ``@1``)."""

    kind: Literal["unix", "tcp"]
    path: str | None = None
    host: str | None = None
    port: int | None = None
    master: bool = False

    def __str__(self) -> str:
        if self.kind == "unix":
            base = f"unix:{self.path}"
        else:
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            base = f"tcp:{host}:{self.port}"
        return f"master:{base}" if self.master else base


def parse_haproxy_address(text: str) -> HAProxyAddress:
    """Parse ``unix:/path``, ``tcp:host:port`` or either behind ``master:``.

    A bare absolute path is taken as ``unix:`` since that is how sockets are usually written.
    Raises ValueError with a message that quotes the value and says what is expected.
    """
    original = text
    value = text.strip()
    expected = "expected unix:/path, tcp:host:port, master:unix:/path or master:tcp:host:port"
    master = False
    if value.startswith("master:"):
        master = True
        value = value[len("master:") :]
    if value.startswith("/"):
        value = "unix:" + value
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path:
            raise ValueError(f"HAProxy socket {original!r}: empty path; {expected}")
        if not path.startswith("/"):
            raise ValueError(f"HAProxy socket {original!r}: the unix path must be absolute")
        return HAProxyAddress(kind="unix", path=path, master=master)
    if value.startswith("tcp:"):
        hostport = value[len("tcp:") :]
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", hostport)
        if match is None:
            raise ValueError(
                f"HAProxy socket {original!r}: expected tcp:host:port (tcp:[v6addr]:port)"
            )
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
        if not 0 < port < 65536:
            raise ValueError(f"HAProxy socket {original!r}: port {port} out of range")
        return HAProxyAddress(kind="tcp", host=host, port=port, master=master)
    raise ValueError(f"HAProxy socket {original!r}: {expected}")


# --------------------------------------------------------------------------- pure parsing


_SERIAL_RE = re.compile(r"[0-9A-Fa-f]+")


def normalize_serial(serial: str | int) -> str:
    """Upper-case hex, no colons, padded to whole bytes: ``sidecar.pem.CertFacts.serial_hex``.

    HAProxy prints the DER integer's content bytes (with a leading ``00`` when the top bit is
    set); other tools use colons or lower case. Normalised strings compare as the numbers do.
    """
    if isinstance(serial, int):
        value = serial
    else:
        cleaned = serial.strip().replace(":", "")
        if not _SERIAL_RE.fullmatch(cleaned):
            raise ValueError(f"not a hexadecimal serial number: {serial!r}")
        value = int(cleaned, 16)
    text = format(value, "X")
    return "0" + text if len(text) % 2 else text


@dataclass(frozen=True)
class SslCertListing:
    """``show ssl cert`` without argument: committed file names and the open transaction."""

    filenames: tuple[str, ...]
    transaction: str | None


@dataclass(frozen=True)
class SslCertInfo:
    """``show ssl cert <file>``, as HAProxy reports it.

    ``status`` is HAProxy's word: ``Used`` (loaded and served), ``Unused`` (committed but in no
    crt-list, or a pending transaction), ``Empty`` (after ``new ssl cert``).
    """

    filename: str
    status: str
    serial: str | None = None  # normalised, see normalize_serial
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    subject: str | None = None
    issuer: str | None = None
    sans: tuple[str, ...] = ()
    algorithm: str | None = None
    sha1_fingerprint: str | None = None
    transaction: bool = False
    raw: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def loaded(self) -> bool:
        return self.status == "Used" and not self.transaction


def parse_show_ssl_cert_list(text: str) -> SslCertListing:
    """Parse the listing: ``# transaction`` / ``*name`` then ``# filename`` / names."""
    filenames: list[str] = []
    transaction: str | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            transaction = line[1:]
        else:
            filenames.append(line)
    return SslCertListing(tuple(filenames), transaction)


def _parse_haproxy_time(value: str) -> dt.datetime:
    # "Jan  1 00:00:00 2000 GMT" (OpenSSL's ASN1_TIME_print layout).
    return dt.datetime.strptime(" ".join(value.split()), "%b %d %H:%M:%S %Y GMT").replace(
        tzinfo=dt.UTC
    )


def parse_show_ssl_cert(text: str) -> SslCertInfo | None:
    """Parse ``show ssl cert <file>``; None for HAProxy's "not found" answer.

    Raises ValueError when the text is neither.
    """
    if text.startswith("Can't display the certificate"):
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"unexpected line in show ssl cert: {line[:80]!r}")
        # The first "Filename"/"Status"/... wins: chain certificates repeat some keys.
        fields.setdefault(key.strip(), value.strip())
    if "Filename" not in fields or "Status" not in fields:
        raise ValueError("show ssl cert: no Filename/Status in the answer")
    filename = fields["Filename"]
    transaction = filename.startswith("*")
    sans_text = fields.get("Subject Alternative Name", "")
    return SslCertInfo(
        filename=filename.removeprefix("*"),
        status=fields["Status"],
        serial=normalize_serial(fields["Serial"]) if fields.get("Serial") else None,
        not_before=_parse_haproxy_time(fields["notBefore"]) if "notBefore" in fields else None,
        not_after=_parse_haproxy_time(fields["notAfter"]) if "notAfter" in fields else None,
        subject=fields.get("Subject"),
        issuer=fields.get("Issuer"),
        sans=tuple(s.strip() for s in sans_text.split(",") if s.strip()),
        algorithm=fields.get("Algorithm"),
        sha1_fingerprint=fields.get("SHA1 FingerPrint"),
        transaction=transaction,
        raw=fields,
    )


@dataclass(frozen=True)
class ProcessInfo:
    """The master's line of ``show proc`` and its current workers' pids."""

    master_pid: int
    reloads: int
    failed_reloads: int
    worker_pids: tuple[int, ...]


def parse_show_proc(text: str) -> ProcessInfo:
    """Parse the master CLI's ``show proc``; raises ValueError if the master line is missing."""
    master: tuple[int, int, int] | None = None
    workers: list[int] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("#"):
            section = line.strip("# ").split()[0] if line.strip("# ") else ""
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        if parts[1] == "master":
            # "11652  master  2 [failed: 1]  0d00h13m17s  2.6.12"
            match = re.match(r"\s*(\d+)\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]", line)
            if match is None:
                raise ValueError(f"show proc: unexpected master line {line[:80]!r}")
            master = (int(match.group(1)), int(match.group(2)), int(match.group(3)))
        elif parts[1] == "worker" and section == "workers":
            workers.append(int(parts[0]))
    if master is None:
        raise ValueError("show proc: no master line")
    return ProcessInfo(master[0], master[1], master[2], tuple(workers))


def check_payload(pem: bytes) -> str:
    """Return the PEM as CLI payload text, or raise InvalidPayload.

    The CLI ends a payload at the first empty line (management guide, "set ssl cert"), so a
    blank line inside would cut the key off and the rest would run as commands. We refuse such
    a PEM instead of rewriting it: the file on disk must be exactly what HAProxy was sent.
    """
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidPayload("PEM payload is not ASCII") from None
    text = text.removesuffix("\n")
    if "\r" in text:
        raise InvalidPayload("PEM payload has CR characters")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise InvalidPayload(f"PEM payload has a blank line (line {number})")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise InvalidPayload("PEM payload has no certificate")
    if not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text):
        raise InvalidPayload("PEM payload has no private key")
    return text


def cli_word_problem(word: str) -> str | None:
    """Why ``word`` cannot be one CLI argument, or None if it can.

    The CLI splits arguments on spaces and commands on ``;`` (management guide 9.3); rather
    than rely on escaping rules that differ between versions, such names are refused.
    """
    if not word:
        return "empty file name"
    if re.search(r"[\s;\\#]", word) or word.startswith(("*", "@")):
        return f"HAProxy's CLI cannot take the file name {word!r} (space, ;, \\, # or leading * @)"
    return None


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


def _find_name(names: Iterable[str], path: str) -> str | None:
    """HAProxy's own spelling of ``path`` among ``names`` (it drops a doubled or trailing /)."""
    for name in names:
        if name == path:
            return name
    for name in names:
        if _same_path(name, path):
            return name
    return None


# --------------------------------------------------------------------------- I/O


@dataclass(frozen=True)
class UpdateResult:
    """What ``update_certificate`` did. ``created``: the file was new to HAProxy."""

    address: str
    path: str
    created: bool
    added_to_crt_list: bool
    serial: str | None
    status: str


# Locks per address string, shared by every HAProxyRuntime in this process (see the module
# docstring): "transaction" is held across a whole certificate update, "conversation" around
# each single command, inside it. Kept per event loop: an asyncio.Lock must not be shared
# between loops (tests run one loop per test).
_locks: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Lock]
] = weakref.WeakKeyDictionary()

#: Largest answer read from HAProxy. ``show ssl cert`` lists one line per certificate file, so
#: this holds tens of thousands of them; a peer sending more is not HAProxy's runtime API.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# HAProxy's answer when another command holds the certificate store's lock (ssl_ckch.c).
_STORE_LOCKED = "Operations on certificates are currently locked!"
_LOCKED_RETRY_FIRST_DELAY = 0.005


def _store_locked(answer: str) -> bool:
    """HAProxy refused the command because another one holds the store (first two lines)."""
    lines = answer.splitlines()
    return len(lines) >= 2 and lines[0].startswith("Can't") and lines[1] == _STORE_LOCKED


def _lock(kind: str, address: str) -> asyncio.Lock:
    locks = _locks.setdefault(asyncio.get_running_loop(), {})
    lock = locks.get((kind, address))
    if lock is None:
        lock = locks[(kind, address)] = asyncio.Lock()
    return lock


def _transaction_lock(address: str) -> asyncio.Lock:
    return _lock("transaction", address)


class HAProxyRuntime:
    """One HAProxy runtime API (a stats socket or a master CLI).

    Stateless between calls: each method opens its own connections, so one instance can be
    shared and kept for the life of the service.
    """

    def __init__(self, address: HAProxyAddress | str, timeout: float = 5.0) -> None:
        self.address = (
            address if isinstance(address, HAProxyAddress) else parse_haproxy_address(address)
        )
        self.timeout = timeout
        self._name = str(self.address)

    def __repr__(self) -> str:
        return f"HAProxyRuntime({self._name!r})"

    # -- transport

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address = self.address
        try:
            if address.kind == "unix":
                assert address.path is not None
                return await asyncio.open_unix_connection(address.path)
            assert address.host is not None and address.port is not None
            return await asyncio.open_connection(address.host, address.port)
        except FileNotFoundError:
            raise HAProxySocketMissing(self._name, "socket does not exist") from None
        except ConnectionRefusedError:
            raise HAProxyConnectionRefused(self._name, "connection refused") from None
        except PermissionError:
            raise HAProxySocketPermission(self._name, "permission denied on the socket") from None
        except OSError as exc:
            if exc.errno in (errno.ENOTSOCK, errno.ENOENT):
                raise HAProxySocketMissing(self._name, "not a socket") from None
            raise HAProxyUnreachable(self._name, exc.strerror or type(exc).__name__) from None

    async def _exchange(
        self, line: str, payload: str | None = None, *, to_master: bool = False
    ) -> str:
        """Send one command (with its payload) and return HAProxy's whole answer.

        On a master CLI the command goes to the current worker (``@1``) unless ``to_master``.
        """
        prefix = "@1 " if self.address.master and not to_master else ""
        data = prefix + line
        if payload is not None:
            # "the first line needs to end with the <<\n pattern ... To validate a command with
            # a payload, it needs to end with an empty line." (management guide 9.3)
            data += " <<\n" + payload + "\n\n"
        else:
            data += "\n"
        verb = " ".join(line.split()[:3])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        delays = poll_delays(_LOCKED_RETRY_FIRST_DELAY, 2, 0.2)
        async with _lock("conversation", self._name):
            while True:
                text = await self._send(data)
                if not _store_locked(text):
                    break
                # Another process's command holds the store; ours was refused, not run.
                delay = next(delays)
                if loop.time() + delay > deadline:
                    raise HAProxyCommandError(
                        self._name,
                        verb,
                        f"the certificate store stayed locked by another command for"
                        f" {self.timeout:g} s",
                    )
                await asyncio.sleep(delay)
        if text.startswith("Permission denied"):
            raise HAProxyAccessDenied(
                self._name, verb, "permission denied (the socket needs 'level admin')"
            )
        if text.startswith("Unknown command"):
            raise HAProxyCommandError(
                self._name, verb, "unknown command (HAProxy too old, or not a worker socket?)"
            )
        if text.startswith("Can't find the target PID"):
            raise HAProxyCommandError(self._name, verb, "the master has no worker @1")
        return text

    async def _send(self, data: str) -> str:
        """One connection: write ``data``, half-close, read the answer until HAProxy closes."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._open()
                try:
                    writer.write(data.encode("utf-8"))
                    await writer.drain()
                    if writer.can_write_eof():
                        writer.write_eof()
                    answer = await reader.read(MAX_ANSWER_BYTES + 1)
                    while answer and len(answer) <= MAX_ANSWER_BYTES:
                        chunk = await reader.read(MAX_ANSWER_BYTES + 1 - len(answer))
                        if not chunk:
                            break
                        answer += chunk
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            raise HAProxyTimeout(self._name, f"no answer within {self.timeout:g} s") from None
        except (ConnectionResetError, BrokenPipeError):
            raise HAProxyUnreachable(self._name, "connection closed by HAProxy") from None
        if len(answer) > MAX_ANSWER_BYTES:
            raise HAProxyProtocolError(
                self._name, f"answer larger than {MAX_ANSWER_BYTES} bytes: not HAProxy's CLI?"
            )
        return answer.decode("utf-8", errors="replace")

    async def command(self, line: str) -> str:
        """Run any command and return its raw answer (for diagnostics and tests)."""
        return await self._exchange(line)

    def _check_words(self, verb: str, *words: str) -> None:
        for word in words:
            problem = cli_word_problem(word)
            if problem is not None:
                raise HAProxyCommandError(self._name, verb, problem)

    # -- queries

    async def list_ssl_certs(self) -> SslCertListing:
        text = await self._exchange("show ssl cert")
        if text.strip() and not text.lstrip().startswith("#"):
            raise HAProxyProtocolError(self._name, f"show ssl cert: unexpected answer {text!r}")
        return parse_show_ssl_cert_list(text)

    async def show_ssl_certs(self) -> list[str]:
        """File names of the committed certificate stores, as HAProxy spells them."""
        return list((await self.list_ssl_certs()).filenames)

    async def show_ssl_cert(self, path: str, *, transaction: bool = False) -> SslCertInfo | None:
        """Details of one store (or of its pending transaction); None if HAProxy has none."""
        self._check_words("show ssl cert", path)
        text = await self._exchange(f"show ssl cert {'*' if transaction else ''}{path}")
        try:
            return parse_show_ssl_cert(text)
        except ValueError as exc:
            raise HAProxyProtocolError(self._name, str(exc)) from None

    async def show_crt_lists(self) -> list[str]:
        """Names of the crt-lists and directories HAProxy loaded."""
        text = await self._exchange("show ssl crt-list")
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    async def show_proc(self) -> ProcessInfo:
        self._require_master("show proc")
        text = await self._exchange("show proc", to_master=True)
        try:
            return parse_show_proc(text)
        except ValueError as exc:
            raise HAProxyProtocolError(self._name, str(exc)) from None

    # -- updates

    async def update_certificate(self, path: str, pem: bytes, *, crt_list: str) -> UpdateResult:
        """Load ``pem`` for ``path`` (HAProxy's file name) into the running process.

        Loaded file: ``set ssl cert`` + ``commit ssl cert``. New file: ``new ssl cert``, set,
        commit, then ``add ssl crt-list <crt_list> <path>`` so the bind lines that load
        ``crt_list`` (a directory or crt-list as HAProxy names it) serve it. Any failure inside
        the transaction aborts it, so the previous certificate keeps being served.
        """
        payload = check_payload(pem)
        self._check_words("set ssl cert", path, crt_list)
        async with _transaction_lock(self._name):
            listing = await self.list_ssl_certs()
            if listing.transaction is not None and not _same_path(listing.transaction, path):
                raise HAProxyTransactionBusy(
                    self._name,
                    "set ssl cert",
                    f"a transaction for {listing.transaction} is open; refusing to touch it",
                )
            name = _find_name(listing.filenames, path)
            created = name is None
            if name is None:
                name = path
                text = await self._exchange(f"new ssl cert {name}")
                if not text.startswith("New empty certificate store"):
                    raise HAProxyCommandError(self._name, "new ssl cert", text)
            try:
                await self._set_and_commit(name, payload)
            except HAProxyTransactionBusy:
                raise
            except HAProxyError:
                await self._abort(name)
                raise
            info = await self.show_ssl_cert(name)
            if info is None:
                raise HAProxyProtocolError(self._name, f"{name} vanished after commit")
            added = False
            if info.status != "Used":
                # New store, or one left "Unused" by an interrupted earlier attempt.
                crt_list_name = _find_name(await self.show_crt_lists(), crt_list) or crt_list
                text = await self._exchange(f"add ssl crt-list {crt_list_name} {name}")
                if not re.match(r"Inserting certificate .*\nSuccess!\n", text):
                    raise HAProxyCommandError(self._name, "add ssl crt-list", text)
                added = True
                info = await self.show_ssl_cert(name)
                if info is None:
                    raise HAProxyProtocolError(self._name, f"{name} vanished after add")
            return UpdateResult(
                address=self._name,
                path=name,
                created=created,
                added_to_crt_list=added,
                serial=info.serial,
                status=info.status,
            )

    async def _set_and_commit(self, name: str, payload: str) -> None:
        text = await self._exchange(f"set ssl cert {name}", payload)
        match = re.match(r"Transaction (?:created|updated) for certificate (.*)!\n", text)
        if match is None:
            raise HAProxyCommandError(self._name, "set ssl cert", text)
        if match.group(1) != name:
            # The 2.6 trap: someone opened a transaction for another file between our listing
            # and our set, and we just overwrote it. Abort it: its owner's commit would
            # otherwise load our certificate under their name.
            await self._abort(match.group(1))
            raise HAProxyTransactionBusy(
                self._name, "set ssl cert", f"transaction for {match.group(1)} was open"
            )
        text = await self._exchange(f"commit ssl cert {name}")
        if not re.match(r"Committing .*\nSuccess!\n", text):
            raise HAProxyCommandError(self._name, "commit ssl cert", text)

    async def _abort(self, name: str) -> None:
        # Best effort: the error that got us here is the one worth reporting.
        with contextlib.suppress(HAProxyError):
            await self._exchange(f"abort ssl cert {name}")

    async def remove_certificate(self, path: str, crt_list: str) -> bool:
        """Unload ``path``: ``del ssl crt-list`` then ``del ssl cert``. False if not loaded."""
        self._check_words("del ssl cert", path, crt_list)
        async with _transaction_lock(self._name):
            name = _find_name(await self.show_ssl_certs(), path)
            if name is None:
                return False
            crt_list_name = _find_name(await self.show_crt_lists(), crt_list) or crt_list
            text = await self._exchange(f"del ssl crt-list {crt_list_name} {name}")
            if not text.startswith("Entry ") and "can't be found in crt-list" not in text:
                raise HAProxyCommandError(self._name, "del ssl crt-list", text)
            text = await self._exchange(f"del ssl cert {name}")
            if not re.match(r"Certificate .* deleted!\n", text):
                raise HAProxyCommandError(self._name, "del ssl cert", text)
            return True

    # -- master CLI

    def _require_master(self, what: str) -> None:
        if not self.address.master:
            raise HAProxyCommandError(
                self._name, what, "needs a master CLI socket (write it master:unix:/path)"
            )

    async def master_reload(
        self, *, deadline: float = 30.0, poll_interval: float = 0.05
    ) -> ProcessInfo:
        """``reload`` on the master CLI (same as SIGUSR2), and wait for its outcome.

        2.6 answers nothing and closes the connection, so the outcome is read from
        ``show proc``: the reload counter moves, and the failed counter moves on failure.
        """
        self._require_master("reload")
        before = await self.show_proc()
        answer = ""
        with contextlib.suppress(HAProxyUnreachable):
            # 2.6 closes CLI connections while it re-executes itself, so whether the reload
            # happened is read from "show proc" below. Newer versions (2.9+) answer
            # "Success=1" / "Success=0" and their start-up messages: a 0 fails fast.
            answer = await self._exchange("reload", to_master=True)
        if answer.startswith("Success=0"):
            raise HAProxyReloadFailed(self._name, "reload", answer.removeprefix("Success=0"))
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while True:
            try:
                after = await self.show_proc()
            except HAProxyUnreachable:
                after = None
            if after is not None and after.reloads > before.reloads:
                if after.failed_reloads > before.failed_reloads:
                    raise HAProxyReloadFailed(
                        self._name, "reload", "the new configuration did not load"
                    )
                if after.worker_pids:
                    return after
            if loop.time() >= end:
                raise HAProxyTimeout(self._name, f"reload not seen within {deadline:g} s")
            await asyncio.sleep(poll_interval)
