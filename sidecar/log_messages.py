"""The sentence each log event begins with, for the people who read the log.

Events keep their names (``cert_issued``) for filters, alerts and the README; `MESSAGES` says
the same in words. A certificate's events carry its name in ``cert``, which `sidecar.logs`
puts in front (``demo.example: new certificate issued``), so no sentence here names it. An event
missing from the table reads as its name with spaces (``cert issued``); the tests require an
entry for every event the sidecar logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["COVERED", "MESSAGES", "sentence_for"]

MESSAGES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "cert_errors_marked_stale": "the configuration changed: its last error is now stale",
        "ca_directory_ok": "the CA's ACME directory answers",
        "ca_directory_unusable": "the CA's ACME directory cannot be used: check the setting named",
        "renewal_info_failed": "the CA's renewal information (ARI) could not be fetched",
        "cert_not_configured": "a PEM on disk is no longer configured (revoke NAME --remove)",
        "sd_notify_ready": "told systemd READY=1: every certificate or its placeholder is on disk",
        "sd_notify_failed": "could not notify systemd (NOTIFY_SOCKET); going on without",
        "sd_notify_dropped": "a systemd notification was dropped (its socket was full)",
        "sd_notify_status_failed": "could not compose the systemd status line",
        "parts_retire_failed": "closing the parts a reload replaced failed",
        "acme_client_close_failed": "closing a replaced ACME client failed",
        "cert_backoff_record_failed": "could not store a failed check's backoff; retrying soon",
        "cert_schedule_inspect_failed": "could not read the certificate to plan its next check",
        # The ACME account and the CA.
        "acme_account_registered": "ACME account registered with the CA",
        "acme_account_reregistered": "the CA knows the ACME account under a new URL (saved)",
        "ca_bundle_changed": "CA bundle changed: the next order trusts the new one",
        "ca_bundle_ready": "CA bundle found",
        "ca_bundle_waiting": "waiting for the CA bundle",
        "ca_bundle_watch_failed": "cannot watch the CA bundle for changes",
        "clock_skew": "this clock and the CA's disagree",
        "renewal_info_unavailable": "no renewal window from the CA (ARI)",
        "renewal_info_window": "renewal window suggested by the CA (ARI)",
        # One certificate's life.
        "cert_renewal_started": "ordering a new certificate",
        "cert_issued": "new certificate issued and written",
        "cert_dry_run_succeeded": "dry run succeeded; nothing written",
        "cert_renewal_failed": "renewal failed",
        "cert_renewal_scheduled": "next renewal scheduled",
        "cert_check_crashed": "the check crashed",
        "cert_lock_timeout": "another process holds this certificate's lock",
        "cert_placeholder_written": "placeholder written until the first certificate",
        "cert_revoked": "certificate revoked at the CA",
        "cert_revocation_failed": "revocation failed",
        "cert_removed": "certificate files removed",
        "cert_untrusted_by_new_root": "not issued under the new CA bundle: renewing",
        "cert_meta_corrupt": "meta.json does not parse",
        "cert_meta_unreadable": "meta.json cannot be read; its retry state is lost",
        "cert_meta_write_failed": "cannot write meta.json",
        # HAProxy.
        "haproxy_updated": "HAProxy serves the new certificate",
        "haproxy_update_failed": "HAProxy did not take the new certificate",
        "haproxy_serves_other": "HAProxy serves another certificate than the file",
        "haproxy_check_failed": "cannot ask HAProxy what it serves",
        "haproxy_placeholder_loaded": "placeholder loaded into HAProxy",
        "haproxy_placeholder_not_loaded": "placeholder not loaded into HAProxy (not up yet?)",
        "haproxy_placeholder_deploy_failed": "loading the placeholder into HAProxy failed",
        "haproxy_remove_failed": "cannot unload the certificate from HAProxy",
        # The configuration.
        "config_reloaded": "configuration reloaded",
        "config_reload_failed": "configuration not reloaded; the running settings stay",
        "config_needs_restart": "changed settings take effect at the next start",
        # The service and its sockets.
        "service_starting": "cert-sidecar starting",
        "service_stopping": "cert-sidecar stopping",
        "service_stopped": "cert-sidecar stopped",
        "service_stop_slow": "a part is slow to stop",
        "service_stop_failed": "a part failed to stop",
        "service_task_failed": "a service task failed",
        "responder_close_failed": "a challenge responder did not close cleanly",
        "responder_restart_failed": "a challenge responder could not be restarted",
        "control_socket_listening": "control socket listening for one-shot commands",
        "control_socket_stale_removed": "stale control socket removed",
        "control_socket_closed": "control socket closed",
        "control_socket_failed": "control socket failed",
        "control_request": "a one-shot command handed its work over",
        "control_request_refused": "control request refused",
        "control_request_failed": "control request failed",
        "control_bad_answer": "control request answered badly",
        "health_listening": "health server listening",
        "health_request_failed": "health request failed",
        "stale_temp_files_removed": "leftover temporary files removed",
        "state_file_corrupt": "a state file does not parse",
    }
)

# ``ca_client`` records (by their ``acme_event`` attribute) that say what a sidecar event says
# too: in the sidecar's log they show at debug level only (one line per fact).
COVERED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "order_created": "cert_renewal_started",
        "certificate_issued": "cert_issued",
        "account_created": "acme_account_registered",
        "certificate_revoked": "cert_revoked",
    }
)


def sentence_for(event: str) -> str:
    """The sentence for a sidecar event; its name with spaces when the table has none."""
    return MESSAGES.get(event) or event.replace("_", " ")
