"""Which files count as names no longer configured (issue 16, item 1), and what ``healthcheck``
and ``status`` still read from a config file that does not load (item 4)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_settings, locate_running_sidecar
from sidecar.inventory import orphan_names


def test_only_pem_files_with_a_certificate_name_count(tmp_path: Path) -> None:
    for name in ("kept.pem", "gone.pem", "_wildcard.example.org.pem", "notes.txt", "x.pem.bak"):
        (tmp_path / name).write_text("")
    (tmp_path / ".gone.pem.a1b2c3").write_text("")  # a temporary file
    (tmp_path / ".hidden.pem").write_text("")  # a dot-file is never one of ours
    (tmp_path / "dir.pem").mkdir()
    (tmp_path / "link.pem").symlink_to(tmp_path / "kept.pem")
    (tmp_path / "bad name.pem").write_text("")  # not a certificate name
    assert orphan_names(tmp_path, ["kept"]) == ["_wildcard.example.org", "gone"]
    assert orphan_names(tmp_path / "missing", []) == []


def _args(config: Path) -> argparse.Namespace:
    return argparse.Namespace(config=str(config))


GOOD = """
[files]
state_dir = "state"   # relative to the file
[service]
health_listen = "127.0.0.1:9555"
[[certificates]]
domains = ["a.example"]
"""


@pytest.mark.parametrize(
    "broken",
    [
        GOOD.replace("[files]", "[files]\nstate_dri = 'x'"),  # valid TOML, an unknown key
        GOOD.replace('"a.example"]', '"a.example"'),  # not TOML at all
    ],
    ids=["unknown-key", "not-toml"],
)
def test_the_running_sidecar_is_found_through_a_broken_file(tmp_path: Path, broken: str) -> None:
    config = tmp_path / "cert-sidecar.toml"
    config.write_text(broken)
    with pytest.raises(ConfigError):
        load_settings(_args(config), {})
    where = locate_running_sidecar(_args(config), {})
    assert where.health_listen == ("127.0.0.1", 9555)
    assert where.state_dir == tmp_path / "state"
    # The environment still wins over the file, as for every setting.
    env = {"CERT_SIDECAR_HEALTH_LISTEN": "127.0.0.1:9777"}
    assert locate_running_sidecar(_args(config), env).health_listen == ("127.0.0.1", 9777)
