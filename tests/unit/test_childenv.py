"""Child processes never see the sidecar's secrets: deploy hook, reload command, dns-01 hook.

Each child is a real process running ``env`` (the program an operator reaches for when a hook
misbehaves); its output must not hold the EAB HMAC key, nor any variable outside the
allow-list, while the documented variables and the operator's passthrough names arrive.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path

import pytest

from ca_client.challenges.dns01 import Dns01HookSolver, hook_argv, hook_environment
from ca_client.childenv import child_environment
from ca_client.models import Identifier
from sidecar.deploy import DeployConfig, Deployer

pytestmark = pytest.mark.anyio

SECRET = "c2VjcmV0LWhtYWMta2V5LWZvci10ZXN0cw"
ENV = shutil.which("env") or "/usr/bin/env"


@pytest.fixture(autouse=True)
def secret_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERT_SIDECAR_EAB_HMAC_KEY", SECRET)
    monkeypatch.setenv("CERT_SIDECAR_DNS_HOOK", "/hooks/dns --token=" + SECRET)
    monkeypatch.setenv("DB_URL", "postgres://u:" + SECRET + "@db/x")
    monkeypatch.setenv("PROVIDER_TOKEN", "provider-token")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")


def _dump_env_to(path: Path) -> list[str]:
    """A command that writes what ``env`` prints to ``path`` (no shell in between)."""
    script = (
        "import subprocess, sys; "
        f"open(sys.argv[1], 'wb').write(subprocess.run([{ENV!r}], capture_output=True).stdout)"
    )
    return [sys.executable, "-c", script, str(path)]


def _parse(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def test_builder_keeps_the_allow_list_and_extra_only() -> None:
    env = child_environment({"CERT_NAME": "a"}, passthrough=["PROVIDER_TOKEN"])
    assert SECRET not in repr(env)
    assert env["CERT_NAME"] == "a"
    assert env["PROVIDER_TOKEN"] == "provider-token"
    assert env["LC_ALL"] == "C.UTF-8" and env["TZ"] == "UTC"
    assert "PATH" in env
    assert not any(name.startswith("CERT_SIDECAR_") for name in env)
    assert "DB_URL" not in env


async def test_deploy_hook_and_reload_command_never_see_the_key(tmp_path: Path) -> None:
    hook_out, reload_out = tmp_path / "hook.env", tmp_path / "reload.env"
    pem = tmp_path / "a.test.pem"
    pem.write_bytes(b"unused by mode=command")
    deployer = Deployer(
        DeployConfig.build(
            certs_dir=tmp_path,
            reload="command",
            reload_command=_dump_env_to(reload_out),
            deploy_hook=_dump_env_to(hook_out),
            hook_env=("PROVIDER_TOKEN",),
        )
    )
    result = await deployer.deploy(
        "a.test",
        pem,
        pem.read_bytes(),
        "0a",
        not_after=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        names=["a.test"],
    )
    assert result.ok, result.errors
    for out in (hook_out, reload_out):
        text = out.read_text()
        assert SECRET not in text, out.name
        env = _parse(text)
        assert "CERT_SIDECAR_EAB_HMAC_KEY" not in env
        assert env["PROVIDER_TOKEN"] == "provider-token"
        assert "PATH" in env
    hook_env = _parse(hook_out.read_text())
    assert hook_env["CERT_NAME"] == "a.test"
    assert hook_env["CERT_SERIAL"] == "0A"
    assert hook_env["CERT_PEM"] == str(pem)


async def test_dns01_hook_never_sees_the_key_and_gets_the_record_in_variables(
    tmp_path: Path,
) -> None:
    out = tmp_path / "dns.env"
    solver = Dns01HookSolver(_dump_env_to(out))
    identifier = Identifier.dns("*.a.test")
    await solver.present(identifier, "token", "token.thumb")
    text = out.read_text()
    assert SECRET not in text
    env = _parse(text)
    argv = hook_argv(solver.command, "present", identifier, "token.thumb")
    assert env["ACME_DNS_ACTION"] == "present"
    assert env["ACME_DNS_RECORD"] == argv[-2] == "_acme-challenge.a.test."
    assert env["ACME_DNS_VALUE"] == argv[-1]
    assert env["ACME_DNS_DOMAIN"] == "*.a.test"
    assert "PROVIDER_TOKEN" not in env  # not asked for


async def test_dns01_passthrough_reaches_the_hook(tmp_path: Path) -> None:
    out = tmp_path / "dns.env"
    solver = Dns01HookSolver(_dump_env_to(out), passthrough=["PROVIDER_TOKEN"])
    await solver.cleanup(Identifier.dns("a.test"), "token", "token.thumb")
    env = _parse(out.read_text())
    assert env["PROVIDER_TOKEN"] == "provider-token"
    assert env["ACME_DNS_ACTION"] == "cleanup"
    assert SECRET not in out.read_text()


def test_a_value_starting_with_a_dash_is_in_the_environment_unchanged() -> None:
    # Find a key authorization whose TXT value starts with "-" (about 1 in 64).
    for n in range(10_000):
        key_authorization = f"token{n}.thumb"
        env = hook_environment("present", Identifier.dns("a.test"), key_authorization, environ={})
        if env["ACME_DNS_VALUE"].startswith("-"):
            break
    else:
        raise AssertionError("no value starting with '-' in 10,000 tries")
    argv = hook_argv(["hook"], "present", Identifier.dns("a.test"), key_authorization)
    assert argv[-1] == env["ACME_DNS_VALUE"]
    assert set(env) == {"ACME_DNS_ACTION", "ACME_DNS_RECORD", "ACME_DNS_VALUE", "ACME_DNS_DOMAIN"}
