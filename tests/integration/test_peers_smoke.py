"""Smoke tests of the real peers and the loopback leases that the other tests build on."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
from cryptography import x509

from tests.peers import loopback as loopback_module
from tests.peers.certs import make_root
from tests.peers.loopback import (
    HOSTS_BLOCK_BEGIN,
    HOSTS_BLOCK_END,
    LoopbackLease,
    hosts_block_names,
    render_hosts_block,
    replace_hosts_block,
)
from tests.peers.pebble import ChallTestSrv, Pebble, PebbleFactory
from tests.peers.processes import http_get
from tests.peers.stepca import StepCA, StepCAFactory, provisioner_claims

REPO_ROOT = Path(__file__).resolve().parents[2]


def _directory(url: str, context: ssl.SSLContext) -> dict[str, object]:
    document = json.loads(http_get(url, context))
    assert isinstance(document, dict)
    return document


def _resolved_ipv4(name: str) -> set[str]:
    infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
    return {str(info[4][0]) for info in infos}


# --- DNS over UDP, just enough to ask challtestsrv what Pebble would be told -----------------


def _dns_query(server: str, name: str, qtype: int) -> list[bytes]:
    """RDATA of the answers to one question (RFC 1035 §4.1), without name compression needs."""
    host, port = server.rsplit(":", 1)
    question = b"".join(
        bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")
    )
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question + b"\0"
    query += struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(query, (host, int(port)))
        reply, _ = sock.recvfrom(4096)
    answer_count = struct.unpack(">H", reply[6:8])[0]
    offset = len(query)  # the reply echoes the question section
    answers: list[bytes] = []
    for _ in range(answer_count):
        if reply[offset] & 0xC0 == 0xC0:  # compressed name pointer
            offset += 2
        else:
            while reply[offset]:
                offset += reply[offset] + 1
            offset += 1
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if rtype == qtype:
            answers.append(reply[offset : offset + length])
        offset += length
    return answers


def _txt_values(server: str, name: str) -> set[str]:
    values = set()
    for rdata in _dns_query(server, name, 16):
        values.add(rdata[1 : 1 + rdata[0]].decode())
    return values


# --- loopback leases -------------------------------------------------------------------------


def test_lease_names_resolve_to_its_address(loopback: LoopbackLease) -> None:
    assert loopback.address.startswith("127.0.1.")
    assert loopback.name == loopback.names[0] == f"h{loopback.index}.cert-sidecar.test"
    assert len(set(loopback.names)) == 4
    for name in loopback.names:
        assert _resolved_ipv4(name) == {loopback.address}


def test_lease_address_binds_port_80(loopback: LoopbackLease) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((loopback.address, 80))
        sock.listen()
        with socket.create_connection((loopback.name, 80), timeout=10):
            pass


def test_two_leases_differ(loopback: LoopbackLease, loopback_factory: object) -> None:
    assert callable(loopback_factory)
    second = loopback_factory()
    third = loopback_factory()
    addresses = {loopback.address, second.address, third.address}
    assert len(addresses) == 3
    assert not set(loopback.names) & set(second.names)


def test_lease_is_exclusive_across_processes(loopback: LoopbackLease) -> None:
    # Another process must not be handed the address this one holds.
    code = (
        "from tests.peers.loopback import lease_loopback\n"
        "with lease_loopback() as lease: print(lease.address)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() != loopback.address


def test_bench_names_resolve_to_localhost() -> None:
    names = hosts_block_names(200)
    assert len(set(names)) == 200
    assert names[0] == "b1.bench.cert-sidecar.test"
    assert _resolved_ipv4(names[-1]) == {"127.0.0.1"}
    with pytest.raises(ValueError):
        hosts_block_names(201)


def test_hosts_block_replacement_keeps_other_lines() -> None:
    block = render_hosts_block()
    original = "127.0.0.1 localhost\n::1 ip6-localhost\n"
    once = replace_hosts_block(original, block)
    assert once.startswith(original)
    assert once.count(HOSTS_BLOCK_BEGIN) == 1
    assert replace_hosts_block(once, block) == once
    stale = once.replace("h7.cert-sidecar.test", "stale.example") + "10.0.0.1 after\n"
    fixed = replace_hosts_block(stale, block)
    assert fixed == once + "10.0.0.1 after\n"
    assert HOSTS_BLOCK_END in fixed
    # No trailing newline before the block: it still starts on a line of its own.
    assert replace_hosts_block("127.0.0.1 localhost", block).startswith("127.0.0.1 localhost\n#")


def test_hosts_file_holds_the_block_once() -> None:
    loopback_module.ensure_hosts_block()
    text = loopback_module.HOSTS_PATH.read_text()
    assert text.count(HOSTS_BLOCK_BEGIN) == 1
    assert text.count(HOSTS_BLOCK_END) == 1


# --- step-ca ---------------------------------------------------------------------------------


@pytest.mark.stepca
def test_step_ca_directory_over_verified_tls(step_ca: StepCA) -> None:
    directory = _directory(step_ca.directory_url, step_ca.ssl_context())
    assert str(directory["newOrder"]).startswith(step_ca.base_url)
    assert step_ca.root_path.read_text() == step_ca.root_pem
    root = x509.load_pem_x509_certificate(step_ca.root_pem.encode())
    assert root.subject == root.issuer


@pytest.mark.stepca
def test_step_ca_rejects_other_trust(step_ca: StepCA) -> None:
    # Pebble-style or system trust must not verify step-ca: the root bundle is what matters.
    other = ssl.create_default_context(cadata=make_root().pem)
    _assert_verification_fails(step_ca.directory_url, other)


def _assert_verification_fails(url: str, context: ssl.SSLContext) -> None:
    with pytest.raises(urllib.error.URLError) as caught:
        http_get(url, context)
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)


@pytest.mark.stepca
def test_step_ca_factory_restart_and_reset(step_ca_factory: StepCAFactory) -> None:
    ca = step_ca_factory(default_duration="60s", min_duration="30s")
    config = json.loads(ca.config_path.read_text())
    claims = config["authority"]["provisioners"][0]["claims"]
    assert claims["defaultTLSCertDuration"] == "60s"
    assert claims["minTLSCertDuration"] == "30s"
    url = ca.directory_url
    ca.stop()
    assert not ca.running()
    with pytest.raises(OSError):
        http_get(url, ca.ssl_context(), timeout=2)
    ca.start()
    assert ca.directory_url == url
    _directory(url, ca.ssl_context())
    ca.reset_database()
    assert ca.running()
    _directory(url, ca.ssl_context())
    assert "Serving HTTPS" in ca.log_path.read_text()


@pytest.mark.stepca
def test_step_ca_factory_reuses_a_root_key(step_ca: StepCA, step_ca_factory: StepCAFactory) -> None:
    sibling = step_ca_factory(root_key=step_ca.root_key)
    # The first CA's root bundle verifies the sibling's TLS: same root key and subject.
    _directory(sibling.directory_url, step_ca.ssl_context())
    fresh = step_ca_factory()
    _assert_verification_fails(fresh.directory_url, step_ca.ssl_context())


@pytest.mark.stepca
def test_step_ca_with_challtestsrv_resolver(
    step_ca_factory: StepCAFactory, challtestsrv: ChallTestSrv
) -> None:
    ca = step_ca_factory(resolver=challtestsrv.dns_server)
    _directory(ca.directory_url, ca.ssl_context())
    assert f"--resolver={challtestsrv.dns_server}" in ca.log_path.read_text()
    challtestsrv.set_txt("_acme-challenge.h2.cert-sidecar.test.", "v1")
    assert _txt_values(challtestsrv.dns_server, "_acme-challenge.h2.cert-sidecar.test.") == {"v1"}


def test_provisioner_claims_admit_the_default() -> None:
    assert provisioner_claims("24h", None, None) == {
        "minTLSCertDuration": "5m",
        "maxTLSCertDuration": "24h",
        "defaultTLSCertDuration": "24h",
    }
    short = provisioner_claims("60s", None, None)
    assert short["minTLSCertDuration"] == "60s"
    long = provisioner_claims("720h", None, None)
    assert long["maxTLSCertDuration"] == "720h"


# --- Pebble ----------------------------------------------------------------------------------


@pytest.mark.pebble
def test_pebble_directory_over_verified_tls(pebble: Pebble) -> None:
    directory = _directory(pebble.directory_url, pebble.ssl_context())
    assert "newOrder" in directory
    roots = pebble.issuing_roots()
    assert len(roots) == 1
    x509.load_pem_x509_certificate(roots[0].encode())
    assert pebble.http_port != pebble.tls_port


@pytest.mark.pebble
def test_pebble_factory_options(pebble_factory: PebbleFactory) -> None:
    hmac_key = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    instance = pebble_factory(eab={"kid-1": hmac_key}, no_sleep=True, alternate_roots=1)
    directory = _directory(instance.directory_url, instance.ssl_context())
    meta = directory["meta"]
    assert isinstance(meta, dict)
    assert meta["externalAccountRequired"] is True
    assert len(instance.issuing_roots()) == 2
    log = instance.log_path.read_text()
    assert "Disabling random VA sleeps" in log


@pytest.mark.pebble
def test_dns_hook_publishes_txt_in_challtestsrv(pebble_factory: PebbleFactory) -> None:
    instance = pebble_factory(no_sleep=True)
    record = "_acme-challenge.h1.cert-sidecar.test."
    hook = [sys.executable, str(REPO_ROOT / "tests/peers/dns_hook.py"), instance.challtestsrv_url]
    subprocess.run([*hook, "present", record, "token-value"], check=True)
    assert _txt_values(instance.dns_server, record) == {"token-value"}
    subprocess.run([*hook, "cleanup", record, "token-value"], check=True)
    assert _txt_values(instance.dns_server, record) == set()
    bad = subprocess.run([*hook, "present", "no-trailing-dot", "v"], check=False)
    assert bad.returncode == 2


@pytest.mark.pebble
def test_challtestsrv_maps_names(pebble_factory: PebbleFactory) -> None:
    instance = pebble_factory(no_sleep=True)
    default = _dns_query(instance.dns_server, "anything.cert-sidecar.test.", 1)
    assert [socket.inet_ntoa(a) for a in default] == ["127.0.0.1"]
    assert _dns_query(instance.dns_server, "anything.cert-sidecar.test.", 28) == []
    instance.add_a("h5.cert-sidecar.test", ["127.0.1.5"])
    mapped = _dns_query(instance.dns_server, "h5.cert-sidecar.test.", 1)
    assert [socket.inet_ntoa(a) for a in mapped] == ["127.0.1.5"]
