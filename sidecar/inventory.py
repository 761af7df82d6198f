"""The one read side: what is on disk and deployed for each certificate, and its status.

`Inventory` answers "what is there?" for the manager, ``status``, ``/readyz`` and ``/metrics``:
the deployed combined PEM (parsed once per version of the file), the stored metadata, the CA's
last renewal window (RFC 9773), and what HAProxy was last seen serving. `cert_status` turns that
into the one `metrics.CertStatus` every surface renders, so they cannot disagree.

Only the `Manager` writes here (`remember_renewal_info`, `record_served`): it is the one writer
of deploy state. That state lives in memory only: after a restart, HAProxy is asked again
(`Manager.ensure_served`), as it alone knows what it serves. Reading never writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ca_client.models import RenewalInfo
from sidecar import metrics, pem, policy, storage
from sidecar.config import CertificateSpec
from sidecar.domains import validate_certificate_name
from sidecar.errors import one_line
from sidecar.logs import get_logger

__all__ = ["CertView", "Inventory", "Orphan", "cert_status", "orphan_names", "utc_now"]

log = get_logger("sidecar.inventory")

# (facts, why unreadable, key matches) of one deployed file.
_Read = tuple[pem.CertFacts | None, str | None, bool]
# An answer without Retry-After is asked again after this share of the lifetime (RFC 9773 §4.3
# leaves it to the client); a CA without renewalInfo a few times a lifetime.
_ARI_REFETCH_SHARE = 10
_NO_ARI_REFETCH_SHARE = 4
_ARI_MIN_WAIT = timedelta(seconds=60)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CertView:
    """What is on disk for one configured certificate, and what the policy says about it."""

    spec: CertificateSpec
    path: Path
    facts: pem.CertFacts | None
    unreadable: str | None
    key_matches: bool
    meta: storage.CertMeta
    due: policy.DueReason | None
    next_renewal: datetime | None

    @property
    def is_real(self) -> bool:
        """A parseable, non-placeholder certificate is deployed (possibly expired)."""
        return self.facts is not None and not self.facts.is_placeholder


@dataclass(frozen=True, slots=True)
class _AriEntry:
    """The last renewal-info answer for one certificate (by serial)."""

    serial: int
    window: tuple[datetime, datetime] | None
    next_fetch: datetime


@dataclass(frozen=True, slots=True)
class Served:
    """What the last look at HAProxy found: whether it serves the file (None: not known), and
    the serial it serves."""

    matches: bool | None
    serial: str | None


@dataclass(frozen=True, slots=True)
class Orphan:
    """A ``<name>.pem`` in the certs directory that no configured certificate owns: a name
    removed from the configuration, or a typo's placeholder. HAProxy loads every file of the
    directory, so it is still served, and nothing renews it."""

    name: str
    path: Path
    facts: pem.CertFacts | None
    unreadable: str | None


def orphan_names(certs_dir: Path, configured: Iterable[str]) -> list[str]:
    """The names of the PEMs in ``certs_dir`` that are not in ``configured``, sorted.

    Only what the sidecar could have written counts: ``<name>.pem`` with a valid certificate
    name; dot-files (its temporary files) and anything else an operator keeps there do not.
    """
    wanted = set(configured)
    try:
        entries = list(os.scandir(certs_dir))
    except OSError:
        return []  # a missing or unreadable directory has no orphans to show
    names = []
    for entry in entries:
        if not entry.name.endswith(".pem"):
            continue
        name = entry.name.removesuffix(".pem")
        try:
            validate_certificate_name(name)
        except ValueError:
            continue
        if name not in wanted and entry.is_file(follow_symlinks=False):
            names.append(name)
    return sorted(names)


class Inventory:
    """What is deployed for each certificate; see the module docstring."""

    def __init__(
        self,
        store: storage.StateStore,
        certs_dir: Path,
        *,
        renew_at: float,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.certs_dir = certs_dir
        self.renew_at = renew_at
        self.now = now
        self._ari: dict[str, _AriEntry] = {}
        self._served: dict[str, Served] = {}
        self._cache: dict[Path, tuple[tuple[int, int, int], _Read]] = {}

    def pem_path(self, name: str) -> Path:
        return self.certs_dir / f"{name}.pem"

    def inspect(self, spec: CertificateSpec, now: datetime | None = None) -> CertView:
        """Read the deployed combined PEM and the metadata, and ask the policy about them."""
        now = now or self.now()
        path = self.pem_path(spec.name)
        facts, unreadable, matches = self._read_deployed(path)
        meta = self.load_meta(spec.name)
        window = self._window(spec.name, facts)
        due = policy.due_reason(
            now,
            facts,
            wanted_names=spec.domains,
            wanted_key_type=str(spec.key_type),
            renew_at=self.renew_at,
            unreadable=unreadable is not None,
            key_matches=matches,
            ari_window=window,
        )
        next_renewal: datetime | None = None
        if facts is not None and not facts.is_placeholder:
            next_renewal = policy.facts_renewal_time(facts, self.renew_at, window)
        if due is not None:
            next_renewal = now
        if meta.next_retry_at is not None and meta.failures and due is not None:
            next_renewal = max(now, meta.next_retry_at)
        return CertView(spec, path, facts, unreadable, matches, meta, due, next_renewal)

    def _read_deployed(self, path: Path) -> _Read:
        """`/readyz`, `/metrics` and every scheduled check look at every certificate; parsing
        a thousand PEMs per scrape would dominate an idle sidecar. The file is only ever
        replaced by rename, so (inode, mtime, size) changes whenever its content does.
        """
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._cache.pop(path, None)
            return None, None, True
        except OSError as error:
            return None, f"cannot read {path}: {error.strerror or error}", True
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            data = path.read_bytes()
        except OSError as error:
            return None, f"cannot read {path}: {error.strerror or error}", True
        result: _Read
        try:
            bundle = pem.parse_combined(data)
        except pem.PemError as error:
            result = (None, f"{path}: {error}", True)
        else:
            result = (
                pem.describe_cert(bundle.leaf),
                None,
                pem.key_matches(bundle.leaf, bundle.key),
            )
        self._cache[path] = (key, result)
        return result

    def orphans(self, configured: Iterable[str]) -> list[Orphan]:
        """Every PEM on disk that is not configured (see `Orphan`), with what it holds."""
        found = []
        for name in orphan_names(self.certs_dir, configured):
            path = self.pem_path(name)
            facts, unreadable, _ = self._read_deployed(path)
            found.append(Orphan(name, path, facts, unreadable))
        return found

    def remember_written(self, path: Path, stat: os.stat_result, facts: pem.CertFacts) -> None:
        """The writer's word for a PEM it just replaced with a checked one (key matching the
        leaf, `pem.combine_for_deploy`): the next look at it is a stat, not a parse. ``stat``
        is of the file after the rename, so any later replacement misses this entry."""
        self._cache[path] = ((stat.st_ino, stat.st_mtime_ns, stat.st_size), (facts, None, True))

    def load_meta(self, name: str) -> storage.CertMeta:
        try:
            return self.store.load_meta(name) or storage.CertMeta()
        except storage.StorageError as error:
            # A meta.json that cannot be read (an I/O error, a directory in its place) loses
            # the retry state, not the certificate, and not `status` for every certificate.
            # (A corrupt one never gets here: the store logs cert_meta_corrupt, returns None.)
            log.warning("cert_meta_unreadable", cert=name, error=one_line(str(error)))
            return storage.CertMeta()

    # -- the CA's renewal window (RFC 9773) ---------------------------------------------------

    def _window(self, name: str, facts: pem.CertFacts | None) -> tuple[datetime, datetime] | None:
        """A window only applies to the certificate it was fetched for."""
        entry = self._ari.get(name)
        if facts is None or entry is None or entry.serial != facts.serial:
            return None
        return entry.window

    def renewal_info_stale(self, name: str, facts: pem.CertFacts, now: datetime) -> bool:
        """RFC 9773 §4.3: poll no sooner than the CA's Retry-After."""
        entry = self._ari.get(name)
        return entry is None or entry.serial != facts.serial or now >= entry.next_fetch

    def remember_renewal_info(
        self, name: str, facts: pem.CertFacts, info: RenewalInfo | None, now: datetime
    ) -> None:
        """Keep the CA's answer (None: no window offered) until it is due to be asked again."""
        lifetime = facts.not_after - facts.not_before
        if info is None:
            self._ari[name] = _AriEntry(facts.serial, None, now + lifetime / _NO_ARI_REFETCH_SHARE)
            return
        wait = (
            timedelta(seconds=info.retry_after)
            if info.retry_after
            else lifetime / _ARI_REFETCH_SHARE
        )
        self._ari[name] = _AriEntry(
            facts.serial, (info.start, info.end), now + max(wait, _ARI_MIN_WAIT)
        )
        log.info(
            "renewal_info_window",
            cert=name,
            start=info.start.isoformat(),
            end=info.end.isoformat(),
        )

    # -- what HAProxy serves -------------------------------------------------------------------

    def served(self, name: str) -> Served:
        return self._served.get(name, Served(None, None))

    def record_served(self, name: str, matches: bool | None, serial: str | None = None) -> None:
        """The Manager's record of its last deploy or check (``serial`` None: keep the last)."""
        previous = self._served.get(name)
        if serial is None and previous is not None:
            serial = previous.serial
        self._served[name] = Served(matches, serial)

    def adopt_served(self, other: Inventory) -> None:
        """Carry what HAProxy was seen serving across a reload (it did not change with it)."""
        self._served.update(other._served)


def cert_status(
    view: CertView,
    now: datetime,
    *,
    deployed_serial: str | None,
    served_matches: bool | None = None,
    last_failure: tuple[datetime, metrics.ErrorKind] | None = None,
) -> metrics.CertStatus:
    """The one status of a certificate, rendered by ``status``, ``/readyz`` and ``/metrics``.

    ``deployed_serial`` is what HAProxy serves as far as the caller knows (``status`` asks it;
    ``run`` remembers its last look, else the file's serial); ``last_failure`` is when and why
    an attempt failed in this process: a failure from before it started has its time stored,
    but not its kind.
    """
    facts = view.facts
    meta = view.meta
    since = meta.last_attempt_at if meta.failures else None
    return metrics.status_from_facts(
        view.spec.name,
        view.spec.domains,
        facts,
        now,
        next_renewal=view.next_renewal,
        last_error=meta.last_error or view.unreadable,
        consecutive_failures=meta.failures,
        last_success=meta.last_success_at,
        deployed_serial=deployed_serial,
        served_matches=served_matches,
        last_failure=last_failure[0] if last_failure else since,
        last_error_kind=last_failure[1] if last_failure and meta.failures else None,
        unreadable=view.unreadable is not None,
        due=str(view.due) if view.due else None,
        next_retry_at=meta.next_retry_at,
    )
