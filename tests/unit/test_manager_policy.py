"""The manager's per-attempt deadline: a hanging CA must not use up the remaining validity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca_client.key_types import KeyType
from sidecar.config import CertificateSpec
from sidecar.inventory import CertView
from sidecar.manager import MIN_ORDER_TIMEOUT, ORDER_TIMEOUT, order_timeout
from sidecar.pem import CertFacts
from sidecar.storage import CertMeta

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SPEC = CertificateSpec("a.example", ("a.example",), KeyType.EC_P256, "http-01")


def _view(left: timedelta | None, *, placeholder: bool = False) -> CertView:
    facts = None
    if left is not None:
        facts = CertFacts(
            serial_hex="01",
            serial=1,
            not_before=NOW - timedelta(hours=1),
            not_after=NOW + left,
            names=("a.example",),
            issuer="CN=x",
            is_placeholder=placeholder,
            key_type="ec-p256",
        )
    return CertView(SPEC, Path("/x.pem"), facts, None, True, CertMeta(), None, None)


@pytest.mark.parametrize(
    ("left", "placeholder", "expected"),
    [
        (None, False, ORDER_TIMEOUT),  # nothing deployed: the full time
        (timedelta(hours=20), False, ORDER_TIMEOUT),  # plenty left: capped at the maximum
        (timedelta(seconds=400), False, 100.0),  # a quarter of what is left
        (timedelta(seconds=45), False, MIN_ORDER_TIMEOUT),  # never below the floor
        (timedelta(seconds=-5), False, ORDER_TIMEOUT),  # expired: nothing left to protect
        (timedelta(seconds=45), True, ORDER_TIMEOUT),  # a placeholder protects nothing
    ],
)
def test_order_timeout(left: timedelta | None, placeholder: bool, expected: float) -> None:
    assert order_timeout(_view(left, placeholder=placeholder), NOW) == expected
