"""The dns-01 hook run by `cert-sidecar issue` gets `--hook-env` names and never the EAB key.

A unit test covers the environment builder; this one covers the wiring from the settings to the
solver the CLI builds (a passthrough the manager dropped would pass every unit test).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ca_client.keys import b64url
from tests.integration.cli import base_args, run_cli
from tests.peers.pebble import PebbleFactory

pytestmark = [pytest.mark.pebble]

DNS_HOOK = Path(__file__).resolve().parents[1] / "peers" / "dns_hook.py"

# Records the environment it was given, then does the real work of tests/peers/dns_hook.py.
WRAPPER = """
import json, os, runpy, sys
with open(os.environ["HOOK_ENV_LOG"], "a") as log:
    log.write(json.dumps(dict(os.environ)) + "\\n")
sys.argv = [{hook!r}, *sys.argv[1:]]
runpy.run_path({hook!r}, run_name="__main__")
"""


def test_dns01_hook_gets_hook_env_names_and_never_the_eab_key(
    pebble_factory: PebbleFactory, tmp_path: Path
) -> None:
    mac_key = b64url(bytes(range(32)))
    pebble = pebble_factory(eab={"kid-9": mac_key}, no_sleep=True)
    wrapper = tmp_path / "hook.py"
    wrapper.write_text(WRAPPER.format(hook=str(DNS_HOOK)))
    log = tmp_path / "hook-env.jsonl"
    args = [
        "issue",
        *base_args(pebble.directory_url, pebble.ca_bundle, tmp_path / "certs", tmp_path / "state"),
        "--challenge",
        "dns-01",
        "--dns-hook",
        f"{sys.executable} {wrapper} {pebble.challtestsrv_url}",
        "--hook-env",
        "HOOK_ENV_LOG",
        "--domain",
        "hookenv.cert-sidecar.test",
    ]
    env = {
        "CERT_SIDECAR_EAB_KID": "kid-9",
        "CERT_SIDECAR_EAB_HMAC_KEY": mac_key,
        "HOOK_ENV_LOG": str(log),
        "NOT_PASSED_THROUGH": "x",
    }
    result = run_cli(args, env=env)
    assert result.code == 0, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls, "the hook never ran"
    for call in calls:
        assert call["HOOK_ENV_LOG"] == str(log)
        assert "NOT_PASSED_THROUGH" not in call
        assert not any(mac_key in value for value in call.values())
        assert call["ACME_DNS_RECORD"] == "_acme-challenge.hookenv.cert-sidecar.test."
