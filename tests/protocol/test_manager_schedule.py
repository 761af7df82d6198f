"""The Manager's wiring of the renewal policy, against the in-process fake CA with one fake clock
for the Manager, the ACME client and the CA's ``Date``: ``--renew-at``, the stored backoff, the
longest wait after a permanent error, the per-attempt share of the time left, the PEM replaced
by rename, and revocation reaching the CA.

`sidecar.policy`'s arithmetic has its own unit tests; these check that the Manager uses it with
the configured values and the stored state, which no policy test can see.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from sidecar import pem, policy, wiring
from sidecar.cli import build_parser
from sidecar.config import Settings, load_settings
from sidecar.manager import ORDER_SHARE_OF_TIME_LEFT, Manager
from tests.protocol.conftest import FakeClock, RecordingSolver
from tests.protocol.fake_acme import DIRECTORY_URL, FakeAcme, problem

pytestmark = pytest.mark.anyio

NAME = "sched.example"


@dataclass
class Rig:
    """A fake CA, one fake clock, and Managers built on the same state directory."""

    ca: FakeAcme
    clock: FakeClock
    solver: RecordingSolver
    tmp_path: Path

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now, UTC)

    def at(self, when: datetime) -> None:
        self.clock.now = when.timestamp()

    def settings(self, *flags: str) -> Settings:
        bundle = self.tmp_path / "bundle.pem"
        if not bundle.exists():
            bundle.write_bytes(trustme.CA().cert_pem.bytes())
        args = build_parser().parse_args(
            [
                "issue",
                "--directory",
                DIRECTORY_URL,
                "--ca-bundle",
                str(bundle),
                "--certs-dir",
                str(self.tmp_path / "certs"),
                "--state-dir",
                str(self.tmp_path / "state"),
                "--domain",
                NAME,
                *flags,
            ]
        )
        return load_settings(args, {})

    def manager(self, *flags: str) -> Manager:
        settings = self.settings(*flags)
        (self.spec,) = settings.certificates
        return wiring.build(
            settings,
            holder="test",
            now=self.now,
            client_options={
                "transport": self.ca.transport(),
                "clock": self.clock,
                "sleep": self.clock.sleep,
            },
            solvers={"http-01": self.solver},
        ).manager

    def orders(self) -> int:
        return sum(1 for _, route in self.ca.requests if route == "new-order")

    def facts(self) -> pem.CertFacts:
        data = (self.tmp_path / "certs" / f"{NAME}.pem").read_bytes()
        return pem.describe_cert(pem.parse_combined(data).leaf)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    # The fake CA issues certificates valid for an hour from the real time of issuance; the
    # fake clock starts there and tests move it along the certificate's life.
    clock = FakeClock(now=time.time())
    ca = FakeAcme(clock=clock, validate_on_response=True)
    solver = RecordingSolver()
    ca.reach(solver)
    yield Rig(ca, clock, solver, tmp_path)


def _at_fraction(facts: pem.CertFacts, fraction: float) -> datetime:
    return facts.not_before + (facts.not_after - facts.not_before) * fraction


# --- --renew-at -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("renew_at", "fraction", "renewed"),
    [
        # Default 0.66 would wait; 0.2 (minus at most 1/20 of jitter) is past at 0.3.
        ("0.2", 0.3, True),
        # Default 0.66 would renew; 0.9 (at least 0.85 after jitter) is still ahead at 0.8.
        ("0.9", 0.8, False),
    ],
)
async def test_renew_at_decides_when_a_valid_certificate_is_renewed(
    rig: Rig, renew_at: str, fraction: float, renewed: bool
) -> None:
    async with rig.manager("--renew-at", renew_at) as manager:
        spec = rig.spec
        assert (await manager.ensure(spec)).action == "issued"
        facts = rig.facts()
        expected = policy.facts_renewal_time(facts, float(renew_at))
        # What `status` and /metrics show is the same time.
        assert manager.inspect(spec).next_renewal == expected
        rig.at(_at_fraction(facts, fraction))
        outcome = await manager.ensure(spec, respect_backoff=True)
    if renewed:
        assert outcome.action == "issued", outcome
        assert outcome.reason == str(policy.DueReason.SCHEDULED)
        assert rig.orders() == 2
    else:
        assert outcome.action == "unchanged", outcome
        assert rig.orders() == 1


# --- the stored backoff -----------------------------------------------------------------------


async def test_the_stored_backoff_is_waited_out_even_across_a_restart(rig: Rig) -> None:
    rig.ca.fail_times("new-order", 1, lambda: problem(403, "unauthorized", "not yet"))
    async with rig.manager() as manager:
        spec = rig.spec
        failed = await manager.ensure(spec, respect_backoff=True)
        assert failed.action == "failed", failed
        assert failed.next_retry_at is not None and failed.next_retry_at > rig.now()
        assert rig.orders() == 1
        waiting = await manager.ensure(spec, respect_backoff=True)
    assert waiting.action == "waiting", waiting
    assert waiting.next_retry_at == failed.next_retry_at
    # A restarted sidecar (new Manager, same state directory) keeps waiting: no new order.
    async with rig.manager() as restarted:
        again = await restarted.ensure(spec, respect_backoff=True)
        assert again.action == "waiting", again
        assert rig.orders() == 1
        view = restarted.inspect(spec)
        assert view.next_renewal == failed.next_retry_at  # what status shows
        rig.at(failed.next_retry_at)
        retried = await restarted.ensure(spec, respect_backoff=True)
    assert retried.action == "issued", retried
    assert rig.orders() == 2


# --- errors that will not fix themselves ------------------------------------------------------


@pytest.mark.parametrize("deployed", [False, True])
async def test_a_permanent_error_waits_the_longest_allowed(rig: Rig, deployed: bool) -> None:
    async with rig.manager() as manager:
        spec = rig.spec
        if deployed:
            assert (await manager.ensure(spec)).action == "issued"
            facts = rig.facts()
            # Due (past 2/3 of its life) with 20 minutes left: the cap is a tenth of that.
            rig.at(facts.not_after - timedelta(minutes=20))
            cap = timedelta(minutes=2)
        else:
            cap = policy.MAX_RETRY_DELAY
        orders = rig.orders()
        rig.ca.fail_times(
            "new-order", 1, lambda: problem(400, "rejectedIdentifier", "not for this CA")
        )
        failed = await manager.ensure(spec, respect_backoff=True)
        assert failed.action == "failed", failed
        # A first transient failure would wait 2.5-5 s; this one waits the whole cap.
        assert failed.next_retry_at == rig.now() + cap
        rig.clock.now += cap.total_seconds() / 2
        waiting = await manager.ensure(spec, respect_backoff=True)
        assert waiting.action == "waiting", waiting
        assert rig.orders() == orders + 1


# --- one attempt's share of the time left -----------------------------------------------------


async def test_one_attempt_may_use_only_a_quarter_of_the_time_left(rig: Rig) -> None:
    async with rig.manager() as manager:
        spec = rig.spec
        assert (await manager.ensure(spec)).action == "issued"
        facts = rig.facts()
        left = timedelta(minutes=2)  # under 1/20 of the hour: renewed at once
        rig.at(facts.not_after - left)
        rig.ca.polls_until_issued = -1  # the CA hangs in "processing"
        started = rig.clock.now
        outcome = await manager.ensure(spec, respect_backoff=True)
    assert outcome.action == "failed", outcome
    assert outcome.reason == str(policy.DueReason.NEARLY_EXPIRED)
    used = rig.clock.now - started
    allowed = left.total_seconds() * ORDER_SHARE_OF_TIME_LEFT  # 30 s, not the 300 s default
    assert allowed - 1 <= used <= allowed + 1, used
    # The certificate on disk is untouched: the old one keeps being served meanwhile.
    assert rig.facts() == facts


# --- the PEM HAProxy reads --------------------------------------------------------------------


async def test_a_renewal_replaces_the_pem_by_rename_never_in_place(rig: Rig) -> None:
    async with rig.manager() as manager:
        spec = rig.spec
        assert (await manager.ensure(spec)).action == "issued"
        path = manager.pem_path(spec.name)
        old_data = path.read_bytes()
        old_inode = path.stat().st_ino
        # A reader in the middle of reading the old file (HAProxy loading it at a restart).
        with path.open("rb") as reader:
            assert (await manager.ensure(spec, force=True)).action == "issued"
            assert reader.read() == old_data  # still the whole old file, not a mix
        new = path.stat()
    assert new.st_ino != old_inode
    assert oct(new.st_mode & 0o777) == oct(manager.files.mode)
    assert path.read_bytes() != old_data
    assert not [p.name for p in path.parent.iterdir() if p.name != path.name]


# --- revocation -------------------------------------------------------------------------------


async def test_revoke_revokes_the_old_serial_at_the_ca_then_replaces_it(rig: Rig) -> None:
    async with rig.manager() as manager:
        spec = rig.spec
        assert (await manager.ensure(spec)).action == "issued"
        old = rig.facts()
        old_key = (rig.tmp_path / "state" / "certs" / NAME / "key.pem").read_bytes()
        outcome = await manager.revoke(spec, reason=1, remove=False)
        assert outcome.ok, outcome
    # The CA's own record: the old serial, the reason given, asked by our account.
    assert [(serial, reason) for serial, reason, _ in rig.ca.revoked] == [(old.serial, 1)]
    assert rig.ca.revoked[0][2] in rig.ca.accounts
    assert rig.facts().serial != old.serial
    assert (rig.tmp_path / "state" / "certs" / NAME / "key.pem").read_bytes() != old_key


async def test_revoke_remove_revokes_at_the_ca_then_deletes(rig: Rig) -> None:
    async with rig.manager() as manager:
        spec = rig.spec
        assert (await manager.ensure(spec)).action == "issued"
        old = rig.facts()
        outcome = await manager.revoke(spec, reason=None, remove=True)
        assert outcome.action == "removed", outcome
        assert not manager.pem_path(spec.name).exists()
    assert [serial for serial, _, _ in rig.ca.revoked] == [old.serial]
