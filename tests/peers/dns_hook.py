#!/usr/bin/env python3
"""A dns-01 hook for tests: publishes TXT records in a pebble-challtestsrv.

Usage (the DNS hook contract of CONTRACT.md, with the server's management URL bound first)::

    --dns-hook "python tests/peers/dns_hook.py http://127.0.0.1:<port>"
    -> python tests/peers/dns_hook.py <url> present _acme-challenge.example.org. <value>
    -> python tests/peers/dns_hook.py <url> cleanup _acme-challenge.example.org. <value>

Standard library only, so any ``python`` runs it. Exit 0 on success, 2 on bad usage, 1 when the
server refused or was unreachable (message on stderr).

challtestsrv's ``/clear-txt`` removes every value of a name, so ``cleanup`` of one value also
drops a sibling still pending (a wildcard and its base name share ``_acme-challenge.<base>.``);
clients clean up after the order's validations, where that does not matter.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

USAGE = "usage: dns_hook.py <challtestsrv-url> present|cleanup <record-name.> <value>"


def request_for(base_url: str, action: str, record: str, value: str) -> tuple[str, dict[str, str]]:
    """The management API call for one hook invocation (pure)."""
    if action == "present":
        return f"{base_url.rstrip('/')}/set-txt", {"host": record, "value": value}
    if action == "cleanup":
        return f"{base_url.rstrip('/')}/clear-txt", {"host": record}
    raise ValueError(f"unknown action {action!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] not in ("present", "cleanup"):
        print(USAGE, file=sys.stderr)
        return 2
    base_url, action, record, value = argv
    if not record.endswith("."):
        print(f"dns_hook: record name must end with a dot: {record!r}", file=sys.stderr)
        return 2
    url, document = request_for(base_url, action, record, value)
    request = urllib.request.Request(
        url,
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        print(f"dns_hook: {action} {record} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
