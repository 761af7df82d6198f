"""Everything the sidecar keeps on disk: atomic writes, the state directory, per-certificate locks.

Errors::

    StorageError            a file or directory could not be read or written (message names it)
    ├── StateVersionError   the state directory's schema is unknown (e.g. from a newer release)
    ├── MetaError           a meta.json that does not parse (load_meta logs it and returns None)
    └── LockTimeout         another process held the certificate's lock too long (names it)

The state directory (DESIGN.md "State directory layout")::

    <state>/VERSION                           schema version, "1"
    <state>/account/<sha256(directory)[:16]>/key.pem       0600
    <state>/account/<sha256(directory)[:16]>/account.json  {"url", "directory", "contact"}
    <state>/certs/<name>/key.pem              0600, reused across renewals
    <state>/certs/<name>/cert.pem, chain.pem  leaf, intermediates
    <state>/certs/<name>/previous.pem         the leaf and chain before the last issuance
    <state>/certs/<name>/meta.json            CertMeta
    <state>/locks/<name>.lock                 flock; holds the holder's description
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca_client.retry import clamp_to_deadline, poll_delays
from sidecar.domains import validate_certificate_name
from sidecar.errors import OperationError

__all__ = [
    "KEY_MODE",
    "SCHEMA_VERSION",
    "CertMeta",
    "FileWrite",
    "LockTimeout",
    "MetaError",
    "StateStore",
    "StateVersionError",
    "StorageError",
    "StoredCertificate",
    "atomic_write",
    "check_cert_name",
    "clean_stale_temp_files",
    "write_group",
]

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
KEY_MODE = 0o600
_CERT_MODE = 0o644  # certificates are public; the state directory itself is 0700
_DIR_MODE = 0o700

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Our temporary files: ".<final name>.<16 hex digits>". HAProxy skips dot-files in a crt dir.
_TEMP_RANDOM_BYTES = 8
_TEMP_FILE = re.compile(r"\..+\.[0-9a-f]{16}")
_TEMP_PEM_FILE = re.compile(r"\..+\.pem\..+")

# Lock polling: start short (an uncontended wait is usually a few ms), back off to a fifth of
# a second so a 60 s wait costs a few hundred wake-ups, not a busy loop.
_LOCK_FIRST_DELAY = 0.005
_LOCK_MAX_DELAY = 0.2
_HOLDER_MAX_CHARS = 200


class StorageError(OperationError):
    """A file or directory the sidecar needs could not be read or written (exit 1)."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class StateVersionError(StorageError):
    """The state directory was written with a schema this release does not know."""


class MetaError(StorageError):
    """A certificate's meta.json is not valid; the message says where."""


class LockTimeout(StorageError):
    """The per-certificate lock stayed held by another process for longer than the timeout."""

    def __init__(self, name: str, holder: str, timeout: float) -> None:
        super().__init__(
            f"certificate {name!r} is locked by {holder or 'another process'} "
            f"(waited {timeout:g} s)"
        )
        self.name = name
        self.holder = holder
        self.timeout = timeout


def _describe_os_error(error: OSError) -> str:
    return error.strerror or errno.errorcode.get(error.errno or 0, str(error))


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX: the rename lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as error:
        # Some file systems cannot fsync a directory; the rename is still atomic there.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


class FileWrite(NamedTuple):
    """One file of a `write_group`: its name in the directory, content, mode and group."""

    name: str
    data: bytes
    mode: int
    group: int | None = None


@dataclass(slots=True)
class _Temporary:
    path: Path  # the file it replaces
    temp: Path
    fd: int  # -1 once closed


def _temporary_name(path: Path) -> Path:
    # NAME_MAX is 255: keep the end of a very long name, where ".pem" is.
    return path.parent / f".{path.name[-200:]}.{secrets.token_hex(_TEMP_RANDOM_BYTES)}"


def write_group(
    directory: Path | str, files: Sequence[FileWrite], *, sync_directory: bool = True
) -> None:
    """Replace ``files`` in ``directory`` as one commit: in order, with one directory fsync.

    Each temporary ``.<name>.<random>`` is created in the directory (a rename is only atomic
    within one file system) with O_EXCL and already restricted to its mode, so a private key is
    never readable by others, not even for an instant; its group is set before any data goes in.
    Every temporary is written before any is fsynced (on a journalled ext4 the first fsync's
    commit then carries the others' metadata), and all are fsynced before the first rename, so
    no name ever points at data that is not on disk. Then the renames, in the order given, then one
    fsync of the directory makes them all durable.

    A failure before the renames leaves every file as it was; a failure at the Nth rename leaves
    the files before it replaced and the rest as they were, so callers put the files in an order
    where every prefix is a state they accept (a certificate's leaf after its chain). On any
    failure, cancellation included, no temporary is left behind, and ``StorageError`` names the
    file. ``sync_directory=False`` leaves the renames' durability to a later fsync of the same
    directory; the caller says why that is enough (`StateStore.save_key`).
    """
    directory = Path(directory)
    names = [item.name for item in files]
    if len(set(names)) != len(names):
        raise ValueError(f"a file appears twice in one group: {names}")
    for item in files:
        if item.mode & ~0o777:
            raise ValueError(f"mode {item.mode:#o} has bits beyond rwx")
        if not item.name or "/" in item.name or item.name in (".", ".."):
            raise ValueError(f"{item.name!r} is not a file name")
    if not files:
        return
    temporaries: list[_Temporary] = []
    renamed = 0
    path = directory / files[0].name  # the file a failure names
    action = "write"
    try:
        for item in files:
            path = directory / item.name
            temp = _temporary_name(path)
            # The umask can only remove bits from ``mode``; fchmod then sets exactly ``mode``.
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, item.mode
            )
            temporaries.append(_Temporary(path, temp, fd))
            os.fchmod(fd, item.mode)
            if item.group is not None:
                action = f"set group {item.group} on"
                os.fchown(fd, -1, item.group)
                action = "write"
            view = memoryview(item.data)
            while view:
                view = view[os.write(fd, view) :]
        for temporary in temporaries:
            path = temporary.path
            os.fsync(temporary.fd)
            fd, temporary.fd = temporary.fd, -1
            os.close(fd)
        for temporary in temporaries:
            path = temporary.path
            os.replace(temporary.temp, temporary.path)
            renamed += 1
    except OSError as error:
        _abandon(temporaries[renamed:])
        raise StorageError(f"cannot {action} {path}: {_describe_os_error(error)}", path) from None
    except BaseException:
        # Cancellation or a signal handler's exception: still leave no temporary behind.
        _abandon(temporaries[renamed:])
        raise
    if not sync_directory:
        return
    try:
        _fsync_directory(directory)
    except OSError as error:
        what = str(path) if len(files) == 1 else f"{', '.join(names)} in {directory}"
        raise StorageError(
            f"wrote {what} but could not sync its directory: {_describe_os_error(error)}",
            path if len(files) == 1 else directory,
        ) from None


def _abandon(temporaries: Sequence[_Temporary]) -> None:
    """Close and remove the temporaries of a failed group that were not renamed."""
    for temporary in temporaries:
        if temporary.fd != -1:
            fd, temporary.fd = temporary.fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            temporary.temp.unlink()


def atomic_write(path: Path | str, data: bytes, *, mode: int, group: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never less:
    the one-file `write_group` (temporary, fsync, rename, fsync of the directory)."""
    path = Path(path)
    write_group(path.parent, [FileWrite(path.name, data, mode, group)])


def clean_stale_temp_files(directory: Path | str, *, min_age: float = 0.0) -> list[Path]:
    """Remove leftover ``.<name>.pem.<random>`` files of interrupted writes; return them.

    Called at start, before anything writes. ``min_age`` (seconds) spares temporaries younger
    than that, for a caller that cannot rule out another writer at the same moment.
    """
    return _clean(Path(directory), _TEMP_PEM_FILE, min_age)


def _clean(directory: Path, pattern: re.Pattern[str], min_age: float) -> list[Path]:
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    except OSError as error:
        raise StorageError(
            f"cannot list {directory}: {_describe_os_error(error)}", directory
        ) from None
    now = time.time()
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < min_age:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StorageError(
                f"cannot remove {entry.path}: {_describe_os_error(error)}", Path(entry.path)
            ) from None
        removed.append(Path(entry.path))
    if removed:
        log.info("stale_temp_files_removed", directory=str(directory), count=len(removed))
    return removed


# ---------------------------------------------------------------------------------------------
# Certificate metadata


def _to_utc(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"CertMeta.{name} must be timezone-aware")
    return None if value is None else value.astimezone(UTC)


_DATETIME_FIELDS = (
    "issued_at",
    "not_before",
    "not_after",
    "next_retry_at",
    "last_attempt_at",
    "last_success_at",
)
_OPTIONAL_STR_FIELDS = ("order_url", "serial", "key_type", "last_error")
# Written before issue 18 and never read (HAProxy is asked: `Deployer.ask_served`); dropped on
# read, so a file sheds them when next written. Schema 1 still: every field is optional both
# ways (an older release reads a file without them as one from before its first deploy).
_RETIRED_FIELDS = frozenset({"deployed_serial", "deployed_at"})


@dataclass(frozen=True, slots=True)
class CertMeta:
    """What the sidecar remembers about one certificate between runs (``meta.json``).

    The retry state (``failures``, ``next_retry_at``) is here so that a restarted, perhaps
    crash-looping, container waits as long as the previous run decided. Datetimes are UTC.
    ``serial`` is upper-case hex (``pem.CertFacts.serial_hex``).
    """

    order_url: str | None = None
    issued_at: datetime | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    serial: str | None = None
    domains: tuple[str, ...] = ()
    key_type: str | None = None
    last_error: str | None = None
    failures: int = 0
    next_retry_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    # Written so that a later release can tell what it reads; not otherwise used.
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in _DATETIME_FIELDS:
            object.__setattr__(self, name, _to_utc(getattr(self, name), name))
        object.__setattr__(self, "domains", tuple(self.domains))

    def to_json(self) -> str:
        document: dict[str, Any] = dict(self.extra)
        for item in fields(self):
            if item.name == "extra":
                continue
            value = getattr(self, item.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            document[item.name] = value
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> CertMeta:
        """Parse ``meta.json``: missing fields take defaults, unknown ones are kept in ``extra``
        (and written back), retired ones (``_RETIRED_FIELDS``) are dropped, a wrong type or
        broken JSON raises ``MetaError`` saying where."""
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise MetaError(f"not valid JSON ({error})") from None
        if not isinstance(document, dict):
            raise MetaError("not a JSON object")
        known = {item.name for item in fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        for name in known & document.keys():
            value = document[name]
            if value is None:
                continue
            if name in _DATETIME_FIELDS:
                values[name] = _parse_datetime(value, name)
            elif name in _OPTIONAL_STR_FIELDS:
                if not isinstance(value, str):
                    raise MetaError(f"{name}: expected a string")
                values[name] = value
            elif name == "failures":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise MetaError("failures: expected a non-negative integer")
                values[name] = value
            elif name == "domains":
                if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
                    raise MetaError("domains: expected a list of strings")
                values[name] = tuple(value)
        extra = {
            key: value
            for key, value in document.items()
            if key not in known and key not in _RETIRED_FIELDS
        }
        return cls(**values, extra=extra)

    def with_failure(self, error: str, *, now: datetime, next_retry_at: datetime) -> CertMeta:
        """One more failure in a row; ``error`` must be a one-line message with no secrets."""
        return replace(
            self,
            last_error=error,
            failures=self.failures + 1,
            next_retry_at=next_retry_at,
            last_attempt_at=now,
        )

    def with_success(self, **changes: Any) -> CertMeta:
        """The retry state cleared, plus ``changes`` (e.g. serial, not_after, issued_at)."""
        return replace(self, last_error=None, failures=0, next_retry_at=None, **changes)


def _parse_datetime(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise MetaError(f"{name}: expected an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MetaError(f"{name}: {value!r} is not an ISO 8601 date-time") from None
    # Written by us always with an offset; a bare one can only be UTC by our own convention.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# The state directory


class StoredCertificate(NamedTuple):
    leaf_pem: bytes
    chain_pem: bytes  # the intermediates, concatenated; empty when the CA sent none


def _key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def check_cert_name(name: str) -> str:
    """``name`` if it is a valid certificate name, else ValueError: the rule is
    ``domains.validate_certificate_name``'s, the one the settings were checked with."""
    try:
        return validate_certificate_name(name)
    except ValueError as exc:
        # "invalid certificate name 'a b' may hold only ...": the rule's own words.
        raise ValueError(f"invalid {exc}") from None


# Another process (a running `run` beside a one-shot) may be mid-write in the state directory:
# a temporary is only stale once it is older than any write could take.
_STATE_TEMP_MIN_AGE = 60.0


class StateStore:
    """The state directory. Constructing one creates the layout and checks its schema version.

    ``create=False`` is for readers (``status``, ``healthcheck``): nothing is created, written
    or cleaned, but an existing ``VERSION`` is still checked.
    """

    def __init__(self, state_dir: Path | str, *, create: bool = True) -> None:
        self.root = Path(state_dir)
        self._accounts = self.root / "account"
        self._certs = self.root / "certs"
        self._locks = self.root / "locks"
        if create:
            for directory in (self.root, self._accounts, self._certs, self._locks):
                self._make_dir(directory)
        self._check_version(create)
        if create:
            for directory in (self.root, self._accounts, self._certs):
                self._clean_own_temp_files(directory)

    # -- layout -------------------------------------------------------------------------------

    @staticmethod
    def _make_dir(directory: Path) -> None:
        try:
            directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(
                f"cannot create {directory}: {_describe_os_error(error)}", directory
            ) from None

    def _check_version(self, create: bool) -> None:
        version_file = self.root / "VERSION"
        try:
            text = version_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            if create:
                atomic_write(version_file, f"{SCHEMA_VERSION}\n".encode(), mode=0o644)
            return
        except (OSError, UnicodeDecodeError) as error:
            reason = _describe_os_error(error) if isinstance(error, OSError) else "not text"
            raise StateVersionError(f"cannot read {version_file}: {reason}", version_file) from None
        if not text.isdigit():
            raise StateVersionError(
                f"{version_file} holds {text[:20]!r}, not a schema version", version_file
            )
        if int(text) != SCHEMA_VERSION:
            newer = int(text) > SCHEMA_VERSION
            raise StateVersionError(
                f"{self.root} holds state of schema version {int(text)}"
                + (" (from a newer cert-sidecar)" if newer else "")
                + f"; this release reads version {SCHEMA_VERSION} only",
                version_file,
            )

    def _clean_own_temp_files(self, directory: Path) -> None:
        targets = [directory]
        if directory in (self._accounts, self._certs):
            with contextlib.suppress(OSError):
                targets = [Path(e.path) for e in os.scandir(directory) if e.is_dir()]
        for target in targets:
            _clean(target, _TEMP_FILE, _STATE_TEMP_MIN_AGE)

    # -- account ------------------------------------------------------------------------------

    def account_dir(self, directory_url: str) -> Path:
        """Each ACME directory (CA) gets its own account: keys are not shared between CAs."""
        digest = hashlib.sha256(directory_url.encode()).hexdigest()[:16]
        return self._accounts / digest

    def load_account(self, directory_url: str) -> tuple[PrivateKey, str | None] | None:
        """The account key and, once registered, its URL; None when no key was saved yet."""
        directory = self.account_dir(directory_url)
        key = self._load_key_file(directory / "key.pem")
        if key is None:
            return None
        document = self._load_json(directory / "account.json")
        url = None
        if document is not None and document.get("directory") == directory_url:
            url = document.get("url") if isinstance(document.get("url"), str) else None
        return key, url

    def save_account_key(self, directory_url: str, key: PrivateKey) -> None:
        directory = self.account_dir(directory_url)
        self._make_dir(directory)
        atomic_write(directory / "key.pem", _key_to_pem(key), mode=KEY_MODE)

    def save_account_url(self, directory_url: str, url: str, contact: Sequence[str] = ()) -> None:
        directory = self.account_dir(directory_url)
        self._make_dir(directory)
        document = {"url": url, "directory": directory_url, "contact": list(contact)}
        atomic_write(
            directory / "account.json",
            (json.dumps(document, indent=2) + "\n").encode(),
            mode=KEY_MODE,
        )

    def forget_account_url(self, directory_url: str) -> None:
        """Drop the stored URL (the CA forgot the account); the key stays for re-registration."""
        _unlink(self.account_dir(directory_url) / "account.json")

    # -- certificates -------------------------------------------------------------------------

    def cert_dir(self, name: str) -> Path:
        return self._certs / check_cert_name(name)

    def stored_names(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self._certs) if e.is_dir())
        except FileNotFoundError:
            return []
        except OSError as error:
            raise StorageError(
                f"cannot list {self._certs}: {_describe_os_error(error)}", self._certs
            ) from None

    def load_key(self, name: str) -> PrivateKey | None:
        """The certificate's private key, kept across renewals; None when there is none yet."""
        return self._load_key_file(self.cert_dir(name) / "key.pem")

    def save_key(self, name: str, key: PrivateKey) -> None:
        """Store (or replace: new key type, revocation) the certificate's key, mode 0600.

        Saved before the order, without a directory fsync of its own: the rename becomes
        durable with the next fsync of this directory, which is the state commit of the
        certificate issued for this key (`save_issued`), or the failure's meta.json. Until then
        a power loss can only undo this call (the next attempt finds what was there before and
        decides again). It cannot leave a stored or deployed certificate with a key that does
        not match it: the state commit syncs this same directory after this rename, so a
        durable cert.pem implies a durable key.pem; and the combined PEM is built from the key
        in memory, never read back from here, and is refused before it is written unless key
        and leaf match (`pem.combine_for_deploy`, through `pem.parse_combined`). The file's own
        fsync stays: a rename made durable by a later directory fsync must not point at data
        that never reached the disk (an empty key.pem would fail every renewal).
        """
        directory = self.cert_dir(name)
        self._make_dir(directory)
        write_group(
            directory, [FileWrite("key.pem", _key_to_pem(key), KEY_MODE)], sync_directory=False
        )

    def discard_key(self, name: str) -> None:
        """Forget the key, so the next issuance generates a new one.

        Synced: `save_key` does not sync the directory, so without this a power loss could
        bring back a key discarded because it was compromised (``revoke``)."""
        path = self.cert_dir(name) / "key.pem"
        _unlink(path)
        try:
            _fsync_directory(path.parent)
        except FileNotFoundError:
            return
        except OSError as error:
            raise StorageError(
                f"removed {path} but could not sync its directory: {_describe_os_error(error)}",
                path,
            ) from None

    def save_issued(
        self,
        name: str,
        leaf_pem: bytes,
        chain_pems: Sequence[bytes],
        meta: CertMeta | None = None,
    ) -> None:
        """Store a newly issued certificate, and its ``meta``, as one commit (`write_group`);
        the certificate it replaces becomes ``previous.pem``.

        Renamed in this order: previous.pem, chain.pem, then cert.pem, the commit point, then
        meta.json, which describes it. A crash between two renames leaves either the old leaf
        with the new chain (the same CA's intermediates in practice; and nothing is deployed
        from this copy: the combined PEM is built from the certificate in memory and checked
        by pem.combine_for_deploy), or the new leaf with the old meta.json, as a crash before
        the meta was written always could.
        """
        directory = self.cert_dir(name)
        self._make_dir(directory)
        # The files being replaced, for previous.pem: not known to the caller, which reads
        # what is deployed in the certs directory, not this copy.
        current = self.load_cert(name)
        new_leaf = leaf_pem.strip() + b"\n"
        new_chain = b"".join(pem.strip() + b"\n" for pem in chain_pems if pem.strip())
        files: list[FileWrite] = []
        if current is not None and current.leaf_pem.strip() != new_leaf.strip():
            previous = current.leaf_pem + current.chain_pem
            files.append(FileWrite("previous.pem", previous, _CERT_MODE))
        files.append(FileWrite("chain.pem", new_chain, _CERT_MODE))
        files.append(FileWrite("cert.pem", new_leaf, _CERT_MODE))
        if meta is not None:
            files.append(FileWrite("meta.json", meta.to_json().encode(), KEY_MODE))
        write_group(directory, files)

    def load_cert(self, name: str) -> StoredCertificate | None:
        directory = self.cert_dir(name)
        leaf = self._read(directory / "cert.pem")
        if leaf is None:
            return None
        return StoredCertificate(leaf, self._read(directory / "chain.pem") or b"")

    def load_previous(self, name: str) -> bytes | None:
        return self._read(self.cert_dir(name) / "previous.pem")

    def load_meta(self, name: str) -> CertMeta | None:
        """The certificate's metadata; None when missing or corrupt (a corrupt file is logged:
        losing the retry state is better than a service that will not start)."""
        path = self.cert_dir(name) / "meta.json"
        data = self._read(path)
        if data is None:
            return None
        try:
            return CertMeta.from_json(data)
        except MetaError as error:
            problem = str(error)
        log.error("cert_meta_corrupt", cert=name, path=str(path), error=problem)
        return None

    def save_meta(self, name: str, meta: CertMeta) -> None:
        directory = self.cert_dir(name)
        self._make_dir(directory)
        atomic_write(directory / "meta.json", meta.to_json().encode(), mode=KEY_MODE)

    def remove_cert(self, name: str) -> None:
        """Delete everything stored for the certificate (``revoke --remove``)."""
        directory = self.cert_dir(name)
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            return
        except OSError as error:
            raise StorageError(
                f"cannot remove {directory}: {_describe_os_error(error)}", directory
            ) from None

    # -- reading ------------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StorageError(f"cannot read {path}: {_describe_os_error(error)}", path) from None

    def _load_json(self, path: Path) -> dict[str, Any] | None:
        data = self._read(path)
        if data is None:
            return None
        with contextlib.suppress(ValueError):
            document = json.loads(data)
            if isinstance(document, dict):
                return document
        log.error("state_file_corrupt", path=str(path))
        return None

    def _load_key_file(self, path: Path) -> PrivateKey | None:
        data = self._read(path)
        if data is None:
            return None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # Never echo the file's content: it is (a broken) private key.
            raise StorageError(f"{path} is not a valid unencrypted private key", path) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise StorageError(f"{path} is neither an EC nor an RSA key", path)
        return key

    # -- locking ------------------------------------------------------------------------------

    def lock_path(self, name: str) -> Path:
        return self._locks / f"{check_cert_name(name)}.lock"

    @contextlib.asynccontextmanager
    async def lock(
        self,
        name: str,
        *,
        # A lock wait, not an I/O timeout: on expiry the error names the holder.
        timeout: float = 60.0,  # noqa: ASYNC109
        holder: str | None = None,
    ) -> AsyncIterator[None]:
        """Hold the certificate's lock, so that no two processes order the same certificate.

        flock(2) on ``locks/<name>.lock``: the kernel drops it when the holder dies, so a
        SIGKILLed process never leaves a stale lock. Blocking flock would stall the event loop,
        so non-blocking attempts are repeated with short async sleeps until ``timeout``, then
        ``LockTimeout`` names the holder, whose description (``holder``, by default the pid)
        is written into the lock file while it is held.
        """
        path = self.lock_path(name)
        description = f"{holder or f'pid {os.getpid()}'} since {_now_iso()}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, KEY_MODE)
        except OSError as error:
            raise StorageError(f"cannot open {path}: {_describe_os_error(error)}", path) from None
        try:
            await _acquire(fd, name, timeout)
            # The file is only rewritten by the holder, so a waiter reads a whole description.
            os.ftruncate(fd, 0)
            os.pwrite(fd, description.encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # also releases the flock


async def _acquire(fd: int, name: str, timeout: float) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delays = poll_delays(_LOCK_FIRST_DELAY, 2, _LOCK_MAX_DELAY)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if loop.time() >= deadline:
                raise LockTimeout(name, _read_holder(fd), timeout) from None
            await asyncio.sleep(clamp_to_deadline(next(delays), loop.time(), deadline))
        else:
            return


def _read_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, _HOLDER_MAX_CHARS * 4, 0)
    except OSError:
        return ""
    text = raw.decode("utf-8", errors="replace")
    return " ".join(text.split())[:_HOLDER_MAX_CHARS]


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as error:
        raise StorageError(f"cannot remove {path}: {_describe_os_error(error)}", path) from None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
