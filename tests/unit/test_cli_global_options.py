"""Settings flags before the command, as with git or docker: `cert-sidecar --config FILE run`
(issue 10: it failed with "invalid choice: 'FILE'"). After the command they win."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

from sidecar.cli import build_parser, main


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CERT_SIDECAR_"):
            monkeypatch.delenv(name)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("certs", "state", "other-certs"):
        (tmp_path / name).mkdir()
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "root.pem"))
    (tmp_path / "sidecar.toml").write_text(
        "\n".join(
            [
                "[acme]",
                f'ca_bundle = "{tmp_path / "root.pem"}"',
                "[files]",
                f'certs_dir = "{tmp_path / "certs"}"',
                f'state_dir = "{tmp_path / "state"}"',
                "[[certificates]]",
                'domains = ["a.example"]',
                "",
            ]
        )
    )
    return tmp_path


def _check_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_config_before_the_command_is_the_same_as_after(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(workdir / "sidecar.toml")
    after = _check_config(["check-config", "--config", config], capsys)
    before = _check_config(["--config", config, "check-config"], capsys)
    assert before == after
    assert 'domains = ["a.example"]' in before


def test_flags_on_both_sides_combine_and_the_later_one_wins(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(workdir / "sidecar.toml")
    out = _check_config(
        [
            "--config",
            config,
            "--renew-at",
            "0.5",
            "--certs-dir",
            str(workdir / "certs"),
            "--domain",
            "b.example",
            "check-config",
            "--certs-dir",
            str(workdir / "other-certs"),
            "--domain",
            "c.example",
        ],
        capsys,
    )
    assert "renew_at = 0.5" in out  # only before: kept, not reset by the command's default
    assert str(workdir / "other-certs") in out
    assert f'"{workdir / "certs"}"' not in out
    assert 'domains = ["c.example"]' in out  # a repeated flag: the later list, whole
    assert "b.example" not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "f.toml", "run"],
        ["run", "--config", "f.toml"],
        ["--config", "other.toml", "run", "--config", "f.toml"],
    ],
)
def test_the_parser_keeps_a_flag_given_on_either_side(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.command, args.config) == ("run", "f.toml")


def test_a_flag_given_nowhere_is_still_absent() -> None:
    args = build_parser().parse_args(["renew", "--force"])
    assert args.force is True
    # load_settings falls back to the environment and the file for None (or no attribute).
    assert getattr(args, "config", None) is None
    assert getattr(args, "renew_at", None) is None
    assert getattr(args, "system_trust", None) is None


def test_a_bool_flag_before_the_command_is_overridden_after_it() -> None:
    assert build_parser().parse_args(["--system-trust", "run"]).system_trust is True
    args = build_parser().parse_args(["--system-trust", "run", "--no-system-trust"])
    assert args.system_trust is False


def test_top_level_help_stays_short_and_says_where_flags_go(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--certs-dir" not in out  # each command's --help lists them
    assert "before or after the command" in " ".join(out.split())
