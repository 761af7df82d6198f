"""Certificates on disk that the configuration no longer names, and how they go away.

A name removed from the configuration (or renamed, or a typo corrected) leaves its
``<name>.pem`` in the certs directory. HAProxy loads every file of that directory, so it keeps
serving it; nothing renews it, and it is not in ``status``, ``/metrics`` nor the alerts. `run`
does not delete or unload such a file by itself: the configuration it lost the name from may be
the mistake (a typo in ``CERT_SIDECAR_DOMAINS``, a half-saved file), and unloading a name that
clients still use breaks them at once, whereas a forgotten certificate only expires. So `run`
warns (``cert_not_configured``, once per name at start and on each reload), ``status`` lists
them, ``/metrics`` counts them, and ``revoke NAME --remove`` removes one on purpose.

Removal is ``revoke --remove`` as for a configured certificate: a real certificate is revoked at
the CA first (its key is still on disk), then unloaded from HAProxy, then its PEM and state are
deleted. A placeholder (or an unreadable file) was never issued, so it is only unloaded and
deleted.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar import storage
from sidecar.config import CertificateSpec, Settings
from sidecar.errors import error_text
from sidecar.inventory import Inventory, Orphan
from sidecar.logs import get_logger
from sidecar.manager import LOCK_WAIT, Manager
from sidecar.outcome import Action, Outcome

__all__ = ["find", "log_orphans", "remove"]

log = get_logger("sidecar.orphans")


def find(inventory: Inventory, settings: Settings, name: str) -> Orphan | None:
    """The orphan called ``name``, or None (configured, or no such file)."""
    if settings.certificate(name) is not None:
        return None
    return next(
        (o for o in inventory.orphans(s.name for s in settings.certificates) if o.name == name),
        None,
    )


def log_orphans(inventory: Inventory, configured: Iterable[str]) -> list[Orphan]:
    """Warn once for each orphan (`run`: at start and after each reload); returns them."""
    found = inventory.orphans(configured)
    for orphan in found:
        facts = orphan.facts
        log.warning(
            "cert_not_configured",
            cert=orphan.name,
            path=str(orphan.path),
            serial=facts.serial_hex if facts else None,
            placeholder=facts.is_placeholder if facts else None,
            not_after=facts.not_after.isoformat() if facts else None,
            fix=f"cert-sidecar revoke {orphan.name} --remove",
        )
    return found


async def remove(
    manager: Manager, orphan: Orphan, settings: Settings, *, reason: int | None = None
) -> Outcome:
    """``revoke NAME --remove`` for an orphan (see the module docstring)."""
    facts = orphan.facts
    if facts is not None and not facts.is_placeholder:
        # A real certificate: exactly what revoke --remove does for a configured one.
        spec = CertificateSpec(
            orphan.name, facts.names, settings.acme.key_type, settings.acme.challenge
        )
        return await manager.revoke(spec, reason=reason, remove=True)
    try:
        async with manager.store.lock(orphan.name, timeout=LOCK_WAIT, holder=manager.holder):
            return await _remove_unissued(manager, orphan)
    except storage.LockTimeout as error:
        return Outcome.failed(orphan.name, error_text(error))


async def _remove_unissued(manager: Manager, orphan: Orphan) -> Outcome:
    bound = log.bind(cert=orphan.name)
    warning: str | None = None
    if manager.deployer is not None and manager.deployer.runtimes:
        try:
            await manager.deployer.remove(orphan.name)
        except Exception as error:
            warning = f"HAProxy unload failed: {error_text(error)}"
            bound.error("haproxy_remove_failed", error=error_text(error))
    try:
        orphan.path.unlink(missing_ok=True)
        manager.store.remove_cert(orphan.name)
    except (OSError, storage.StorageError) as error:
        return Outcome.failed(orphan.name, error_text(error))
    bound.info("cert_removed", serial=orphan.facts.serial_hex if orphan.facts else None)
    return Outcome(orphan.name, Action.REMOVED, ok=True, error=warning)
