"""``status --help`` lists the settings ``status`` uses, not all thirty, and ``check-config``
says where each value came from (issue 16, item 9)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

from sidecar.cli import build_parser, main


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return capsys.readouterr().out


def test_status_help_lists_only_what_status_uses(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("status", capsys)
    for flag in ("--config", "--certs-dir", "--state-dir", "--haproxy-socket", "--json"):
        assert flag in text
    for flag in ("--dns-hook", "--key-type", "--eab-kid", "--reload-command", "--http-listen"):
        assert flag not in text
    assert "Every other setting's flag is accepted too (see 'cert-sidecar run --help')" in text
    # Hidden is not refused: one environment, one flag list, for every command.
    args = build_parser().parse_args(["status", "--dns-hook", "/bin/true"])
    assert args.dns_hook == "/bin/true"


def test_healthcheck_help_lists_its_listener(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("healthcheck", capsys)
    assert "--health-listen" in text and "--certs-dir" not in text


def test_run_help_still_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("run", capsys)
    for flag in ("--dns-hook", "--key-type", "--reload-command", "--health-listen"):
        assert flag in text


def test_check_config_says_where_each_value_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "root.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    config = tmp_path / "cert-sidecar.toml"
    config.write_text(
        '[acme]\nemail = "ops@example.org"\n[[certificates]]\ndomains = ["a.example"]\n'
    )
    for name in [n for n in os.environ if n.startswith("CERT_SIDECAR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CERT_SIDECAR_KEY_TYPE", "ec-p384")
    argv = [
        "check-config",
        "--config",
        str(config),
        "--ca-bundle",
        str(bundle),
        "--certs-dir",
        str(tmp_path / "certs"),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f'ca_bundle = "{bundle}"  # flag --ca-bundle' in lines
    assert 'key_type = "ec-p384"  # environment CERT_SIDECAR_KEY_TYPE' in lines
    assert f'email = "ops@example.org"  # file {config}' in lines
    assert "renew_at = 0.66  # default" in lines
    assert f'certs_dir = "{tmp_path / "certs"}"  # default: --certs-dir' in lines
    assert f"# certificates from file {config}" in lines
