"""`cert-sidecar status`: what is deployed, when it renews, and what went wrong last."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sidecar import control, wiring
from sidecar.config import Settings
from sidecar.deploy import Deployer
from sidecar.errors import ConfigError
from sidecar.inventory import Inventory, cert_status, utc_now
from sidecar.metrics import CertStatus

# ``status`` reads; the running sidecar answers from memory and one directory listing.
LIVE_TIMEOUT = 30.0


def _left(now: datetime, until: datetime | None) -> str:
    if until is None:
        return "-"
    delta = until - now
    sign = "-" if delta < timedelta(0) else ""
    seconds = int(abs(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours}h"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    return f"{sign}{minutes}m{seconds:02d}s"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def status_record(status: CertStatus, now: datetime) -> dict[str, Any]:
    """One certificate for ``status --json`` and the table, from the shared `CertStatus`
    (`sidecar.inventory.cert_status`); the field names are this command's own."""
    state = "unreadable" if status.unreadable else status.state
    return {
        "name": status.name,
        "names": list(status.domains),
        "state": state,
        "serial": status.serial,
        "not_before": _iso(status.not_before),
        "not_after": _iso(status.not_after),
        "seconds_left": int((status.not_after - now).total_seconds()) if status.not_after else None,
        "next_renewal": _iso(status.next_renewal),
        "due": status.due,
        "last_error": status.last_error,
        "failures": status.consecutive_failures,
        "next_retry_at": _iso(status.next_retry_at),
        "last_success": _iso(status.last_success),
        "deployed_serial": status.deployed_serial,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


async def collect(
    settings: Settings, inventory: Inventory, deployer: Deployer | None
) -> list[dict[str, Any]]:
    """Every certificate's record; what HAProxy serves is asked live where a socket is set."""
    now = utc_now()
    records = []
    for spec in settings.certificates:
        view = inventory.inspect(spec, now)
        deployed = view.facts.serial_hex if view.facts else None
        if deployer is not None and deployer.runtimes:
            try:
                deployed = await deployer.deployed_serial(spec.name)
            except Exception as error:
                deployed = f"? ({type(error).__name__})"
        records.append(status_record(cert_status(view, now, deployed_serial=deployed), now))
    return records


def orphan_records(inventory: Inventory, settings: Settings) -> list[dict[str, Any]]:
    """The PEMs on disk that no configured certificate owns (`sidecar.orphans`)."""
    records = []
    for orphan in inventory.orphans(spec.name for spec in settings.certificates):
        facts = orphan.facts
        kind = "unreadable" if facts is None else "placeholder" if facts.is_placeholder else "real"
        records.append(
            {
                "name": orphan.name,
                "path": str(orphan.path),
                "kind": kind,
                "names": list(facts.names) if facts else [],
                "serial": facts.serial_hex if facts else None,
                "not_after": _iso(facts.not_after) if facts else None,
            }
        )
    return records


def render_orphans(records: list[dict[str, Any]]) -> str:
    """The not-configured PEMs under the table, with the command that removes one."""
    if not records:
        return ""
    headers = ["NAME", "NAMES", "NOT AFTER", "KIND", "SERIAL"]
    rows = [
        [
            r["name"],
            ",".join(r["names"]) or "-",
            _when(datetime.fromisoformat(r["not_after"])) if r["not_after"] else "-",
            r["kind"],
            r["serial"] or "-",
        ]
        for r in records
    ]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    title = (
        "\nNot configured, still on disk and served by HAProxy "
        "(remove one with: cert-sidecar revoke NAME --remove):"
    )
    return "\n".join([title, *(_printable(line) for line in lines)])


def _printable(text: str) -> str:
    """One line with no control characters: an error may quote the CA or a hook, and an
    escape sequence from either must not reach the operator's terminal."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))


def render_table(records: list[dict[str, Any]], now: datetime) -> str:
    """The table; LAST ERROR is the last column and printed whole: the end of an error
    ("... connection refused") is usually the part that says what to do."""
    headers = ["NAME", "NAMES", "NOT AFTER", "LEFT", "NEXT RENEWAL", "DEPLOYED", "LAST ERROR"]
    rows = []
    for record in records:
        not_after = datetime.fromisoformat(record["not_after"]) if record["not_after"] else None
        renewal = datetime.fromisoformat(record["next_renewal"]) if record["next_renewal"] else None
        left = _left(now, not_after) if record["state"] == "valid" else record["state"]
        rows.append(
            [
                record["name"],
                ",".join(record["names"]),
                _when(not_after),
                left,
                _when(renewal),
                record["deployed_serial"] or "-",
                _printable(record["last_error"] or "-"),
            ]
        )
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


async def cmd_status(settings: Settings, *, as_json: bool = False) -> int:
    inventory = wiring.inventory(settings, create_state=False)
    records = await collect(settings, inventory, wiring.deployer(settings))
    orphans = orphan_records(inventory, settings)
    if as_json:
        json.dump({"certificates": records, "not_configured": orphans}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_table(records, utc_now()))
        if orphans:
            print(render_orphans(orphans))
    return 0


async def cmd_status_live(state_dir: Path, problem: ConfigError, *, as_json: bool = False) -> int:
    """``status`` when the configuration does not load: the running sidecar's own view (it
    keeps its last good settings), under a one-line warning. Without a running sidecar, or one
    too old to answer, ``problem`` is the answer (exit 2)."""
    answer = await control.request(state_dir, {"command": "status"}, timeout=LIVE_TIMEOUT)
    if answer is None or not answer.get("ok") or "not_configured" not in answer:
        raise problem
    records = answer["results"]
    orphans = answer["not_configured"]
    print(
        f"cert-sidecar: warning: the configuration does not load ({problem}); showing the "
        "running sidecar, which keeps its last good settings",
        file=sys.stderr,
    )
    if as_json:
        json.dump({"certificates": records, "not_configured": orphans}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_table(records, utc_now()))
        if orphans:
            print(render_orphans(orphans))
    return 0
