"""What `run` does each time a configuration takes effect: at start and after each reload.

- The CA directory is fetched (`ca_probe.check_reachable`): a wrong URL shows at once, as a
  warning naming the setting and ``cert_sidecar_ca_reachable 0``, not at the first renewal.
- Each PEM on disk that the configuration does not name is warned about once
  (`orphans.log_orphans`) and counted in ``cert_sidecar_certificates_not_configured``.
- After a reload, a certificate's last failure came from a configuration that is gone: it is
  marked as such in its metadata and its backoff is dropped (`mark_errors_stale`), so
  ``status`` does not show an error from a fixed configuration until the next success hours
  later, and the new configuration is tried at once.

`sidecar.service` calls these with a two-line hook; they hold no state of their own.
"""

from __future__ import annotations

from dataclasses import replace

from sidecar import ca_probe, orphans
from sidecar.config import Settings, work_fingerprint
from sidecar.errors import error_text
from sidecar.inventory import Inventory, utc_now
from sidecar.logs import get_logger
from sidecar.metrics import Metrics
from sidecar.storage import StorageError
from sidecar.wiring import Parts

__all__ = ["STALE_PREFIX", "mark_errors_stale", "settings_applied"]

log = get_logger("sidecar.applied")

STALE_PREFIX = "(from the configuration before the reload at "


async def settings_applied(parts: Parts, metrics: Metrics) -> None:
    """At start (once the CA bundle is there) and after each reload."""
    settings, manager = parts.settings, parts.manager
    found = orphans.log_orphans(manager.inventory, (spec.name for spec in settings.certificates))
    metrics.set_not_configured(len(found))
    # The issuer's client options: tests hand an in-process CA to both.
    await ca_probe.check_reachable(
        settings, metrics, client_options=manager.issuer.account.client_options
    )


def mark_errors_stale(old: Settings, new: Settings, inventory: Inventory) -> list[str]:
    """After a reload (every certificate's lock held): each certificate whose configuration
    changed keeps its last error only as history, and loses its failure count and backoff.
    Returns the names it changed."""
    before, after = work_fingerprint(old), work_fingerprint(new)
    shared_changed = any(before[k] != after[k] for k in before if k != "certificates")
    changed = []
    stamp = utc_now().strftime("%Y-%m-%d %H:%M:%SZ")
    for spec in new.certificates:
        if not shared_changed and old.certificate(spec.name) == spec:
            continue
        meta = inventory.load_meta(spec.name)
        if not meta.failures or not meta.last_error or meta.last_error.startswith(STALE_PREFIX):
            continue
        stale = replace(
            meta,
            last_error=f"{STALE_PREFIX}{stamp}) {meta.last_error}",
            failures=0,
            next_retry_at=None,
        )
        try:
            inventory.store.save_meta(spec.name, stale)
        except (StorageError, OSError) as error:
            log.warning("cert_meta_write_failed", cert=spec.name, error=error_text(error))
            continue
        changed.append(spec.name)
    if changed:
        log.info("cert_errors_marked_stale", certs=changed)
    return changed
