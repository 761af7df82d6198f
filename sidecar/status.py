"""`cert-sidecar status`: what is deployed, when it renews, and what went wrong last."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from typing import Any

from sidecar.config import Settings
from sidecar.manager import CertView, Manager, utc_now


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


def view_record(view: CertView, now: datetime, deployed_serial: str | None) -> dict[str, Any]:
    facts = view.facts
    state = "missing"
    if view.unreadable:
        state = "unreadable"
    elif facts is not None:
        state = (
            "placeholder"
            if facts.is_placeholder
            else ("expired" if facts.not_after <= now else "valid")
        )
    return {
        "name": view.spec.name,
        "names": list(view.spec.domains),
        "state": state,
        "serial": facts.serial_hex if facts else None,
        "not_before": facts.not_before.isoformat() if facts else None,
        "not_after": facts.not_after.isoformat() if facts else None,
        "seconds_left": int((facts.not_after - now).total_seconds()) if facts else None,
        "next_renewal": view.next_renewal.isoformat() if view.next_renewal else None,
        "due": str(view.due) if view.due else None,
        "last_error": view.meta.last_error or view.unreadable,
        "failures": view.meta.failures,
        "next_retry_at": view.meta.next_retry_at.isoformat() if view.meta.next_retry_at else None,
        "last_success": view.meta.last_success_at.isoformat()
        if view.meta.last_success_at
        else None,
        "deployed_serial": deployed_serial,
    }


async def collect(settings: Settings, manager: Manager) -> list[dict[str, Any]]:
    now = utc_now()
    records = []
    deployer = manager.deployer() if settings.haproxy_sockets else None
    for spec in settings.certificates:
        view = manager.inspect(spec, now)
        deployed = view.facts.serial_hex if view.facts else None
        if deployer is not None:
            try:
                deployed = await deployer.deployed_serial(spec.name)
            except Exception as error:
                deployed = f"? ({type(error).__name__})"
        records.append(view_record(view, now, deployed))
    return records


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
    async with Manager(settings, create_state=False) as manager:
        records = await collect(settings, manager)
    if as_json:
        json.dump({"certificates": records}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_table(records, utc_now()))
    return 0
