"""The CA-bundle watch of `cert-sidecar run`: wait for the bundle, then follow its rotations.

The bundle may not exist when the sidecar starts (the CA writes it into a shared volume), may
be half-written for a moment (not every CA writes atomically), and may later be replaced by
one with new roots. `BundleWatch` says each of these once: ``ca_bundle_waiting`` while it is
missing or unparseable, ``ca_bundle_ready`` when it first parses (which lets the scheduler
start), ``ca_bundle_changed`` on a rotation, after which trust is rebuilt and every deployed
certificate the new roots no longer verify is re-issued at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from sidecar import pem, watch
from sidecar.errors import ConfigError, error_text
from sidecar.logs import get_logger
from sidecar.trust import load_ca_bundle
from sidecar.wiring import Parts

__all__ = ["BUNDLE_RECHECK", "BundleWatch"]

# The service's logger: these events were always the service's, and stay under its name.
log = get_logger("sidecar.service")

# How long to wait before retrying when the CA bundle exists but does not parse yet (it may be
# in the middle of being written by a CA that does not write atomically).
BUNDLE_RECHECK = 2.0


class BundleWatch:
    """Watches the current parts' ``settings.acme.ca_bundle``; ``ready`` is set once it parses.

    On a rotation it drops the current manager's ACME client and calls ``recheck`` with the
    name of each certificate the new roots do not verify; it stops once ``stopping`` is set.
    """

    def __init__(
        self,
        parts: Callable[[], Parts],
        *,
        stopping: asyncio.Event,
        recheck: Callable[[str], None],
    ) -> None:
        self._parts = parts
        self._stopping = stopping
        self._recheck = recheck
        self.ready = asyncio.Event()
        self._seen: bytes | None = None
        self._announced = False

    def _state(self) -> tuple[bytes | None, str | None]:
        try:
            text = load_ca_bundle(self._parts().settings.acme.ca_bundle)
        except ConfigError as error:
            return None, str(error)
        return text.encode(), None

    async def watch(self) -> None:
        """Wait for the bundle to appear and parse; later, rebuild trust when it changes."""
        stop = self._stopping
        while not stop.is_set():
            # Read again each time round: a reload may have pointed the setting elsewhere.
            path = self._parts().settings.acme.ca_bundle
            data = await self.look()
            watched = _existing_parent(path)
            try:
                # The parent is watched rather than the file: the file may not exist yet, and
                # volume writers often replace it by rename, which a file watch would miss.
                async for _changes in watch.awatch(
                    watched,
                    stop_event=stop,
                    watch_filter=functools.partial(_bundle_change, path),
                    debounce=200,
                    rust_timeout=int(BUNDLE_RECHECK * 1000) if data is None else 30_000,
                    yield_on_timeout=True,
                    recursive=watched != path.parent,
                ):
                    break
            except (OSError, RuntimeError) as error:
                log.warning("ca_bundle_watch_failed", error=error_text(error))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), BUNDLE_RECHECK)

    async def look(self) -> bytes | None:
        """Act on the bundle as it is now: first ready, rotated, or (once) still missing."""
        path = self._parts().settings.acme.ca_bundle
        data, problem = self._state()
        if data is not None and data != self._seen:
            first = self._seen is None
            self._seen = data
            if first:
                log.info("ca_bundle_ready", path=str(path))
                self.ready.set()
            else:
                await self._rotated()
        elif data is None and not self._announced:
            log.warning("ca_bundle_waiting", path=str(path), problem=problem)
            self._announced = True
        return data

    async def moved(self) -> None:
        """The setting now names another file (a reload): say again if it is missing, and act
        on it now rather than on the watcher's next round."""
        self._announced = False
        await self.look()

    async def _rotated(self) -> None:
        """A new bundle: rebuild trust, and re-issue what the new roots no longer verify."""
        log.info("ca_bundle_changed", path=str(self._parts().settings.acme.ca_bundle))
        # No lock needed: orders in flight finish on the client they started with, which is
        # closed after the last of them (`Issuer.reset`); the next order builds trust anew.
        await self._parts().manager.reset_client()
        roots = _load_roots(self._seen or b"")
        parts = self._parts()  # as they are now: a reload may have swapped them meanwhile
        for spec in parts.settings.certificates:
            view = parts.manager.inspect(spec)
            if not view.is_real:
                continue
            if not _chain_verifies(view.path, roots):
                log.warning("cert_untrusted_by_new_root", cert=spec.name)
                self._recheck(spec.name)


def _bundle_change(target: Path, _change: object, changed: str) -> bool:
    """The bundle watch's filter (watchfiles passes the change kind and the path)."""
    return _leads_to(Path(changed), target)


def _leads_to(changed: Path, target: Path) -> bool:
    """Whether a change matters for ``target``: the file itself, or a directory on its way."""
    return changed == target or changed in target.parents


def _existing_parent(path: Path) -> Path:
    """The nearest directory that exists, to watch for the bundle's appearance."""
    for candidate in [path.parent, *path.parent.parents]:
        if candidate.is_dir():
            return candidate
    return Path("/")


def _load_roots(data: bytes) -> list[x509.Certificate]:
    try:
        return pem.parse_certificates(data)
    except pem.PemError:
        return []


def _chain_verifies(path: Path, roots: list[x509.Certificate]) -> bool:
    """Whether the deployed chain leads to one of ``roots`` (signature check, top down)."""
    try:
        bundle = pem.parse_combined(path.read_bytes())
    except (OSError, pem.PemError):
        return True  # nothing to judge; the normal check handles unreadable files
    top = ([bundle.leaf, *bundle.chain])[-1]
    for root in roots:
        if top.fingerprint(hashes.SHA256()) == root.fingerprint(hashes.SHA256()):
            return True
        try:
            top.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False
