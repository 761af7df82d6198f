"""preflight.check_directories: certs_dir and state_dir must be writable, or creatable, directories.

The cases where the mode forbids writing need an unprivileged user (root ignores modes);
they run in tests/integration/test_bad_input.py under setpriv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sidecar.config import Settings, load_settings
from sidecar.errors import ConfigError
from sidecar.preflight import check_directories
from tests.peers.require import require


def settings_for(certs: Path, state: Path, env: dict[str, str] | None = None) -> Settings:
    args = argparse.Namespace(domains=["a.example"], certs_dir=str(certs))
    return load_settings(args, {"CERT_SIDECAR_STATE_DIR": str(state), **(env or {})})


def test_existing_directories_pass_and_the_probe_leaves_nothing(tmp_path: Path) -> None:
    certs, state = tmp_path / "certs", tmp_path / "state"
    certs.mkdir()
    state.mkdir()
    (certs / "a.example.pem").write_text("x")
    check_directories(settings_for(certs, state))
    assert sorted(p.name for p in certs.iterdir()) == ["a.example.pem"]
    assert list(state.iterdir()) == []


def test_missing_directories_that_can_be_created_pass_and_are_not_created(
    tmp_path: Path,
) -> None:
    certs, state = tmp_path / "new" / "certs", tmp_path / "state"
    check_directories(settings_for(certs, state))
    assert not certs.exists() and not (tmp_path / "new").exists() and not state.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_directory_should_be(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("")
    with pytest.raises(ConfigError) as caught:
        check_directories(settings_for(tmp_path, state))
    assert str(caught.value) == f"CERT_SIDECAR_STATE_DIR: {state} is not a directory"


def test_a_file_in_the_way_of_creating_one(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(ConfigError) as caught:
        check_directories(settings_for(blocker / "certs", tmp_path))
    assert caught.value.setting == "--certs-dir"
    assert "is not a directory" in caught.value.message


def test_a_read_only_file_system_fails_the_real_probe(tmp_path: Path) -> None:
    # /proc is mounted read-only for writes of new files even for root: os.access says yes
    # for root, and only the probe tells the truth.
    target = Path("/proc/sys")
    require(target.is_dir(), "no /proc/sys here")
    with pytest.raises(ConfigError) as caught:
        check_directories(settings_for(target, tmp_path))
    assert caught.value.setting == "--certs-dir"
    assert "not writable" in caught.value.message
