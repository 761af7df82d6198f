"""Configuration that would fail late or leak: long names, hook arguments, hook variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

from sidecar.cli import main
from sidecar.domains import MAX_CERT_NAME


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CERT_SIDECAR_"):
            monkeypatch.delenv(name)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "certs").mkdir()
    (tmp_path / "state").mkdir()
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "root.pem"))
    return tmp_path


def _flags(workdir: Path) -> list[str]:
    return [
        "--ca-bundle",
        str(workdir / "root.pem"),
        "--certs-dir",
        str(workdir / "certs"),
        "--state-dir",
        str(workdir / "state"),
    ]


def _config(workdir: Path, name: str) -> Path:
    path = workdir / "sidecar.toml"
    path.write_text(f'[[certificates]]\nname = "{name}"\ndomains = ["a.example"]\n')
    return path


@pytest.mark.parametrize("command", ["check-config", "issue", "run"])
def test_a_name_too_long_for_a_file_is_exit_2_before_any_io(
    workdir: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    config = _config(workdir, "a" * 300)
    assert main([command, "--config", str(config), *_flags(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cert-sidecar: error: [[certificates]] #1 name in ")
    assert "300 characters long" in err
    assert list((workdir / "certs").iterdir()) == []
    assert list((workdir / "state").iterdir()) == []


def test_the_longest_allowed_name_fits_every_file(workdir: Path) -> None:
    name = "n" * MAX_CERT_NAME
    config = _config(workdir, name)
    assert main(["check-config", "--config", str(config), *_flags(workdir)]) == 0
    # Every file the name becomes can be created here (NAME_MAX is 255 on Linux filesystems).
    for file_name in (f"{name}.pem", f"{name}.lock", name):
        (workdir / file_name).touch()


def test_a_derived_name_too_long_is_exit_2(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A legal 253-character DNS name: its wildcard's file name, _wildcard.<name>, is too long.
    labels = ["a" * 63, "b" * 63, "c" * 63, "d" * 61]
    wildcard = "*." + ".".join(labels)[2:]
    args = ["check-config", "--domain", wildcard, "--challenge", "dns-01", "--dns-hook", "true"]
    assert main([*args, *_flags(workdir)]) == 2
    assert "characters long" in capsys.readouterr().err


def test_check_config_masks_hook_arguments(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "s3cr3t-t0ken-value"
    args = [
        "check-config",
        "--domain",
        "a.example",
        "--deploy-hook",
        f"true --auth-token={secret}",
        "--reload",
        "command",
        "--reload-command",
        f"true https://user:{secret}@example.org/reload",
        "--dns-hook",
        f"true {secret}",
    ]
    assert main([*args, *_flags(workdir)]) == 0
    out = capsys.readouterr().out
    assert secret not in out
    assert "deploy_hook = \"true '***'\"" in out
    assert "dns_hook = \"true '***'\"" in out


def test_hook_env_refuses_the_sidecars_own_settings(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["check-config", "--domain", "a.example", "--hook-env", "CERT_SIDECAR_EAB_HMAC_KEY"]
    assert main([*args, *_flags(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cert-sidecar: error: --hook-env: CERT_SIDECAR_EAB_HMAC_KEY")


def test_hook_env_from_the_environment(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERT_SIDECAR_HOOK_ENV", "CF_API_TOKEN, HTTPS_PROXY")
    assert main(["check-config", "--domain", "a.example", *_flags(workdir)]) == 0
    assert 'hook_env = ["CF_API_TOKEN", "HTTPS_PROXY"]' in capsys.readouterr().out
