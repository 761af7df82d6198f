"""How `Inventory.inspect` judges a deployed combined PEM: the read that `run`, `status`,
`/readyz` and `/metrics` all go through, on real files. These took over from the tests of
`policy.due_reason_for_pem`, which was never what ran (and called a key that does not match
"key mismatch" where the running read, like HAProxy, finds the file unusable)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme
from structlog.testing import capture_logs

from ca_client.key_types import KeyType
from sidecar import pem, storage
from sidecar.config import CertificateSpec
from sidecar.inventory import CertView, Inventory
from sidecar.placeholder import make_placeholder
from sidecar.policy import DueReason

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LIFETIME = timedelta(hours=24, minutes=1)
WANTED = ("a.example", "b.example")
SPEC = CertificateSpec("a.example", WANTED, KeyType.EC_P256, "http-01")


def _combined(names: tuple[str, ...], *, lifetime: timedelta) -> bytes:
    leaf = trustme.CA().issue_cert(*names, not_before=T0, not_after=T0 + lifetime)
    blobs = [b.bytes() for b in leaf.cert_chain_pems]
    return pem.combined_pem(blobs[0], blobs[1:], leaf.private_key_pem.bytes())


class _Certs:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "certs"
        self.dir.mkdir()
        self.inventory = Inventory(
            storage.StateStore(tmp_path / "state"), self.dir, renew_at=0.66, now=lambda: T0
        )

    def deploy(self, data: bytes) -> None:
        """Replaced by rename, as the manager does (the parse cache relies on it)."""
        temporary = self.dir / ".a.example.pem.tmp"
        temporary.write_bytes(data)
        temporary.rename(self.dir / "a.example.pem")

    def inspect(self, at: datetime = T0) -> CertView:
        return self.inventory.inspect(SPEC, at)


def test_inspect_judges_the_deployed_file(tmp_path: Path) -> None:
    certs = _Certs(tmp_path)
    view = certs.inspect()
    assert (view.due, view.facts, view.unreadable) == (DueReason.MISSING, None, None)

    good = _combined(WANTED, lifetime=LIFETIME)
    certs.deploy(good)
    view = certs.inspect(T0 + timedelta(minutes=1))
    assert view.due is None and view.is_real
    assert view.facts is not None and view.facts.names == WANTED
    assert view.next_renewal is not None and view.next_renewal > T0 + timedelta(minutes=1)
    assert certs.inspect(T0 + LIFETIME * 0.7).due == DueReason.SCHEDULED
    assert certs.inspect(T0 + LIFETIME).due == DueReason.EXPIRED

    certs.deploy(_combined(("a.example",), lifetime=LIFETIME))
    assert certs.inspect().due == DueReason.NAMES_CHANGED

    cert_pem, key_pem = make_placeholder("a.example", WANTED, now=T0)
    certs.deploy(pem.combined_pem(cert_pem, [], key_pem))
    view = certs.inspect()
    assert view.due == DueReason.PLACEHOLDER and not view.is_real


def test_a_file_that_does_not_parse_is_unreadable_and_says_why(tmp_path: Path) -> None:
    certs = _Certs(tmp_path)
    good = _combined(WANTED, lifetime=LIFETIME)
    for data, why in (
        (b"garbage", "outside the PEM blocks"),
        (good[: len(good) // 2], ""),
        # HAProxy would refuse a key that is not the certificate's; so does the read.
        (
            good.split(b"-----BEGIN EC PRIVATE KEY-----")[0]
            + _combined(WANTED, lifetime=LIFETIME).split(b"-----END CERTIFICATE-----\n")[-1],
            "does not match",
        ),
    ):
        certs.deploy(data)
        view = certs.inspect()
        assert view.due == DueReason.UNREADABLE and view.facts is None and not view.is_real
        assert view.unreadable is not None and why in view.unreadable
        assert str(certs.dir / "a.example.pem") in view.unreadable


def test_a_meta_json_that_cannot_be_read_loses_the_retry_state_not_the_look(
    tmp_path: Path,
) -> None:
    # An I/O error reading meta.json (here a directory in its place, EISDIR) used to raise out
    # of inspect and fail `status` for every certificate (docs/MUTATION.md, finding 3).
    certs = _Certs(tmp_path)
    certs.deploy(_combined(WANTED, lifetime=LIFETIME))
    meta = certs.inventory.store.cert_dir(SPEC.name) / "meta.json"
    meta.mkdir(parents=True)
    with capture_logs() as logs:
        view = certs.inspect(T0 + timedelta(minutes=1))
    assert view.meta == storage.CertMeta()
    assert view.due is None and view.is_real
    (entry,) = [e for e in logs if e["event"] == "cert_meta_unreadable"]
    assert entry["cert"] == SPEC.name
    assert entry["error"] == f"cannot read {meta}: Is a directory"
