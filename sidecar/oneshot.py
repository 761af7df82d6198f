"""The one-shot commands: `issue`, `renew` and `revoke`.

Each first asks a running `cert-sidecar run` to do the work through the control socket in the
state directory (it holds the challenge ports and the state), and does it itself only when no
sidecar is running. Either way it prints one line per certificate and exits 0 only when every
certificate ended valid.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import Any

from sidecar import ca_probe, orphans, wiring
from sidecar.config import WORK_FIELDS, CertificateSpec, Settings, work_fingerprint, work_label
from sidecar.control import outcome_from_json, request
from sidecar.errors import ConfigError, OperationError
from sidecar.outcome import Outcome, revocation_code

# A renewal pass handed to a running sidecar may include slow orders (a DNS hook waiting for
# propagation, a CA under load); the sidecar bounds each order itself.
HANDOFF_TIMEOUT = 900.0
# The running sidecar answers what its settings are from memory.
SETTINGS_TIMEOUT = 30.0


def _refuse_other_settings(settings: Settings, running: dict[str, Any], command: str) -> None:
    """A running sidecar does handed-over work with its own settings, so a one-shot whose
    settings differ (a ``--directory`` to try, another key type, ...) would silently not get
    what it asked for: refuse it, naming what differs (exit 2). Doing it here instead is no
    way out: `run` holds the challenge ports and the certificates' locks."""
    theirs = running.get("work")
    if not running.get("ok") or not isinstance(theirs, dict):
        return  # a sidecar from before this check: it cannot say
    ours = work_fingerprint(settings)
    differ = [name for name in WORK_FIELDS if theirs.get(name) != ours[name]]
    if not differ:
        return
    labels = [work_label(settings, name) for name in differ]
    also = f" (also: {', '.join(labels[1:])})" if len(labels) > 1 else ""
    raise ConfigError(
        labels[0],
        f"differs from the running cert-sidecar's setting{also}; it would do this {command} "
        "with its own settings, so it was not asked: change the configuration it runs with "
        "(a config file is reloaded), or stop it to run this here; to test another CA, use "
        "'check-config --online'",
    )


async def _hand_off(
    settings: Settings, payload: dict[str, Any], *, probe_ca: bool = True
) -> int | None:
    """Let a running sidecar do it; None when there is none (the CA's directory fetched
    either way, when ``probe_ca``, once the settings are known to be the ones that count)."""
    running = await request(
        settings.files.state_dir, {"command": "settings"}, timeout=SETTINGS_TIMEOUT
    )
    if running is not None:
        command = str(payload["command"])
        _refuse_other_settings(settings, running, command.replace("remove-orphan", "revoke"))
    if probe_ca:
        # So that a wrong URL is named as such (setting and URL), not as the CA's bare
        # "notFound (HTTP 404)", and a dry run that orders nothing still tests the CA.
        await ca_probe.fetch(settings)
    if running is None:
        return None
    answer = await request(settings.files.state_dir, payload, timeout=HANDOFF_TIMEOUT)
    if answer is None:
        return None
    for item in answer.get("results") or []:
        _print(outcome_from_json(item))
    if answer.get("error"):
        print(f"cert-sidecar: error: {answer['error']}", file=sys.stderr)
    print("(done by the running cert-sidecar)", file=sys.stderr)
    return int(answer.get("exit_code", 1))


def _print(outcome: Outcome, *, retried: bool = True) -> None:
    """One line; ``retried``: something will try again (the running sidecar did the work).
    Done here, nothing retries it, so its line names no next retry."""
    if not retried:
        outcome = replace(outcome, next_retry_at=None)
    stream = sys.stdout if outcome.ok else sys.stderr
    print(outcome.line(), file=stream)


def _exit_code(outcomes: list[Outcome]) -> int:
    return 0 if all(outcome.ok for outcome in outcomes) else 1


async def _pass(settings: Settings, command: str, *, force: bool, dry_run: bool) -> int:
    handed = await _hand_off(settings, {"command": command, "force": force, "dry_run": dry_run})
    if handed is not None:
        return handed
    async with wiring.opened(settings, holder=f"{command} pid {os.getpid()}") as parts:
        outcomes = await parts.manager.ensure_all(
            settings.certificates, force=force, dry_run=dry_run
        )
    for outcome in outcomes:
        _print(outcome, retried=False)
    return _exit_code(outcomes)


async def cmd_issue(settings: Settings, *, force: bool = False) -> int:
    return await _pass(settings, "issue", force=force, dry_run=False)


async def cmd_renew(settings: Settings, *, force: bool = False, dry_run: bool = False) -> int:
    return await _pass(settings, "renew", force=force, dry_run=dry_run)


def find_spec(settings: Settings, name: str) -> CertificateSpec:
    spec = settings.certificate(name)
    if spec is None:
        known = ", ".join(s.name for s in settings.certificates) or "none"
        on_disk = wiring.inventory(settings, create_state=False).pem_path(name)
        extra = (
            f"; {on_disk} is still on disk: 'revoke {name} --remove' removes it"
            if on_disk.is_file()
            else ""
        )
        raise OperationError(
            f"no configured certificate named {name!r} (configured: {known}){extra}"
        )
    return spec


async def _remove_orphan(settings: Settings, name: str, reason: str | None) -> int:
    """``revoke NAME --remove`` for a name no longer configured (`sidecar.orphans`)."""
    inventory = wiring.inventory(settings, create_state=False)
    if orphans.find(inventory, settings, name) is None:
        known = ", ".join(s.name for s in settings.certificates) or "none"
        raise OperationError(
            f"no certificate named {name!r}: not configured (configured: {known}) and no "
            f"{inventory.pem_path(name)}"
        )
    # A placeholder needs no CA; a real certificate's revocation names the CA if it fails.
    payload = {"command": "remove-orphan", "name": name, "reason": reason}
    handed = await _hand_off(settings, payload, probe_ca=False)
    if handed is not None:
        return handed
    async with wiring.opened(settings, holder=f"revoke pid {os.getpid()}") as parts:
        orphan = orphans.find(parts.manager.inventory, settings, name)
        if orphan is None:  # removed meanwhile by someone else
            raise OperationError(f"{inventory.pem_path(name)} is gone")
        outcome = await orphans.remove(
            parts.manager, orphan, settings, reason=revocation_code(reason)
        )
    _print(outcome, retried=False)
    return 0 if outcome.ok else 1


async def cmd_revoke(
    settings: Settings, name: str, *, reason: str | None = None, remove: bool = False
) -> int:
    try:
        reason_code = revocation_code(reason)
    except ValueError as error:
        raise OperationError(f"--reason: {error}") from None
    if settings.certificate(name) is None and remove:
        return await _remove_orphan(settings, name, reason)
    spec = find_spec(settings, name)
    handed = await _hand_off(
        settings, {"command": "revoke", "name": name, "reason": reason, "remove": remove}
    )
    if handed is not None:
        return handed
    async with wiring.opened(settings, holder=f"revoke pid {os.getpid()}") as parts:
        outcome = await parts.manager.revoke(spec, reason=reason_code, remove=remove)
    _print(outcome, retried=False)
    return 0 if outcome.ok else 1
