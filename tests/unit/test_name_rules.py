"""One rule per fact about names: what a certificate may be called (domains.py owns it, and the
settings, the revoke command and the state store all ask it), and how two names compare (the
deploy check in pem.py and the renewal decision in policy.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar import pem, policy
from sidecar.cli import build_parser
from sidecar.config import load_settings
from sidecar.domains import MAX_CERT_NAME, comparable_name
from sidecar.errors import ConfigError
from sidecar.storage import StateStore

# (name, allowed): CONTRACT.md "Files": [A-Za-z0-9._-]+; dot-files are the sidecar's temporary
# files; file names are limited to 255 bytes and the longest suffix is ".lock".
NAMES = [
    ("a.example", True),
    ("_wildcard.example.org", True),
    ("A-b_c.1", True),
    ("x" * MAX_CERT_NAME, True),
    ("x" * (MAX_CERT_NAME + 1), False),
    (".hidden", False),
    (".", False),
    ("..", False),
    ("a/b", False),
    ("../etc", False),
    ("a b", False),
    ("*.example", False),
    ("é.example", False),
    ("a:b", False),
]


def _settings_accept(name: str, tmp_path: Path) -> bool:
    config = tmp_path / "sidecar.toml"
    config.write_text(f'[[certificates]]\nname = "{name}"\ndomains = ["a.example"]\n')
    args = build_parser().parse_args(["check-config", "--config", str(config)])
    try:
        load_settings(args, {})
    except ConfigError as exc:
        assert exc.setting.startswith("[[certificates]] #1 name"), exc
        return False
    return True


def _store_accepts(name: str, store: StateStore) -> bool:
    try:
        store.cert_dir(name)
    except ValueError as exc:
        assert str(exc).startswith("invalid certificate name"), exc
        with pytest.raises(ValueError, match="invalid certificate name"):
            store.lock_path(name)
        return False
    store.lock_path(name)
    return True


@pytest.mark.parametrize(("name", "allowed"), NAMES)
def test_the_settings_and_the_state_store_allow_the_same_names(
    name: str, allowed: bool, tmp_path: Path
) -> None:
    store = StateStore(tmp_path / "state")
    assert _settings_accept(name, tmp_path) is allowed
    assert _store_accepts(name, store) is allowed


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("A.Example.", "a.example"),
        ("2001:DB8:0::1", "2001:db8::1"),
        (" a.example ", "a.example"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_names_compare_alike_for_the_deploy_check_and_the_renewal_decision(
    one: str, other: str
) -> None:
    assert comparable_name(one) == comparable_name(other)
    assert pem.normalise_names([one]) == pem.normalise_names([other])
    now = datetime(2030, 1, 1, tzinfo=UTC)
    facts = pem.CertFacts(
        serial_hex="01",
        serial=1,
        not_before=now,
        not_after=now + timedelta(days=90),
        names=(other,),
        issuer="CN=I",
        is_placeholder=False,
        key_type="ec-p256",
    )
    assert policy.due_reason(now, facts, wanted_names=[one]) is None
    assert policy.due_reason(now, facts, wanted_names=[one, "b.example"]) == (
        policy.DueReason.NAMES_CHANGED
    )
