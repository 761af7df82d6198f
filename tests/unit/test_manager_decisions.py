"""The Manager's decisions, with a fake issuer (no CA) and a fake deployer (no HAProxy).

The state store and the certs directory are real (a temporary directory): what the Manager
writes there, and in what state it leaves them, is what these tests check. Every branch of
`decide` and of the renewal after it: unchanged, forced, waiting out the backoff (valid or
not), a failure recorded (or not, on a dry run), a certificate the CA got wrong, a deploy that
fails or raises, no deployer at all, the CA's renewal window, and revocation.
"""

from __future__ import annotations

import asyncio
import math
import os
import stat
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from ca_client.challenges.base import ChallengeSolver
from ca_client.errors import AcmeProblem, RateLimited, TransportError
from ca_client.key_types import KeyType
from ca_client.keys import PrivateKey
from ca_client.models import IssuedCertificate, RenewalInfo
from sidecar import pem, policy, storage
from sidecar.config import CertificateSpec
from sidecar.deploy import Deployer, DeployResult
from sidecar.inventory import Inventory
from sidecar.issuer import AccountSettings, Issuer, IssuerError
from sidecar.manager import Manager, PemFiles, _retry_after, decide
from sidecar.outcome import Action, Outcome

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SPEC = CertificateSpec("a.example", ("a.example",), KeyType.EC_P256, "http-01")
LIFETIME = timedelta(hours=24)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class _NoSolvers:
    async def get(self, challenge: str) -> ChallengeSolver:
        raise AssertionError("the fake issuer never solves challenges")


class FakeIssuer(Issuer):
    """Signs whatever it is asked for with its own CA, or fails as told."""

    def __init__(self, store: storage.StateStore, clock: Clock) -> None:
        super().__init__(
            AccountSettings("https://ca.invalid/directory", Path("/nonexistent")),
            store,
            _NoSolvers(),
        )
        self.clock = clock
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake CA")])
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(1)
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.orders: list[tuple[tuple[str, ...], bytes | None]] = []
        self.revoked: list[int | None] = []
        self.fail: BaseException | None = None
        self.names: Sequence[str] | None = None  # names to sign instead of those asked for
        self.window: RenewalInfo | None = None
        self.renewal_info_asked = 0

    async def obtain(
        self,
        domains: Sequence[str],
        key: PrivateKey,
        *,
        challenge: str,
        timeout: float,
        renewing: bytes | None = None,
    ) -> IssuedCertificate:
        self.orders.append((tuple(domains), renewing))
        if self.fail is not None:
            raise self.fail
        names = self.names if self.names is not None else domains
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.clock.now - timedelta(minutes=1))
            .not_valid_after(self.clock.now + LIFETIME)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        leaf_pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
        chain_pem = self.ca_cert.public_bytes(serialization.Encoding.PEM).decode()
        return IssuedCertificate(
            leaf_pem + chain_pem,
            leaf_pem,
            (chain_pem,),
            f"https://ca.invalid/order/{len(self.orders)}",
        )

    async def revoke(self, leaf_der: bytes, *, reason: int | None) -> None:
        if self.fail is not None:
            raise self.fail
        self.revoked.append(reason)

    async def renewal_info(self, deployed_pem: bytes) -> RenewalInfo | None:
        self.renewal_info_asked += 1
        return self.window


class FakeDeployer:
    """Answers as told; ``raises`` makes deploy raise, as a bug or a lost socket would."""

    mode = "runtime-api"
    runtimes = ()

    def __init__(self) -> None:
        self.ok = True
        self.raises: Exception | None = None
        self.deployed: list[str] = []
        self.removed: list[str] = []

    async def deploy(
        self, name: str, path: Path, data: bytes, *, serial_hex: str, **_: Any
    ) -> DeployResult:
        if self.raises is not None:
            raise self.raises
        self.deployed.append(serial_hex)
        errors = () if self.ok else ("set ssl cert: refused",)
        return DeployResult(name, serial_hex, self.mode, self.ok, errors=errors)

    async def remove(self, name: str) -> list[str]:
        self.removed.append(name)
        return []


class Rig:
    def __init__(self, tmp_path: Path, *, with_deployer: bool = True) -> None:
        self.clock = Clock()
        self.store = storage.StateStore(tmp_path / "state")
        (tmp_path / "certs").mkdir()
        self.inventory = Inventory(self.store, tmp_path / "certs", renew_at=2 / 3, now=self.clock)
        self.issuer = FakeIssuer(self.store, self.clock)
        self.deployer = FakeDeployer() if with_deployer else None
        self.manager = Manager(
            inventory=self.inventory,
            issuer=self.issuer,
            deployer=cast(Deployer, self.deployer),
            files=PemFiles(0o640),
            holder="test",
        )

    def meta(self) -> storage.CertMeta:
        return self.store.load_meta(SPEC.name) or storage.CertMeta()

    def file(self) -> bytes:
        return self.manager.pem_path(SPEC.name).read_bytes()


def rate_limited() -> IssuerError:
    return IssuerError(
        RateLimited("urn:ietf:params:acme:error:rateLimited", "slow down", retry_after=3600)
    )


def test_nothing_deployed_is_issued_written_deployed_and_recorded(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    outcome = asyncio.run(rig.manager.ensure(SPEC))
    assert outcome.action is Action.ISSUED and outcome.ok
    assert outcome.reason == str(policy.DueReason.MISSING)
    facts = pem.describe_cert(pem.parse_combined(rig.file()).leaf)
    assert outcome.serial == facts.serial_hex
    assert rig.deployer is not None and rig.deployer.deployed == [facts.serial_hex]
    assert outcome.deploy is not None and outcome.deploy.ok and outcome.deploy.mode == "runtime-api"
    meta = rig.meta()
    assert (meta.serial, meta.failures) == (facts.serial_hex, 0)
    served = rig.inventory.served(SPEC.name)
    assert (served.matches, served.serial) == (True, facts.serial_hex)
    assert rig.issuer.orders == [(("a.example",), None)]  # nothing to name as replaced


def test_a_renewal_and_its_deploy_write_the_state_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What HAProxy serves is HAProxy's to say (and the inventory's to remember while running):
    # a successful deploy writes nothing more to the state directory (issue 18: meta.json was
    # written a second time, for fields nothing read).
    rig = Rig(tmp_path)
    asyncio.run(rig.manager.ensure(SPEC))
    replaced: list[str] = []
    fsyncs: list[str] = []
    real_replace, real_fsync = os.replace, os.fsync

    def spy_replace(source: Any, target: Any) -> None:
        replaced.append(Path(target).name)
        real_replace(source, target)

    def spy_fsync(fd: int) -> None:
        fsyncs.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    renewed = asyncio.run(rig.manager.ensure(SPEC, force=True))
    monkeypatch.undo()
    assert renewed.deploy is not None and renewed.deploy.ok
    # The state commit (previous, chain, cert, meta), then the PEM HAProxy reads; nothing after.
    assert replaced == ["previous.pem", "chain.pem", "cert.pem", "meta.json", "a.example.pem"]
    assert (fsyncs.count("file"), fsyncs.count("dir")) == (5, 2)
    assert (
        "deployed_serial"
        not in rig.manager.store.cert_dir(SPEC.name).joinpath("meta.json").read_text()
    )


def test_a_valid_certificate_not_due_is_left_alone(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    issued = asyncio.run(rig.manager.ensure(SPEC))
    again = asyncio.run(rig.manager.ensure(SPEC))
    assert again.action is Action.UNCHANGED and again.ok and again.serial == issued.serial
    assert len(rig.issuer.orders) == 1


def test_force_renews_a_valid_certificate_naming_the_one_it_replaces(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    asyncio.run(rig.manager.ensure(SPEC))
    before = rig.file()
    forced = asyncio.run(rig.manager.ensure(SPEC, force=True))
    assert forced.action is Action.ISSUED and forced.reason == str(policy.DueReason.FORCED)
    assert rig.issuer.orders[-1][1] == before


def test_a_ca_failure_is_recorded_with_the_cas_retry_after(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.issuer.fail = rate_limited()
    failed = asyncio.run(rig.manager.ensure(SPEC))
    assert failed.action is Action.FAILED and not failed.ok
    assert failed.error_kind == "rate_limited"
    assert failed.next_retry_at is not None and failed.next_retry_at >= NOW + timedelta(hours=1)
    meta = rig.meta()
    assert meta.failures == 1 and meta.last_error == str(rig.issuer.fail)
    assert meta.next_retry_at == failed.next_retry_at
    assert not rig.manager.pem_path(SPEC.name).exists()


def test_a_ca_error_that_escapes_unwrapped_is_still_counted_by_its_kind(tmp_path: Path) -> None:
    # The issuer wraps what ca_client raises; one that escaped it (a new path, a bug) is still
    # the CA's failure in cert_sidecar_renewal_failures_total, not "other".
    rig = Rig(tmp_path)
    rig.issuer.fail = TransportError("connection reset by the CA")
    failed = asyncio.run(rig.manager.ensure(SPEC))
    assert failed.action is Action.FAILED and failed.error_kind == "ca_unreachable"
    assert rig.meta().failures == 1


@pytest.mark.parametrize("retry_after", [-1e300, -5.0, 0.0, math.nan, math.inf, -math.inf, 1e300])
def test_a_retry_after_no_delay_can_hold_falls_back_to_the_backoff(
    tmp_path: Path, retry_after: float
) -> None:
    # ca_client bounds what it parses; the manager does not rely on it: a negative, zero,
    # missing or infinite wait is no wait (the backoff alone), one past an hour is an hour.
    rig = Rig(tmp_path)
    error = rate_limited()
    error.retry_after = retry_after
    rig.issuer.fail = error
    failed = asyncio.run(rig.manager.ensure(SPEC))
    assert failed.action is Action.FAILED and failed.next_retry_at is not None
    delay = failed.next_retry_at - NOW
    if retry_after == 1e300:
        assert delay == policy.MAX_RETRY_DELAY
    else:
        assert policy.MIN_RETRY_DELAY <= delay <= 2 * policy.MIN_RETRY_DELAY


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_retry_after_is_a_positive_wait_within_the_cap_or_none(seconds: float) -> None:
    wait = _retry_after(seconds)
    if math.isfinite(seconds) and seconds > 0:
        assert wait == timedelta(seconds=min(seconds, policy.MAX_RETRY_DELAY.total_seconds()))
    else:
        assert wait is None


def test_the_backoff_is_waited_out_only_when_asked(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.issuer.fail = rate_limited()
    asyncio.run(rig.manager.ensure(SPEC))
    waiting = asyncio.run(rig.manager.ensure(SPEC, respect_backoff=True))
    assert waiting.action is Action.WAITING and not waiting.ok  # nothing valid is deployed
    assert waiting.error == rig.meta().last_error
    assert len(rig.issuer.orders) == 1
    rig.issuer.fail = None
    handed_over = asyncio.run(rig.manager.ensure(SPEC))  # as `renew` handed to `run`
    assert handed_over.action is Action.ISSUED
    assert rig.meta().failures == 0 and rig.meta().next_retry_at is None


def test_waiting_with_a_valid_certificate_deployed_is_ok(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    asyncio.run(rig.manager.ensure(SPEC))
    wider = CertificateSpec("a.example", ("a.example", "b.example"), KeyType.EC_P256, "http-01")
    rig.issuer.fail = rate_limited()
    failed = asyncio.run(rig.manager.ensure(wider, respect_backoff=True))
    assert failed.action is Action.FAILED and failed.reason == str(policy.DueReason.NAMES_CHANGED)
    waiting = asyncio.run(rig.manager.ensure(wider, respect_backoff=True))
    assert waiting.action is Action.WAITING and waiting.ok


def test_a_dry_run_writes_nothing_and_records_no_failure(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    dry = asyncio.run(rig.manager.ensure(SPEC, dry_run=True))
    assert dry.action is Action.DRY_RUN and dry.ok and dry.serial
    assert not rig.manager.pem_path(SPEC.name).exists()
    assert rig.deployer is not None and rig.deployer.deployed == []
    rig.issuer.fail = rate_limited()
    failed = asyncio.run(rig.manager.ensure(SPEC, dry_run=True))
    assert failed.action is Action.FAILED and failed.next_retry_at is None
    assert rig.meta().failures == 0


def test_a_certificate_the_ca_got_wrong_never_replaces_the_deployed_one(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    asyncio.run(rig.manager.ensure(SPEC))
    good = rig.file()
    rig.issuer.names = ["other.example"]
    failed = asyncio.run(rig.manager.ensure(SPEC, force=True))
    assert failed.action is Action.FAILED and "does not cover a.example" in (failed.error or "")
    assert failed.error_kind == "other"
    assert rig.file() == good and rig.meta().failures == 1


def test_a_refused_deploy_is_a_warning_on_an_issued_certificate(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    assert rig.deployer is not None
    rig.deployer.ok = False
    outcome = asyncio.run(rig.manager.ensure(SPEC))
    assert outcome.action is Action.ISSUED and outcome.ok
    assert outcome.error == "deploy failed: runtime-api: set ssl cert: refused"
    assert outcome.deploy is not None and not outcome.deploy.ok
    assert rig.inventory.served(SPEC.name).matches is False


def test_a_deployer_that_raises_leaves_the_file_written(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    assert rig.deployer is not None
    rig.deployer.raises = OSError("socket gone")
    outcome = asyncio.run(rig.manager.ensure(SPEC))
    assert outcome.action is Action.ISSUED and outcome.error == "deploy failed: socket gone"
    assert outcome.deploy == DeployResult.crashed(SPEC.name, outcome.serial or "", "socket gone")
    assert pem.describe_cert(pem.parse_combined(rig.file()).leaf).serial_hex == outcome.serial


def test_without_a_deployer_nothing_is_deployed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, with_deployer=False)
    outcome = asyncio.run(rig.manager.ensure(SPEC))
    assert outcome.action is Action.ISSUED and outcome.deploy is None and outcome.error is None


def test_a_past_renewal_window_from_the_ca_makes_it_due(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    asyncio.run(rig.manager.ensure(SPEC))
    rig.issuer.window = RenewalInfo(NOW - timedelta(hours=2), NOW - timedelta(hours=1))
    renewed = asyncio.run(rig.manager.ensure(SPEC, respect_backoff=True))
    assert rig.issuer.renewal_info_asked == 1
    assert renewed.action is Action.ISSUED
    assert renewed.reason == str(policy.DueReason.SCHEDULED)


def test_the_renewal_window_is_not_asked_again_before_it_is_stale(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    asyncio.run(rig.manager.ensure(SPEC))
    for _ in range(3):
        unchanged = asyncio.run(rig.manager.ensure(SPEC, respect_backoff=True))
        assert unchanged.action is Action.UNCHANGED
    assert rig.issuer.renewal_info_asked == 1


def test_revoke_replaces_with_a_new_key(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    first = asyncio.run(rig.manager.ensure(SPEC))
    old_key = pem.parse_combined(rig.file()).key
    outcome = asyncio.run(rig.manager.revoke(SPEC, reason=1, remove=False))
    assert outcome.action is Action.REVOKED_AND_REPLACED and outcome.ok
    assert outcome.serial != first.serial and rig.issuer.revoked == [1]
    assert not pem.key_matches(pem.parse_combined(rig.file()).leaf, old_key)


def test_revoke_with_remove_unloads_and_deletes(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    first = asyncio.run(rig.manager.ensure(SPEC))
    outcome = asyncio.run(rig.manager.revoke(SPEC, reason=None, remove=True))
    assert (outcome.action, outcome.serial) == (Action.REMOVED, first.serial)
    assert rig.deployer is not None and rig.deployer.removed == [SPEC.name]
    assert not rig.manager.pem_path(SPEC.name).exists()


def test_revoke_fails_without_a_certificate_or_when_the_ca_refuses(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    nothing = asyncio.run(rig.manager.revoke(SPEC, reason=None, remove=False))
    assert nothing.action is Action.FAILED and "no issued certificate" in (nothing.error or "")
    asyncio.run(rig.manager.ensure(SPEC))
    rig.issuer.fail = IssuerError(AcmeProblem("urn:ietf:params:acme:error:unauthorized", "no"))
    refused = asyncio.run(rig.manager.revoke(SPEC, reason=None, remove=False))
    assert refused.action is Action.FAILED and rig.manager.pem_path(SPEC.name).exists()


@pytest.mark.parametrize(
    ("force", "respect_backoff", "expected"),
    [
        (False, True, Action.WAITING),
        (False, False, policy.DueReason.MISSING),
        # Due for its own reason, so the reason is not FORCED: the backoff still holds.
        (True, True, Action.WAITING),
    ],
)
def test_decide_on_a_failing_missing_certificate(
    tmp_path: Path, force: bool, respect_backoff: bool, expected: Action | policy.DueReason
) -> None:
    rig = Rig(tmp_path)
    rig.store.save_meta(
        SPEC.name,
        storage.CertMeta().with_failure("down", now=NOW, next_retry_at=NOW + timedelta(hours=1)),
    )
    decision = decide(
        rig.inventory.inspect(SPEC), NOW, force=force, respect_backoff=respect_backoff
    )
    got = decision.action if isinstance(decision, Outcome) else decision
    assert got == expected
