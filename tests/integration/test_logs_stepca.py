"""Logs written for people as well as machines (issue 16, item 8), read from real runs against
step-ca: one line per fact, a sentence first, no null fields, one spelling of a serial.

The formatting itself (console, journald, the sentence table) is in
tests/unit/test_logs_for_people.py; here the real commands and the real ``ca_client`` speak.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca_client.challenges.http01 import Http01Responder
from ca_client.client import AcmeClient
from ca_client.keys import KeyType, generate_private_key
from ca_client.models import Identifier
from sidecar.pem import describe_cert
from tests.integration.cli import base_args, run_cli
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA

pytestmark = [pytest.mark.stepca]

# A serial as any line may spell it: "serial 66e6f329", "serial=66E6F329", "serial": "66E6F329".
_SERIAL_MENTION = re.compile(r"serial[\"=: ]+([0-9A-Fa-f:]{4,})")


def _issue(ca: StepCA, lease: LoopbackLease, tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    args = base_args(
        ca.directory_url,
        ca.root_path,
        tmp_path / "certs",
        tmp_path / "state",
        http_listen=f"{lease.address}:80",
    )
    result = run_cli(["issue", "--force", *args, "--domain", lease.name, *extra])
    assert result.code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    assert all(isinstance(event, dict) for event in events)
    return events


def test_one_line_per_fact_with_a_sentence_first_and_no_nulls(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    events = _issue(step_ca, loopback, tmp_path)
    names = [event["event"] for event in events]
    # The sidecar's events say it; ca_client's lines of the same facts are debug only.
    assert names.count("acme_account_registered") == 1
    assert names.count("cert_issued") == 1
    assert names.count("cert_renewal_started") == 1
    texts = [str(event["message"]) for event in events]
    repeated = ("ACME order ", "certificate issued for", "ACME account created")
    assert not [text for text in texts if text.startswith(repeated)]
    for event in events:
        assert next(iter(event)) == "message", event
        assert None not in event.values(), event
    issued = next(event for event in events if event["event"] == "cert_issued")
    assert issued["message"] == f"{loopback.name}: new certificate issued and written"


def test_a_serial_is_spelled_one_way_in_logs_status_and_ca_client(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    # At debug, ca_client's own "certificate issued ... serial" line shows too.
    events = _issue(step_ca, loopback, tmp_path, "--log-level", "debug")
    library = [e for e in events if str(e["message"]).startswith("certificate issued for ")]
    assert [e["level"] for e in library] == ["debug"]
    pem = (tmp_path / "certs" / f"{loopback.name}.pem").read_bytes()
    serial = describe_cert(x509.load_pem_x509_certificate(pem)).serial_hex
    status = run_cli(
        [
            "status",
            "--json",
            *base_args(
                step_ca.directory_url, step_ca.root_path, tmp_path / "certs", tmp_path / "state"
            ),
            "--domain",
            loopback.name,
        ]
    )
    assert status.code == 0, status.stderr
    answer = status.json()
    assert isinstance(answer, dict)
    (record,) = answer["certificates"]
    assert record["serial"] == serial
    mentions = {found for event in events for found in _SERIAL_MENTION.findall(json.dumps(event))}
    assert mentions == {serial}, mentions


@pytest.mark.anyio
async def test_ca_client_alone_still_logs_each_fact_at_info(
    step_ca: StepCA, loopback: LoopbackLease, caplog: pytest.LogCaptureFixture
) -> None:
    """A program using the library without the sidecar: its info log says what happened."""
    caplog.set_level(logging.INFO, logger="ca_client")
    async with (
        Http01Responder(loopback.address, 80) as responder,
        AcmeClient(
            step_ca.directory_url,
            generate_private_key(KeyType.EC_P256),
            ssl_context=step_ca.ssl_context(),
        ) as client,
    ):
        await client.ensure_account()
        issued = await client.obtain(
            [Identifier.dns(loopback.name)],
            generate_private_key(KeyType.EC_P256),
            solvers={"http-01": responder},
            timeout=60,
        )
    serial = describe_cert(x509.load_pem_x509_certificate(issued.leaf_pem.encode())).serial_hex
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(text.startswith("ACME account created: ") for text in info), info
    assert f"certificate issued for {loopback.name}: serial {serial}," in "\n".join(info)
