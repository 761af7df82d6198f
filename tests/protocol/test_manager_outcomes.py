"""The Manager's whole step against the in-process fake CA (and the HAProxy stand-in): what it
writes, records, logs and answers for each outcome, with an injected clock and rng.

Written where mutation testing (docs/MUTATION.md) showed the fast tiers did not look: the
failure record and backoff, dry runs, revocation, placeholders, the account and the deploy
record. The same flows against step-ca, Pebble and HAProxy are in tests/integration.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import socket
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from sidecar import pem, policy, storage, wiring
from sidecar.cli import build_parser
from sidecar.config import Settings, load_settings
from sidecar.deploy import DeployConfig, Deployer, DeployResult
from sidecar.errors import OperationError
from sidecar.inventory import Served
from sidecar.manager import Manager, ServedCheck
from sidecar.outcome import Outcome
from tests.protocol.conftest import RecordingSolver
from tests.protocol.fake_acme import DIRECTORY_URL, FakeAcme, problem
from tests.unit.fake_haproxy import FakeHAProxy, StoredCert, serve

pytestmark = pytest.mark.anyio

NAME = "m.example"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Clock:
    """The manager's wall clock, moved by the test."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    # A little after the real time: the fake CA stamps notBefore with the real time.
    return Clock(datetime.now(UTC) + timedelta(seconds=5))


@pytest.fixture
def ca() -> FakeAcme:
    return FakeAcme(validate_on_response=True)


class Managed(Manager):
    """A Manager as `wiring.build` makes it, keeping the settings and parts it was made from
    (the Manager itself holds only its parts since issue 10)."""

    settings: Settings
    parts: wiring.Parts


MakeManager = Callable[..., Managed]


def _managed(parts: wiring.Parts) -> Managed:
    built = parts.manager
    manager = Managed(
        inventory=built.inventory,
        issuer=built.issuer,
        deployer=built.deployer,
        files=built.files,
        holder=built.holder,
        rng=built._rng,
    )
    manager.settings, manager.parts = parts.settings, parts
    return manager


@pytest.fixture
async def make_manager(tmp_path: Path, ca: FakeAcme, clock: Clock) -> AsyncIterator[MakeManager]:
    managers: list[Managed] = []
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes())

    def make(*extra: str, domains: tuple[str, ...] = (NAME,), seed: int = 7) -> Managed:
        argv = [
            "issue",
            "--directory",
            DIRECTORY_URL,
            "--ca-bundle",
            str(bundle),
            "--certs-dir",
            str(tmp_path / "certs"),
            "--state-dir",
            str(tmp_path / "state"),
            *[arg for name in domains for arg in ("--domain", name)],
            *extra,
        ]
        settings = load_settings(build_parser().parse_args(argv), {})
        solver = RecordingSolver()
        ca.reach(solver)  # the fake CA validates only through solvers it was told of
        parts = wiring.build(
            settings,
            holder=f"pid {os.getpid()}",
            now=clock,
            rng=random.Random(seed),
            client_options={"transport": ca.transport()},
            solvers={"http-01": solver},
        )
        manager = _managed(parts)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.aclose()
        await manager.parts.responders.aclose()


def unreachable_haproxy(make_manager: MakeManager, tmp_path: Path) -> Managed:
    """A manager whose one HAProxy socket does not exist, tried once (no retry delays)."""
    from sidecar.deploy import DeployConfig, Deployer

    missing = f"unix:{tmp_path}/missing.sock"
    manager = make_manager("--haproxy-socket", missing)
    config = DeployConfig.build(
        sockets=[missing], certs_dir=tmp_path / "certs", attempts=1, retry_delay=0.0
    )
    manager.deployer = Deployer(config)
    return manager


def use_ca(manager: Managed, other: FakeAcme) -> None:
    """Talk to another fake CA, which reaches the manager's http-01 solver."""
    account = manager.issuer.account
    manager.issuer.account = replace(account, client_options={"transport": other.transport()})
    other.reach(manager.parts.responders._given["http-01"])


def leaf_of(path: Path) -> x509.Certificate:
    return pem.parse_combined(path.read_bytes()).leaf


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- a successful issuance -----------------------------------------------------------------------


async def test_an_issuance_writes_the_pem_records_success_and_says_so(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    with capture_logs() as logs:
        outcome = await manager.ensure(spec)
    path = manager.pem_path(NAME)
    leaf = leaf_of(path)
    facts = pem.describe_cert(leaf)
    assert outcome == Outcome(
        NAME,
        "issued",
        ok=True,
        serial=facts.serial_hex,
        not_after=facts.not_after,
        reason="missing",
        error=None,
        deploy=None,
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    meta = manager.store.load_meta(NAME)
    assert meta is not None
    (order,) = ca.orders.values()
    assert meta.order_url == f"https://ca.test/order/{order.id}"
    assert (meta.serial, meta.not_before, meta.not_after) == (
        facts.serial_hex,
        facts.not_before,
        facts.not_after,
    )
    assert (meta.domains, meta.key_type) == ((NAME,), "ec-p256")
    assert meta.issued_at == meta.last_attempt_at == meta.last_success_at == clock.now
    assert (meta.failures, meta.last_error, meta.next_retry_at) == (0, None, None)
    stored = manager.store.load_key(NAME)
    assert stored is not None and pem.key_matches(leaf, stored)
    (started,) = events(logs, "cert_renewal_started")
    assert (started["cert"], started["reason"], started["dry_run"]) == (NAME, "missing", False)
    (issued,) = events(logs, "cert_issued")
    assert issued["cert"] == NAME and issued["serial"] == facts.serial_hex
    assert issued["not_after"] == facts.not_after.isoformat()
    assert issued["order_url"] == meta.order_url and issued["reason"] == "missing"
    # (The old `last_ca_success` was never read; its heir `Issuer.last_success` is gone.)
    assert outcome.ca_error is None


def _record_commits(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[tuple[str, str]]:
    """fsync and rename calls as (call, path under ``root``), a temporary ``.<name>.<random>``
    shown as ``~<name>``, a directory with a trailing ``/``."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    root = root.resolve()

    def named(path: Path) -> str:
        temporary = re.fullmatch(r"\.(.+)\.[0-9a-f]{16}", path.name)
        name = f"~{temporary[1]}" if temporary else path.name
        shown = str(path.parent.relative_to(root) / name)
        return f"{shown}/" if path.is_dir() else shown

    def spy_fsync(fd: int) -> None:
        calls.append(("fsync", named(Path(os.readlink(f"/proc/self/fd/{fd}")))))
        real_fsync(fd)

    def spy_replace(source: str, target: str) -> None:
        calls.append(("rename", named(Path(target).resolve())))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    return calls


async def test_an_issuance_commits_the_state_with_its_meta_then_the_pem(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The key saved before the order waits for the state commit's directory fsync; the state
    files and the meta recording success are one commit; the PEM comes last: 7 fsyncs for a
    new certificate or a renewal, where one atomic write per file took 10."""
    manager = make_manager()
    (spec,) = manager.settings.certificates
    calls = _record_commits(monkeypatch, tmp_path)
    await manager.ensure(spec)
    first = [c for c in calls if not c[1].startswith("state/account/")]
    del calls[:]
    await manager.ensure(spec, force=True)
    renewal = list(calls)
    monkeypatch.undo()
    state = f"state/certs/{NAME}"
    pem_file = f"certs/{NAME}.pem"
    assert first == [
        ("fsync", f"{state}/~key.pem"),
        ("rename", f"{state}/key.pem"),
        ("fsync", f"{state}/~chain.pem"),
        ("fsync", f"{state}/~cert.pem"),
        ("fsync", f"{state}/~meta.json"),
        ("rename", f"{state}/chain.pem"),
        ("rename", f"{state}/cert.pem"),
        ("rename", f"{state}/meta.json"),
        ("fsync", f"{state}/"),
        ("fsync", f"certs/~{NAME}.pem"),
        ("rename", pem_file),
        ("fsync", "certs/"),
    ]
    assert renewal == [  # the key is reused: nothing to save before the order
        ("fsync", f"{state}/~previous.pem"),
        ("fsync", f"{state}/~chain.pem"),
        ("fsync", f"{state}/~cert.pem"),
        ("fsync", f"{state}/~meta.json"),
        ("rename", f"{state}/previous.pem"),
        ("rename", f"{state}/chain.pem"),
        ("rename", f"{state}/cert.pem"),
        ("rename", f"{state}/meta.json"),
        ("fsync", f"{state}/"),
        ("fsync", f"certs/~{NAME}.pem"),
        ("rename", pem_file),
        ("fsync", "certs/"),
    ]


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


async def test_a_certificate_that_is_not_due_is_left_unchanged(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    first = await manager.ensure(spec)
    second = await manager.ensure(spec, respect_backoff=True)
    assert second == Outcome(
        NAME, "unchanged", ok=True, serial=first.serial, not_after=first.not_after
    )
    assert len(ca.orders) == 1


async def test_force_renews_a_certificate_that_is_not_due(make_manager: MakeManager) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    first = await manager.ensure(spec)
    forced = await manager.ensure(spec, force=True)
    assert (forced.action, forced.reason) == ("issued", "forced")
    assert forced.serial != first.serial
    assert manager.store.load_previous(NAME) is not None


async def test_the_existing_key_is_reused_unless_the_key_type_changed(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    key = _key_pem(manager.store.load_key(NAME))
    await manager.ensure(spec, force=True)
    assert _key_pem(manager.store.load_key(NAME)) == key
    rsa = make_manager("--key-type", "rsa-2048")
    (rsa_spec,) = rsa.settings.certificates
    outcome = await rsa.ensure(rsa_spec)
    assert outcome.reason == "key type changed"
    assert pem.describe_cert(leaf_of(rsa.pem_path(NAME))).key_type == "rsa-2048"
    assert _key_pem(rsa.store.load_key(NAME)) != key


async def test_a_dry_run_orders_but_writes_and_records_nothing(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    with capture_logs() as logs:
        outcome = await manager.ensure(spec, dry_run=True)
    assert (outcome.action, outcome.ok, outcome.reason) == ("dry-run", True, "missing")
    assert outcome.serial is not None and outcome.not_after is not None
    (chain,) = ca.certificates.values()
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert outcome.serial == pem.describe_cert(leaf).serial_hex
    assert outcome.not_after == leaf.not_valid_after_utc
    assert not manager.pem_path(NAME).exists()
    assert manager.store.load_meta(NAME) is None
    (dry,) = events(logs, "cert_dry_run_succeeded")
    assert dry["serial"] == outcome.serial and dry["cert"] == NAME
    assert len(ca.orders) == 1


# -- failures, backoff, waiting ------------------------------------------------------------------


async def test_a_failure_is_recorded_with_its_backoff(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager(seed=11)
    (spec,) = manager.settings.certificates
    ca.fail_times("new-order", 1, lambda: problem(400, "malformed", "no such thing"))
    with capture_logs() as logs:
        outcome = await manager.ensure(spec)
    delay = policy.next_retry_delay(1, clock.now, None, random.Random(11))
    assert outcome.action == "failed" and not outcome.ok
    assert outcome.reason == "missing" and outcome.error is not None
    assert outcome.next_retry_at == clock.now + delay
    assert outcome.error_kind == "rejected"
    meta = manager.store.load_meta(NAME)
    assert meta is not None
    assert (meta.failures, meta.last_error, meta.next_retry_at, meta.last_attempt_at) == (
        1,
        outcome.error,
        clock.now + delay,
        clock.now,
    )
    (failed,) = events(logs, "cert_renewal_failed")
    assert failed["cert"] == NAME and failed["reason"] == "missing"
    assert failed["error"] == outcome.error and failed["failures"] == 1
    assert failed["next_retry_at"] == (clock.now + delay).isoformat()
    assert failed["error_type"] == "Malformed"
    assert outcome.ca_error == outcome.error
    assert "no such thing" in outcome.error


async def test_a_permanent_refusal_waits_the_longest_delay(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    ca.fail_times("new-order", 1, lambda: problem(403, "caa", "CAA record forbids"))
    outcome = await manager.ensure(spec)
    assert outcome.next_retry_at == clock.now + policy.MAX_RETRY_DELAY


async def test_a_rate_limit_waits_as_long_as_the_ca_asks(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    ca.fail_times(
        "new-order",
        1,
        lambda: problem(429, "rateLimited", "slow down", headers={"Retry-After": "600"}),
    )
    outcome = await manager.ensure(spec)
    assert outcome.next_retry_at == clock.now + timedelta(seconds=600)
    assert outcome.error_kind == "rate_limited"


async def test_a_failed_dry_run_leaves_no_retry_state(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    ca.fail_times("new-order", 1, lambda: problem(400, "malformed", "no"))
    outcome = await manager.ensure(spec, dry_run=True)
    assert outcome.action == "failed" and outcome.next_retry_at is None
    assert manager.store.load_meta(NAME) is None


async def test_backoff_is_respected_until_the_retry_time_then_failures_add_up(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    ca.fail_times("new-order", 2, lambda: problem(400, "malformed", "no"))
    first = await manager.ensure(spec, respect_backoff=True)
    assert first.next_retry_at is not None
    waiting = await manager.ensure(spec, respect_backoff=True)
    assert waiting == Outcome(
        NAME,
        "waiting",
        ok=False,  # nothing valid is deployed
        reason="missing",
        error=first.error,
        next_retry_at=first.next_retry_at,
    )
    view = manager.inspect(spec)
    assert view.next_renewal == first.next_retry_at
    clock.now = first.next_retry_at
    second = await manager.ensure(spec, respect_backoff=True)
    assert second.action == "failed"
    meta = manager.store.load_meta(NAME)
    assert meta is not None and meta.failures == 2
    # A one-shot command (no respect_backoff) tries at once, whatever the record says.
    third = await manager.ensure(spec)
    assert third.action == "issued"
    meta = manager.store.load_meta(NAME)
    assert meta is not None and (meta.failures, meta.next_retry_at) == (0, None)


async def test_waiting_with_a_valid_certificate_deployed_is_ok(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    issued = await manager.ensure(spec)
    renamed = make_manager(domains=(f"{NAME},www.m.example",))
    (wider,) = renamed.settings.certificates
    assert wider.name == NAME
    assert issued.not_after is not None
    clock.now = issued.not_after - timedelta(seconds=2)  # the next try is after expiry
    ca.fail_times("new-order", 1, lambda: problem(400, "malformed", "no"))
    failed = await renamed.ensure(wider, respect_backoff=True)
    assert (failed.action, failed.reason, failed.not_after) == (
        "failed",
        "names changed",
        issued.not_after,
    )
    waiting = await renamed.ensure(wider, respect_backoff=True)
    assert (waiting.action, waiting.ok) == ("waiting", True)
    # Once the deployed certificate has expired, waiting is no longer "ok".
    clock.now = issued.not_after
    expired = await renamed.ensure(wider, respect_backoff=True)
    assert (expired.action, expired.ok) == ("waiting", False)


async def test_a_held_lock_is_a_failed_outcome_naming_the_holder(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    async with manager.store.lock(NAME, timeout=5, holder="the test"):
        with capture_logs() as logs:
            outcome = await manager.ensure(spec, lock_timeout=0.1)
    assert (outcome.name, outcome.action, outcome.ok) == (NAME, "failed", False)
    assert outcome.error is not None
    assert re.fullmatch(
        rf"certificate {NAME!r} is locked by the test since \S+ \(waited 0.1 s\)", outcome.error
    )
    (warning,) = events(logs, "cert_lock_timeout")
    assert warning["error"] == outcome.error and warning["cert"] == NAME


async def test_a_manager_names_itself_as_the_lock_holder(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    assert manager.holder == f"pid {os.getpid()}"
    other = wiring.build(manager.settings, holder="run 1").manager
    async with other.store.lock(NAME, timeout=5, holder=other.holder):
        outcome = await manager.ensure(spec, lock_timeout=0.05)
    assert outcome.error is not None
    assert re.fullmatch(
        rf"certificate {NAME!r} is locked by run 1 since \S+ \(waited 0.05 s\)", outcome.error
    )


# -- deploying and recording it ------------------------------------------------------------------


async def test_a_deploy_to_haproxy_is_recorded_in_the_inventory_not_the_meta(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    fake = FakeHAProxy(crt_lists={str(tmp_path / "certs"): []})
    async with serve(fake, tmp_path / "admin.sock") as address:
        manager = make_manager("--haproxy-socket", address)
        (spec,) = manager.settings.certificates
        with capture_logs() as logs:
            outcome = await manager.ensure(spec)
    path = str(manager.pem_path(NAME))
    assert outcome.action == "issued" and outcome.error is None
    assert outcome.deploy is not None and outcome.deploy.ok and outcome.deploy.mode == "runtime-api"
    loaded_serial = fake.serial(path)  # as DER bytes: compared as numbers
    assert loaded_serial is not None and outcome.serial is not None
    assert int(loaded_serial, 16) == int(outcome.serial, 16)
    # What HAProxy serves is remembered while running; after a restart, HAProxy is asked.
    assert manager.inventory.served(NAME) == Served(True, outcome.serial)
    written = json.loads((manager.store.cert_dir(NAME) / "meta.json").read_text())
    assert written["serial"] == outcome.serial and "deployed_serial" not in written
    (updated,) = events(logs, "haproxy_updated")
    assert updated["serial"] == outcome.serial and updated["mode"] == "runtime-api"
    assert updated["cert"] == NAME


async def test_a_failed_deploy_keeps_the_issuance_and_says_why(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    manager = unreachable_haproxy(make_manager, tmp_path)
    (spec,) = manager.settings.certificates
    with capture_logs() as logs:
        outcome = await manager.ensure(spec)
    assert outcome.action == "issued" and outcome.ok
    assert outcome.deploy is not None and outcome.deploy.ok is False
    assert outcome.error is not None and outcome.error.startswith("deploy failed: ")
    assert "socket does not exist" in outcome.error
    assert manager.inventory.served(NAME).matches is False
    (failed,) = events(logs, "haproxy_update_failed")
    assert failed["serial"] == outcome.serial and failed["mode"] == "runtime-api"


async def test_without_haproxy_or_hooks_there_is_no_deployer(make_manager: MakeManager) -> None:
    manager = make_manager()
    assert manager.deployer is None
    with_hook = make_manager("--deploy-hook", "/bin/true")
    assert with_hook.deployer is not None


async def test_an_issuance_never_reads_back_the_pem_it_wrote(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer tells the inventory what it wrote (checked before the write): the schedule
    # after an issuance is a stat, not a parse of the new file (1,000 certificates, 1,000 reads).
    manager = make_manager()
    (spec,) = manager.settings.certificates
    path = manager.pem_path(NAME)
    read: list[Path] = []
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        read.append(self)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    outcome = await manager.ensure(spec)
    assert outcome.action == "issued" and outcome.next_renewal is not None
    assert manager.inspect(spec).facts is not None
    assert path not in read


# -- placeholders --------------------------------------------------------------------------------


async def test_a_placeholder_is_written_only_where_no_file_exists(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    with capture_logs() as logs:
        assert await manager.ensure_placeholder(spec) is True
    path = manager.pem_path(NAME)
    facts = pem.describe_cert(leaf_of(path))
    assert facts.is_placeholder and facts.names == (NAME,)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    (written,) = events(logs, "cert_placeholder_written")
    assert written["cert"] == NAME and written["path"] == str(path)
    before = path.read_bytes()
    assert await manager.ensure_placeholder(spec) is False
    assert path.read_bytes() == before


async def test_a_placeholder_for_names_too_long_for_a_cn_is_named_for_its_file(
    make_manager: MakeManager,
) -> None:
    # A CN holds 64 characters (RFC 5280 ub-common-name): with no name that short, the
    # placeholder's CN is the certificate's name, cut; its SANs carry the names in full.
    long_name = "a" * 60 + ".long.example"
    manager = make_manager(domains=(long_name,))
    (spec,) = manager.settings.certificates
    assert await manager.ensure_placeholder(spec) is True
    leaf = leaf_of(manager.pem_path(spec.name))
    (cn,) = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert cn.value == spec.name[:64]
    assert pem.describe_cert(leaf).names == (long_name,)


async def test_a_placeholder_is_loaded_into_a_running_haproxy(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    fake = FakeHAProxy(crt_lists={str(tmp_path / "certs"): []})
    async with serve(fake, tmp_path / "admin.sock") as address:
        manager = make_manager("--haproxy-socket", address)
        (spec,) = manager.settings.certificates
        with capture_logs() as logs:
            assert await manager.ensure_placeholder(spec) is True
    # Compared as numbers: HAProxy prints the DER bytes (a leading 00 when the top bit is set).
    loaded_serial = fake.serial(str(manager.pem_path(NAME)))
    assert loaded_serial is not None
    assert int(loaded_serial, 16) == leaf_of(manager.pem_path(NAME)).serial_number
    (loaded,) = events(logs, "haproxy_placeholder_loaded")
    assert loaded["cert"] == NAME and loaded["mode"] == "runtime-api"


async def test_a_placeholder_haproxy_cannot_take_is_left_for_its_start(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    manager = unreachable_haproxy(make_manager, tmp_path)
    (spec,) = manager.settings.certificates
    with capture_logs() as logs:
        assert await manager.ensure_placeholder(spec) is True
    (not_loaded,) = events(logs, "haproxy_placeholder_not_loaded")
    assert not_loaded["cert"] == NAME and "socket does not exist" in not_loaded["error"]
    assert manager.pem_path(NAME).exists()


# -- revocation ----------------------------------------------------------------------------------


async def test_revoke_tells_the_ca_and_replaces_with_a_new_key(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    first = await manager.ensure(spec)
    old_key = _key_pem(manager.store.load_key(NAME))
    old_serial = leaf_of(manager.pem_path(NAME)).serial_number
    with capture_logs() as logs:
        outcome = await manager.revoke(spec, reason=1, remove=False)
    (account_url,) = ca.accounts
    assert ca.revoked == [(old_serial, 1, account_url)]
    assert (outcome.action, outcome.ok, outcome.reason) == (
        "revoked and replaced",
        True,
        "forced",
    )
    assert outcome.serial != first.serial and outcome.error is None
    assert _key_pem(manager.store.load_key(NAME)) != old_key
    (revoked,) = events(logs, "cert_revoked")
    assert revoked["serial"] == first.serial and revoked["reason_code"] == 1


async def test_revoke_with_remove_unloads_and_deletes_everything(
    make_manager: MakeManager, ca: FakeAcme, tmp_path: Path
) -> None:
    fake = FakeHAProxy(crt_lists={str(tmp_path / "certs"): []})
    async with serve(fake, tmp_path / "admin.sock") as address:
        manager = make_manager("--haproxy-socket", address)
        (spec,) = manager.settings.certificates
        first = await manager.ensure(spec)
        assert str(manager.pem_path(NAME)) in fake.certs
        with capture_logs() as logs:
            outcome = await manager.revoke(spec, reason=None, remove=True)
    assert outcome == Outcome(NAME, "removed", ok=True, serial=first.serial, error=None)
    assert [(serial, reason) for serial, reason, _ in ca.revoked] == [
        (int(first.serial or "0", 16), None)
    ]
    assert not manager.pem_path(NAME).exists()
    assert NAME not in manager.store.stored_names()
    assert str(manager.pem_path(NAME)) not in fake.certs
    (removed,) = events(logs, "cert_removed")
    assert removed["serial"] == first.serial


async def test_a_removal_haproxy_refuses_is_a_warning(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    manager = unreachable_haproxy(make_manager, tmp_path)
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    outcome = await manager.revoke(spec, reason=None, remove=True)
    assert (outcome.action, outcome.ok) == ("removed", True)
    assert outcome.error is not None
    assert outcome.error.startswith("HAProxy unload failed: ")
    assert not manager.pem_path(NAME).exists()


async def test_nothing_to_revoke_is_a_failure_naming_the_file(make_manager: MakeManager) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    outcome = await manager.revoke(spec, reason=None, remove=False)
    assert outcome == Outcome(
        NAME,
        "failed",
        ok=False,
        error=f"no issued certificate to revoke at {manager.pem_path(NAME)}",
    )
    await manager.ensure_placeholder(spec)
    placeholder = await manager.revoke(spec, reason=None, remove=False)
    assert placeholder.error == outcome.error


async def test_a_revocation_the_ca_refuses_changes_nothing(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    first = await manager.ensure(spec)
    before = manager.pem_path(NAME).read_bytes()
    ca.fail_times("revoke-cert", 1, lambda: problem(403, "unauthorized", "not yours"))
    with capture_logs() as logs:
        outcome = await manager.revoke(spec, reason=None, remove=True)
    assert (outcome.name, outcome.action, outcome.ok) == (NAME, "failed", False)
    assert outcome.error is not None and "not yours" in outcome.error
    assert manager.pem_path(NAME).read_bytes() == before
    assert first.serial is not None
    (failed,) = events(logs, "cert_revocation_failed")
    assert failed["error"] == outcome.error


async def test_a_replacement_that_fails_after_revocation_is_reported_as_such(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    ca.fail_times("new-order", 1, lambda: problem(400, "malformed", "no more"))
    outcome = await manager.revoke(spec, reason=4, remove=False)
    assert (outcome.action, outcome.ok) == ("failed", False)
    assert outcome.error is not None
    assert outcome.error.startswith("revoked; replacement failed: ")
    assert "no more" in outcome.error
    assert len(ca.revoked) == 1


async def test_revocation_waits_for_the_lock_and_fails_naming_the_holder(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    real_lock = manager.store.lock
    timeouts: list[float] = []

    def short_lock(name: str, *, timeout: float, holder: str) -> Any:
        timeouts.append(timeout)
        return real_lock(name, timeout=0.05, holder=holder)

    async with manager.store.lock(NAME, timeout=5, holder="another run"):
        monkeypatch.setattr(manager.store, "lock", short_lock)
        outcome = await manager.revoke(spec, reason=None, remove=False)
    assert timeouts == [60.0]
    assert (outcome.name, outcome.action, outcome.ok) == (NAME, "failed", False)
    assert outcome.error is not None
    assert re.fullmatch(
        rf"certificate {NAME!r} is locked by another run since \S+ \(waited 0.05 s\)",
        outcome.error,
    )


# -- the ACME account ----------------------------------------------------------------------------


async def test_the_account_is_registered_once_with_the_contact_and_kept(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager("--email", "ops@m.example")
    (spec,) = manager.settings.certificates
    with capture_logs() as logs:
        await manager.ensure(spec)
    (payload,) = ca.new_account_payloads
    assert payload["contact"] == ["mailto:ops@m.example"]
    loaded = manager.store.load_account(DIRECTORY_URL)
    assert loaded is not None and loaded[1] in ca.accounts
    (registered,) = events(logs, "acme_account_registered")
    assert registered["account_url"] == loaded[1]
    again = make_manager("--email", "ops@m.example")
    with capture_logs() as logs:
        await again.ensure(spec, force=True)
    assert not events(logs, "acme_account_registered")
    assert len(ca.accounts) == 1


async def test_an_account_the_ca_forgot_is_registered_again_and_remembered(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    first = manager.store.load_account(DIRECTORY_URL)
    ca.reset_database()
    with capture_logs() as logs:
        outcome = await manager.ensure(spec, force=True)
    assert outcome.action == "issued"
    second = manager.store.load_account(DIRECTORY_URL)
    assert first is not None and second is not None and first[1] != second[1]
    assert second[1] in ca.accounts
    (warning,) = events(logs, "acme_account_reregistered")
    assert warning["account_url"] == second[1]


async def test_a_client_that_cannot_register_is_a_failed_outcome_and_retried_later(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    ca.fail_times("new-account", 1, lambda: problem(400, "invalidContact", "bad contact"))
    outcome = await manager.ensure(spec)
    assert outcome.action == "failed" and "bad contact" in (outcome.error or "")
    retried = await manager.ensure(spec)
    assert retried.action == "issued"


async def test_reset_client_makes_a_new_client_on_next_use(make_manager: MakeManager) -> None:
    manager = make_manager()
    client = await manager.issuer._ready_client()
    assert await manager.issuer._ready_client() is client
    await manager.reset_client()
    assert await manager.issuer._ready_client() is not client


# -- renewal information (ARI) -------------------------------------------------------------------


async def test_the_renewal_window_is_fetched_again_only_when_stale(
    make_manager: MakeManager, clock: Clock
) -> None:
    ca = FakeAcme(validate_on_response=True, renewal_info=True)
    manager = make_manager()
    use_ca(manager, ca)
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    view = manager.inspect(spec)
    with capture_logs() as logs:
        await manager.refresh_renewal_info(spec, view)
    (window,) = events(logs, "renewal_info_window")
    assert window["start"] == "2026-01-02T04:00:00+00:00"
    assert window["end"] == "2026-01-03T04:00:00+00:00"
    fetches = sum(route == "renewal-info" for _, route in ca.requests)
    await manager.refresh_renewal_info(spec, view)
    assert sum(route == "renewal-info" for _, route in ca.requests) == fetches
    # Retry-After (6 h) is longer than the certificate: the next look is after that.
    clock.now += timedelta(hours=5, minutes=59)
    await manager.refresh_renewal_info(spec, view)
    assert sum(route == "renewal-info" for _, route in ca.requests) == fetches
    clock.now += timedelta(minutes=2)
    await manager.refresh_renewal_info(spec, view)
    assert sum(route == "renewal-info" for _, route in ca.requests) == fetches + 1


async def test_without_ari_the_ca_is_asked_again_after_a_quarter_lifetime(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    view = manager.inspect(spec)
    assert view.facts is not None
    lifetime = view.facts.not_after - view.facts.not_before
    directory_reads = sum(route == "directory" for _, route in ca.requests)
    await manager.refresh_renewal_info(spec, view)
    entry = manager.inventory._ari[NAME]
    assert (entry.serial, entry.window) == (view.facts.serial, None)
    assert entry.next_fetch == clock.now + lifetime / 4
    assert sum(route == "directory" for _, route in ca.requests) >= directory_reads


async def test_an_unreachable_renewal_info_is_logged_and_waited_out(
    make_manager: MakeManager, clock: Clock
) -> None:
    ca = FakeAcme(validate_on_response=True, renewal_info=True)
    manager = make_manager()
    use_ca(manager, ca)
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    view = manager.inspect(spec)
    assert view.facts is not None
    manager.pem_path(NAME).unlink()  # gone between the look and the question
    with capture_logs() as logs:
        await manager.refresh_renewal_info(spec, view)
    (unavailable,) = events(logs, "renewal_info_unavailable")
    assert unavailable["cert"] == NAME and "No such file" in unavailable["error"]
    entry = manager.inventory._ari[NAME]
    lifetime = view.facts.not_after - view.facts.not_before
    assert (entry.window, entry.next_fetch) == (None, clock.now + lifetime / 4)


# -- inspection ----------------------------------------------------------------------------------


async def test_inspect_reports_the_next_renewal_time(
    make_manager: MakeManager, clock: Clock
) -> None:
    manager = make_manager("--renew-at", "0.5")
    (spec,) = manager.settings.certificates
    missing = manager.inspect(spec)
    assert (missing.due, missing.next_renewal) == (policy.DueReason.MISSING, clock.now)
    assert missing.facts is None and missing.unreadable is None and missing.key_matches
    await manager.ensure(spec)
    view = manager.inspect(spec)
    assert view.facts is not None and view.due is None and view.is_real
    assert view.next_renewal == policy.facts_renewal_time(view.facts, 0.5)
    assert view.path == manager.pem_path(NAME)
    assert view.meta.serial == view.facts.serial_hex


async def test_an_unreadable_deployed_file_is_due_and_named(
    make_manager: MakeManager, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    path = manager.pem_path(NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a pem")
    view = manager.inspect(spec)
    assert view.due is policy.DueReason.UNREADABLE and view.facts is None
    assert view.unreadable is not None and view.unreadable.startswith(f"{path}: ")
    path.unlink()
    path.mkdir()
    directory = manager.inspect(spec)
    assert directory.unreadable is not None
    assert directory.unreadable.startswith(f"cannot read {path}: ")


async def test_a_replaced_file_is_read_again(make_manager: MakeManager) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    first = manager.inspect(spec)
    await manager.ensure(spec, force=True)
    second = manager.inspect(spec)
    assert first.facts is not None and second.facts is not None
    assert first.facts.serial != second.facts.serial
    manager.pem_path(NAME).unlink()
    assert manager.inspect(spec).due is policy.DueReason.MISSING


async def test_a_corrupt_meta_loses_the_retry_state_not_the_certificate(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    (manager.store.cert_dir(NAME) / "meta.json").write_text("{not json")
    with capture_logs() as logs:
        view = manager.inspect(spec)
    assert view.meta == storage.CertMeta() and view.due is None
    (corrupt,) = events(logs, "cert_meta_corrupt")
    assert corrupt["cert"] == NAME


# -- solvers and closing -------------------------------------------------------------------------


async def test_solvers_are_started_once_and_closed_with_the_manager(
    make_manager: MakeManager,
) -> None:
    manager = make_manager(
        "--http-listen", f"127.0.0.1:{free_port()}", "--tls-alpn-listen", f"127.0.0.1:{free_port()}"
    )
    # Solvers belong to the process's Responders since issue 10, not to the Manager.
    responders = wiring.Responders(manager.settings)
    http = await responders.get("http-01")
    assert await responders.get("http-01") is http
    alpn = await responders.get("tls-alpn-01")
    assert type(http).__name__ == "Http01Responder"
    assert type(alpn).__name__ == "TlsAlpn01Responder"
    await responders.aclose()
    assert responders.running == {}


async def test_a_solver_that_fails_to_close_is_logged(make_manager: MakeManager) -> None:
    manager = make_manager()

    class Broken(RecordingSolver):
        async def aclose(self) -> None:
            raise RuntimeError("stuck")

    responders = wiring.Responders(manager.settings)
    responders._running = {"http-01": Broken()}  # type: ignore[dict-item]
    with capture_logs() as logs:
        await responders.aclose()
    (failed,) = events(logs, "responder_close_failed")
    assert failed["error"] == "stuck"


async def test_unusable_challenge_settings_are_operation_errors(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    with pytest.raises(OperationError) as caught:
        await wiring.start_solver("dns-01", manager.settings)
    assert str(caught.value) == "--dns-hook: dns-01 needs a hook command"
    with pytest.raises(OperationError) as caught:
        await wiring.start_solver("smtp-01", manager.settings)
    assert str(caught.value) == "--challenge: unknown challenge type 'smtp-01'"
    hooked = make_manager("--dns-hook", "/bin/true")
    solver = await wiring.start_solver("dns-01", hooked.settings)
    assert type(solver).__name__ == "Dns01HookSolver"


# -- several certificates ------------------------------------------------------------------------


async def test_ensure_all_handles_every_certificate(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager(domains=("one.example", "two.example"))
    specs = manager.settings.certificates
    outcomes = await manager.ensure_all(specs, dry_run=True)
    assert [(o.name, o.action) for o in outcomes] == [
        ("one.example", "dry-run"),
        ("two.example", "dry-run"),
    ]
    forced = await manager.ensure_all(specs, force=True)
    assert [o.reason for o in forced] == ["missing", "missing"]
    again = await manager.ensure_all(specs, force=True)
    assert [o.reason for o in again] == ["forced", "forced"]


# -- second round: what the first mutation run still let through ------------------------------


def ari_manager(make_manager: MakeManager, *extra: str) -> tuple[Manager, FakeAcme]:
    ca = FakeAcme(validate_on_response=True, renewal_info=True)
    manager = make_manager(*extra)
    use_ca(manager, ca)
    return manager, ca


def renewal_info_fetches(ca: FakeAcme) -> int:
    return sum(route == "renewal-info" for _, route in ca.requests)


async def test_a_replacement_after_revocation_is_written_and_forced(
    make_manager: MakeManager,
) -> None:
    manager, _ = ari_manager(make_manager)
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    with capture_logs() as logs:
        outcome = await manager.revoke(spec, reason=None, remove=False)
    assert outcome.reason == "forced"  # not re-judged by the CA's window
    on_disk = pem.describe_cert(leaf_of(manager.pem_path(NAME)))
    assert on_disk.serial_hex == outcome.serial
    meta = manager.store.load_meta(NAME)
    assert meta is not None and meta.serial == outcome.serial
    (revoked,) = events(logs, "cert_revoked")
    assert revoked["cert"] == NAME


async def test_locks_are_taken_in_the_managers_name_for_a_minute(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager()
    manager.holder = "run 7"
    (spec,) = manager.settings.certificates
    taken: list[tuple[str, float, str]] = []
    real_lock = manager.store.lock

    def spy(name: str, *, timeout: float, holder: str) -> Any:
        taken.append((name, timeout, holder))
        return real_lock(name, timeout=timeout, holder=holder)

    monkeypatch.setattr(manager.store, "lock", spy)
    await manager.ensure(spec)
    await manager.revoke(spec, reason=None, remove=True)
    assert taken == [(NAME, 60.0, "run 7"), (NAME, 60.0, "run 7")]


async def test_inspect_judges_at_the_time_it_is_given(
    make_manager: MakeManager, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    issued = await manager.ensure(spec)
    assert issued.not_after is not None
    assert manager.inspect(spec).due is None
    assert manager.inspect(spec, issued.not_after).due is policy.DueReason.EXPIRED
    assert manager.inspect(spec).spec == spec


async def test_the_renewal_window_is_looked_up_again_as_the_ca_says(
    make_manager: MakeManager, clock: Clock
) -> None:
    manager, ca = ari_manager(make_manager)
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    view = manager.inspect(spec)
    assert view.facts is not None
    lifetime = view.facts.not_after - view.facts.not_before
    window = {"suggestedWindow": {"start": "2026-01-02T04:00:00Z", "end": "2026-01-03T04:00:00Z"}}
    answers = [
        httpx.Response(200, json=window),  # no Retry-After: a tenth of the lifetime
        httpx.Response(200, json=window, headers={"Retry-After": "30"}),  # at least a minute
    ]
    ca.fail_times("renewal-info", 2, lambda: answers.pop(0))
    with capture_logs() as logs:
        await manager.refresh_renewal_info(spec, view)
    assert manager.inventory._ari[NAME].next_fetch == clock.now + lifetime / 10
    assert events(logs, "renewal_info_window")[0]["cert"] == NAME
    clock.now += lifetime / 10  # exactly due: asked again
    fetches = renewal_info_fetches(ca)
    await manager.refresh_renewal_info(spec, view)
    assert renewal_info_fetches(ca) == fetches + 1
    assert manager.inventory._ari[NAME].next_fetch == clock.now + timedelta(seconds=60)


async def test_a_one_shot_does_not_ask_for_the_renewal_window(make_manager: MakeManager) -> None:
    manager, ca = ari_manager(make_manager)
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    assert (await manager.ensure(spec)).action == "unchanged"
    assert renewal_info_fetches(ca) == 0
    # `run` asks only about a certificate that is otherwise not due.
    due = make_manager("--key-type", "ec-p384")
    use_ca(due, ca)
    (p384,) = due.settings.certificates
    outcome = await due.ensure(p384, respect_backoff=True)
    assert outcome.reason == "key type changed" and renewal_info_fetches(ca) == 0


async def test_a_window_fetched_for_another_certificate_does_not_apply(
    make_manager: MakeManager, clock: Clock
) -> None:
    from sidecar.inventory import _AriEntry

    manager = make_manager()
    (spec,) = manager.settings.certificates
    past = (clock.now - timedelta(days=2), clock.now - timedelta(days=1))
    manager.inventory._ari[NAME] = _AriEntry(1, past, clock.now)
    assert manager.inspect(spec).due is policy.DueReason.MISSING
    await manager.ensure(spec)
    view = manager.inspect(spec)
    assert view.facts is not None and view.due is None  # the entry is for serial 1
    manager.inventory._ari[NAME] = _AriEntry(view.facts.serial, past, clock.now)
    assert manager.inspect(spec).due is policy.DueReason.SCHEDULED
    future = (clock.now + timedelta(minutes=10), clock.now + timedelta(minutes=20))
    manager.inventory._ari[NAME] = _AriEntry(view.facts.serial, future, clock.now)
    next_renewal = manager.inspect(spec).next_renewal
    assert next_renewal is not None and future[0] <= next_renewal < future[1]


async def test_renew_at_decides_in_inspect(make_manager: MakeManager, clock: Clock) -> None:
    manager = make_manager("--renew-at", "0.1")
    (spec,) = manager.settings.certificates
    issued = await manager.ensure(spec)
    assert issued.not_after is not None
    clock.now += timedelta(minutes=9)  # past a tenth of the hour, far from the default 0.66
    assert manager.inspect(spec).due is policy.DueReason.SCHEDULED
    other = make_manager()
    assert other.inspect(spec).due is None


async def test_a_failed_forced_renewal_keeps_the_scheduled_time(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    scheduled = manager.inspect(spec).next_renewal
    ca.fail_times("new-order", 1, lambda: problem(400, "malformed", "no"))
    assert (await manager.ensure(spec, force=True)).action == "failed"
    assert manager.inspect(spec).next_renewal == scheduled


async def test_the_second_failure_backs_off_further_with_the_managers_rng(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager(seed=3)
    (spec,) = manager.settings.certificates
    ca.fail_times("new-order", 2, lambda: problem(400, "malformed", "no"))
    first = await manager.ensure(spec)
    second = await manager.ensure(spec)
    rng = random.Random(3)
    policy.next_retry_delay(1, clock.now, None, rng)
    expected = policy.next_retry_delay(2, clock.now, None, rng)
    assert second.next_retry_at == clock.now + expected
    assert first.name == second.name == NAME


async def test_a_failure_near_expiry_retries_within_a_tenth_of_the_time_left(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    issued = await manager.ensure(spec)
    assert issued.not_after is not None
    clock.now = issued.not_after - timedelta(minutes=10)
    ca.fail_times("new-order", 1, lambda: problem(403, "caa", "forbidden"))
    outcome = await manager.ensure(spec, force=True)
    assert outcome.next_retry_at == clock.now + timedelta(minutes=1)
    assert outcome.not_after == issued.not_after


async def test_a_failure_over_a_placeholder_uses_the_hour_cap(
    make_manager: MakeManager, ca: FakeAcme, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure_placeholder(spec)
    ca.fail_times("new-order", 1, lambda: problem(403, "caa", "forbidden"))
    outcome = await manager.ensure(spec)
    assert outcome.reason == "placeholder" and outcome.not_after is None
    assert outcome.next_retry_at == clock.now + policy.MAX_RETRY_DELAY


async def test_a_certificate_that_cannot_be_written_is_a_recorded_failure(
    make_manager: MakeManager, clock: Clock
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    manager.pem_path(NAME).mkdir(parents=True)  # a directory where the PEM goes
    with capture_logs() as logs:
        outcome = await manager.ensure(spec)
    assert (outcome.name, outcome.action, outcome.reason) == (NAME, "failed", "unreadable")
    (failed,) = events(logs, "cert_renewal_failed")
    assert failed["error_type"] == "StorageError" and outcome.error_kind == "other"
    assert outcome.error is not None and str(manager.pem_path(NAME)) in outcome.error
    meta = manager.store.load_meta(NAME)
    assert meta is not None and meta.failures == 1 and meta.last_error == outcome.error
    assert outcome.next_retry_at == clock.now + timedelta(seconds=5)


async def test_a_deployer_that_raises_does_not_undo_the_issuance(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates

    async def broken(*args: object) -> None:
        raise RuntimeError("deployer bug")

    monkeypatch.setattr(manager, "deploy", broken)
    manager.inventory.record_served(NAME, True, "AB")  # what HAProxy was last seen serving
    with capture_logs() as logs:
        outcome = await manager.ensure(spec)
        placed = await make_manager(domains=("p.example",)).ensure_placeholder(
            make_manager(domains=("p.example",)).settings.certificates[0]
        )
    assert (outcome.action, outcome.ok) == ("issued", True)
    assert outcome.deploy == DeployResult.crashed(NAME, outcome.serial or "", "deployer bug")
    assert outcome.error == "deploy failed: deployer bug"
    (failed,) = events(logs, "haproxy_update_failed")
    assert failed["error"] == "deployer bug" and failed["cert"] == NAME
    assert manager.inventory.served(NAME) == Served(False, "AB")
    assert placed is True


async def test_a_placeholder_whose_deploy_raises_is_still_written(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates

    async def broken(*args: object) -> None:
        raise RuntimeError("deployer bug")

    monkeypatch.setattr(manager, "deploy", broken)
    manager.inventory.record_served(NAME, True, "AB")  # what HAProxy was last seen serving
    with capture_logs() as logs:
        assert await manager.ensure_placeholder(spec) is True
    (failed,) = events(logs, "haproxy_placeholder_deploy_failed")
    assert failed["cert"] == NAME and failed["error"] == "deployer bug"
    assert manager.pem_path(NAME).exists()


async def test_the_deploy_hook_gets_the_certificate_facts(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    out = tmp_path / "hook.env"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nenv > {out}\n")
    hook.chmod(0o755)
    manager = make_manager("--deploy-hook", str(hook), domains=(f"{NAME},www.m.example",))
    (spec,) = manager.settings.certificates
    outcome = await manager.ensure(spec)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert outcome.not_after is not None and outcome.deploy is not None
    assert outcome.deploy.name == NAME
    assert outcome.deploy.hook is not None and outcome.deploy.hook.ok
    assert env["CERT_NAME"] == NAME and env["CERT_SERIAL"] == outcome.serial
    assert env["CERT_NOT_AFTER"] == outcome.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert env["CERT_DOMAINS"] == f"{NAME},www.m.example"


async def test_a_reload_without_sockets_still_needs_a_deployer(make_manager: MakeManager) -> None:
    manager = make_manager("--reload", "command", "--reload-command", "true")
    assert manager.deployer is not None


async def test_ensure_all_without_force_leaves_valid_certificates(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    specs = manager.settings.certificates
    await manager.ensure_all(specs)
    assert [o.action for o in await manager.ensure_all(specs)] == ["unchanged"]


async def test_pem_files_get_the_configured_group(make_manager: MakeManager) -> None:
    group = os.getgid() + 1
    manager = make_manager("--pem-group", str(group), domains=("g.example", "h.example"))
    first, second = manager.settings.certificates
    await manager.ensure(first)
    await manager.ensure_placeholder(second)
    assert manager.pem_path("g.example").stat().st_gid == group
    assert manager.pem_path("h.example").stat().st_gid == group


async def test_the_dns_hook_gets_the_passed_through_variables(
    make_manager: MakeManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager("--dns-hook", "/bin/true", "--hook-env", "PROVIDER_TOKEN")
    solver = await wiring.start_solver("dns-01", manager.settings)
    assert solver.passthrough == ("PROVIDER_TOKEN",)  # type: ignore[attr-defined]


async def test_solvers_without_aclose_are_simply_dropped(make_manager: MakeManager) -> None:
    manager = make_manager()
    responders = wiring.Responders(manager.settings)
    responders._running = {"http-01": RecordingSolver()}  # type: ignore[dict-item]
    await responders.aclose()
    assert responders.running == {}


async def test_haproxy_sees_the_pem_under_its_own_directory(make_manager: MakeManager) -> None:
    # The path is the deployer's business since issue 10 (HAProxy needs a deployer to hear of it).
    manager = make_manager("--haproxy-certs-dir", "/etc/haproxy/certs", "--deploy-hook", "true")
    assert manager.deployer is not None
    assert manager.deployer.haproxy_path(NAME) == f"/etc/haproxy/certs/{NAME}.pem"


async def test_a_fresh_manager_knows_nothing_of_the_ca_yet(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    manager = make_manager()
    assert (manager.issuer.last_error, manager.issuer.clock_skew) == (None, None)
    files = replace(manager.settings.files, state_dir=tmp_path / "elsewhere")
    reader = wiring.inventory(replace(manager.settings, files=files), create_state=False)
    assert not (tmp_path / "elsewhere").exists() and reader.store.root == tmp_path / "elsewhere"


async def test_the_cas_clock_skew_is_remembered(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    skewed = FakeAcme(validate_on_response=True, clock=time.time, date_offset=600)
    manager = make_manager()
    use_ca(manager, skewed)
    (spec,) = manager.settings.certificates
    outcome = await manager.ensure(spec)
    assert outcome.clock_skew is not None and abs(outcome.clock_skew - 600) < 30


async def test_each_outcome_says_when_the_certificate_is_next_due(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the renewal loop schedules by (issue 18, item 4): the certificate on disk after the
    # step, not before it.
    manager = make_manager()
    (spec,) = manager.settings.certificates
    issued = await manager.ensure(spec)
    view = manager.inspect(spec)
    assert view.facts is not None and issued.serial == view.facts.serial_hex
    assert issued.next_renewal == view.next_renewal is not None
    assert issued.lifetime == view.facts.not_after - view.facts.not_before
    unchanged = await manager.ensure(spec)
    assert (unchanged.next_renewal, unchanged.lifetime) == (issued.next_renewal, issued.lifetime)

    def broken(*_args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(manager, "inspect", broken)
    with capture_logs() as logs:
        blind = await manager.ensure(spec)  # a crash, backed off as any failure
    # Not knowing when it is due is no reason to lose the outcome: the loop rechecks soon.
    assert blind.action == "failed" and (blind.next_renewal, blind.lifetime) == (None, None)
    assert [e["cert"] for e in events(logs, "cert_schedule_inspect_failed")] == [NAME]


async def test_each_order_may_take_a_quarter_of_the_time_left(
    make_manager: MakeManager, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ca_client.client import AcmeClient

    manager = make_manager()
    (spec,) = manager.settings.certificates
    issued = await manager.ensure(spec)
    assert issued.not_after is not None
    timeouts: list[float] = []
    real_obtain = AcmeClient.obtain

    async def spy(self: AcmeClient, *args: Any, **kwargs: Any) -> Any:
        timeouts.append(kwargs["timeout"])
        return await real_obtain(self, *args, **kwargs)

    monkeypatch.setattr(AcmeClient, "obtain", spy)
    clock.now = issued.not_after - timedelta(minutes=4)
    await manager.ensure(spec, force=True)
    assert timeouts == [60.0]


async def test_registration_without_email_sends_no_contact_and_keeps_the_contact_given(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    assert ca.new_account_payloads[0].get("contact", []) == []
    with_email = make_manager("--email", "ops@m.example")
    await with_email.ensure(spec, force=True)  # its client is open from here on
    ca.reset_database()
    with capture_logs() as logs:
        await with_email.ensure(spec, force=True)
    assert events(logs, "acme_account_reregistered")
    path = with_email.store.account_dir(DIRECTORY_URL) / "account.json"
    assert json.loads(path.read_text())["contact"] == ["mailto:ops@m.example"]
    with capture_logs() as logs:
        await with_email.ensure(spec, force=True)
    assert not events(logs, "acme_account_reregistered")


async def test_an_account_is_registered_with_external_account_binding(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    hmac_key = b"0123456789abcdef0123456789abcdef"
    ca = FakeAcme(validate_on_response=True, eab_keys={"kid-1": hmac_key})
    key_file = tmp_path / "eab.key"
    key_file.write_text(base64.urlsafe_b64encode(hmac_key).decode().rstrip("="))
    manager = make_manager("--eab-kid", "kid-1", "--eab-hmac-key-file", str(key_file))
    use_ca(manager, ca)
    (spec,) = manager.settings.certificates
    assert (await manager.ensure(spec)).action == "issued"
    (payload,) = ca.new_account_payloads
    assert "externalAccountBinding" in payload


async def test_the_deployed_file_is_parsed_once_until_it_changes(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    parsed: list[bytes] = []
    real_parse = pem.parse_combined

    def counting(data: bytes) -> Any:
        parsed.append(data)
        return real_parse(data)

    monkeypatch.setattr("sidecar.manager.pem.parse_combined", counting)
    for _ in range(3):
        view = manager.inspect(spec)
    # The manager told the inventory what it wrote: nothing is read back.
    assert parsed == []
    assert view.facts is not None and view.key_matches and view.due is None
    await manager.ensure(spec, force=True)
    deploy_parses = len(parsed)  # the deploy's own look at what it sends, not the inventory's
    manager.inspect(spec)
    manager.inspect(spec)
    assert len(parsed) == deploy_parses
    # Replaced by someone else (same bytes, a new inode): parsed once, then remembered.
    path = manager.pem_path(spec.name)
    storage.atomic_write(path, path.read_bytes(), mode=0o600)
    for _ in range(3):
        manager.inspect(spec)
    assert len(parsed) == deploy_parses + 1


async def test_unreadable_files_are_named_exactly(make_manager: MakeManager) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    path = manager.pem_path(NAME)
    path.mkdir(parents=True)
    view = manager.inspect(spec)
    assert (view.unreadable, view.key_matches) == (f"cannot read {path}: Is a directory", True)
    path.rmdir()
    path.write_bytes(b"garbage")
    assert manager.inspect(spec).key_matches is True
    certs = manager.settings.files.certs_dir
    for child in certs.iterdir():
        child.unlink()
    certs.rmdir()
    certs.write_text("a file where the directory was")
    view = manager.inspect(spec)
    assert (view.unreadable, view.key_matches) == (f"cannot read {path}: Not a directory", True)


class SwappingDeployer:
    """Stands in for the deployer at removal: does something to the PEM while HAProxy unloads."""

    def __init__(self, path: Path, action: str) -> None:
        self.path, self.action = path, action

    async def remove(self, name: str) -> list[str]:
        self.path.unlink()
        if self.action == "directory":
            (self.path / "inside").mkdir(parents=True)
        return []


async def test_removal_tolerates_a_pem_already_gone_and_names_one_it_cannot_delete(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    path = manager.pem_path(NAME)
    await manager.ensure(spec)
    monkeypatch.setattr(manager, "deployer", SwappingDeployer(path, "gone"))
    assert (await manager.revoke(spec, reason=None, remove=True)).action == "removed"
    await manager.ensure(spec)
    monkeypatch.setattr(manager, "deployer", SwappingDeployer(path, "directory"))
    outcome = await manager.revoke(spec, reason=None, remove=True)
    assert outcome == Outcome(
        NAME,
        "failed",
        ok=False,
        error=f"revoked, but [Errno 21] Is a directory: '{path}'",
    )


async def test_a_refused_unload_is_logged(make_manager: MakeManager, tmp_path: Path) -> None:
    manager = unreachable_haproxy(make_manager, tmp_path)
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    with capture_logs() as logs:
        outcome = await manager.revoke(spec, reason=None, remove=True)
    (failed,) = events(logs, "haproxy_remove_failed")
    missing = f"unix:{tmp_path}/missing.sock"
    assert failed["cert"] == NAME
    assert failed["error"] == f"haproxy {missing}: socket does not exist"
    assert outcome.error == f"HAProxy unload failed: {failed['error']}"


# -- third round ------------------------------------------------------------------------------


async def test_a_meta_that_cannot_be_written_is_logged_not_raised(
    make_manager: MakeManager, ca: FakeAcme, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A success is recorded in the certificate's state commit (save_issued); what goes through
    # save_meta on its own is the record of a failure, or of a deploy.
    manager = make_manager()
    (spec,) = manager.settings.certificates
    meta = manager.store.cert_dir(NAME) / "meta.json"

    def disk_full(name: str, value: storage.CertMeta) -> None:
        raise storage.StorageError(f"cannot write {meta}: No space left on device", meta)

    monkeypatch.setattr(manager.store, "save_meta", disk_full)
    ca.fail_times("new-order", 1, lambda: problem(400, "malformed", "no such thing"))
    with capture_logs() as logs:
        outcome = await manager.ensure(spec)
    assert outcome.action == "failed"  # the attempt's outcome, not the record's
    assert outcome.error is not None and "no such thing" in outcome.error
    (failed,) = events(logs, "cert_meta_write_failed")
    assert failed["cert"] == NAME
    assert failed["error"] == f"cannot write {meta}: No space left on device"


async def test_a_first_registration_is_stored_whole(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager("--email", "ops@m.example")
    (spec,) = manager.settings.certificates
    with capture_logs() as logs:
        await manager.ensure(spec)
    assert not events(logs, "acme_account_reregistered")
    document = json.loads((manager.store.account_dir(DIRECTORY_URL) / "account.json").read_text())
    (url,) = ca.accounts
    assert document == {
        "url": url,
        "directory": DIRECTORY_URL,
        "contact": ["mailto:ops@m.example"],
    }


async def test_a_reregistration_without_email_stores_no_contact(
    make_manager: MakeManager, ca: FakeAcme
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    ca.reset_database()
    await manager.ensure(spec, force=True)
    document = json.loads((manager.store.account_dir(DIRECTORY_URL) / "account.json").read_text())
    assert document["contact"] == [] and document["url"] in ca.accounts


async def test_the_client_is_told_the_stored_account_url_so_a_reset_ca_is_noticed(
    make_manager: MakeManager, ca: FakeAcme, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    with caplog.at_level(logging.WARNING, logger="ca_client.client"):
        await manager.ensure(spec)
    assert "re-registered" not in caplog.text  # a first registration is not a re-registration
    ca.reset_database()
    restarted = make_manager()  # a new process: it opens its client with the stored URL
    with caplog.at_level(logging.WARNING, logger="ca_client.client"):
        await restarted.ensure(spec, force=True)
    assert "re-registered" in caplog.text


# -- ensure_served: does HAProxy serve the file? (run's periodic check, since issue 10) ----------


async def test_without_a_runtime_api_nothing_is_asked(make_manager: MakeManager) -> None:
    manager = make_manager()
    (spec,) = manager.settings.certificates
    await manager.ensure(spec)
    assert await manager.ensure_served(spec) == ServedCheck()
    hooked = make_manager("--deploy-hook", "true")
    assert await hooked.ensure_served(spec) == ServedCheck()


async def test_haproxy_serving_the_file_is_recorded_and_left_alone(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    fake = FakeHAProxy(crt_lists={str(tmp_path / "certs"): []})
    async with serve(fake, tmp_path / "admin.sock") as address:
        manager = make_manager("--haproxy-socket", address)
        (spec,) = manager.settings.certificates
        issued = await manager.ensure(spec)
        sent = len(fake.received)
        with capture_logs() as logs:
            check = await manager.ensure_served(spec)
    assert check == ServedCheck(((address, True),))
    assert manager.inventory.served(NAME) == Served(True, issued.serial)
    assert all(command.startswith("show ssl cert") for command in fake.commands[sent:])
    assert not events(logs, "haproxy_serves_other") and not events(logs, "haproxy_check_failed")


async def test_haproxy_serving_another_certificate_gets_the_file_again(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    fake = FakeHAProxy(crt_lists={str(tmp_path / "certs"): []})
    async with serve(fake, tmp_path / "admin.sock") as address:
        manager = make_manager("--haproxy-socket", address)
        (spec,) = manager.settings.certificates
        issued = await manager.ensure(spec)
        assert issued.serial is not None
        path = str(manager.pem_path(NAME))
        # HAProxy restarted with an older file: it serves a serial that is not the file's.
        older = trustme.CA().issue_cert(NAME)
        fake.certs[path] = StoredCert(older.cert_chain_pems[0].bytes().decode())
        # What `status` would show while the file is handed over again: HAProxy serves
        # another serial (the one it answered), not the file's.
        seen_during_deploy: list[Served] = []
        real_deploy = manager.deploy

        async def deploy(*args: Any, **kwargs: Any) -> Any:
            seen_during_deploy.append(manager.inventory.served(NAME))
            return await real_deploy(*args, **kwargs)

        manager.deploy = deploy  # type: ignore[method-assign]
        with capture_logs() as logs:
            check = await manager.ensure_served(spec)
    assert check.sockets == ((address, True),)
    assert check.deploy is not None and check.deploy.ok
    (other,) = events(logs, "haproxy_serves_other")
    older_leaf = x509.load_pem_x509_certificate(older.cert_chain_pems[0].bytes())
    older_serial = pem.describe_cert(older_leaf).serial_hex
    assert other["served"] == older_serial
    assert other["file"] == issued.serial and other["cert"] == NAME
    assert seen_during_deploy == [Served(False, older_serial)]
    (updated,) = events(logs, "haproxy_updated")
    assert updated["cert"] == NAME and updated["serial"] == issued.serial
    loaded = fake.serial(path)
    assert loaded is not None and int(loaded, 16) == int(issued.serial, 16)
    assert manager.inventory.served(NAME) == Served(True, issued.serial)


async def test_a_restarted_sidecar_learns_from_haproxy_what_it_serves(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    # What HAProxy serves is kept in memory only: a new process knows nothing until it asks.
    fake = FakeHAProxy(crt_lists={str(tmp_path / "certs"): []})
    async with serve(fake, tmp_path / "admin.sock") as address:
        issued = await make_manager("--haproxy-socket", address).ensure(
            make_manager().settings.certificates[0]
        )
        restarted = make_manager("--haproxy-socket", address)
        (spec,) = restarted.settings.certificates
        assert restarted.inventory.served(NAME) == Served(None, None)
        sent = len(fake.received)
        check = await restarted.ensure_served(spec)
    assert check == ServedCheck(((address, True),))
    assert restarted.inventory.served(NAME) == Served(True, issued.serial)
    assert all(command.startswith("show ssl cert") for command in fake.commands[sent:])


async def test_haproxy_that_cannot_be_asked_is_unknown_not_redeployed(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    manager = unreachable_haproxy(make_manager, tmp_path)
    (spec,) = manager.settings.certificates
    manager.inventory.record_served(NAME, True, "AB")
    await manager.ensure(spec)  # the deploy fails: the inventory keeps the last serial seen
    assert manager.inventory.served(NAME) == Served(False, "AB")
    with capture_logs() as logs:
        check = await manager.ensure_served(spec)
    assert check == ServedCheck(((f"unix:{tmp_path}/missing.sock", False),))
    (failed,) = events(logs, "haproxy_check_failed")
    assert failed["cert"] == NAME and "missing.sock" in failed["error"]
    assert manager.inventory.served(NAME) == Served(None, "AB")


async def test_a_file_that_does_not_parse_is_a_failed_check(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    fake = FakeHAProxy(crt_lists={str(tmp_path / "certs"): []})
    async with serve(fake, tmp_path / "admin.sock") as address:
        manager = make_manager("--haproxy-socket", address)
        (spec,) = manager.settings.certificates
        manager.pem_path(NAME).write_text("garbage")
        with capture_logs() as logs:
            check = await manager.ensure_served(spec)
    assert check == ServedCheck()
    (failed,) = events(logs, "haproxy_check_failed")
    assert failed["cert"] == NAME and "outside the PEM blocks" in failed["error"], failed
    assert manager.inventory.served(NAME) == Served(None, None)


async def test_one_silent_socket_of_two_is_logged_and_the_other_believed(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    fake = FakeHAProxy(crt_lists={str(tmp_path / "certs"): []})
    missing = f"unix:{tmp_path}/missing.sock"
    async with serve(fake, tmp_path / "admin.sock") as address:
        manager = make_manager("--haproxy-socket", address)
        (spec,) = manager.settings.certificates
        issued = await manager.ensure(spec)
        config = DeployConfig.build(
            sockets=[address, missing], certs_dir=tmp_path / "certs", attempts=1, retry_delay=0.0
        )
        manager.deployer = Deployer(config)
        with capture_logs() as logs:
            check = await manager.ensure_served(spec)
    assert check == ServedCheck(((address, True), (missing, False)))
    (failed,) = events(logs, "haproxy_check_failed")
    assert failed["cert"] == NAME and "missing.sock" in failed["error"]
    assert manager.inventory.served(NAME) == Served(True, issued.serial)


async def test_two_haproxies_that_disagree_get_the_file_again(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    crt_list = str(tmp_path / "certs")
    first, second = FakeHAProxy(crt_lists={crt_list: []}), FakeHAProxy(crt_lists={crt_list: []})
    async with (
        serve(first, tmp_path / "one.sock") as one,
        serve(second, tmp_path / "two.sock") as two,
    ):
        manager = make_manager("--haproxy-socket", one, "--haproxy-socket", two)
        (spec,) = manager.settings.certificates
        issued = await manager.ensure(spec)
        path = str(manager.pem_path(NAME))
        older = trustme.CA().issue_cert(NAME)
        second.certs[path] = StoredCert(older.cert_chain_pems[0].bytes().decode())
        with capture_logs() as logs:
            check = await manager.ensure_served(spec)
    assert check.sockets == ((one, True), (two, True))
    assert check.deploy is not None and check.deploy.ok
    (other,) = events(logs, "haproxy_serves_other")
    assert other["served"] is None  # no common answer
    assert manager.inventory.served(NAME) == Served(True, issued.serial)
