"""Pure parts of sidecar.deploy: configuration spellings, paths, SNI, result summaries."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from sidecar.cli import build_parser
from sidecar.config import Settings, load_settings
from sidecar.control import outcome_to_json
from sidecar.deploy import (
    DeployConfig,
    Deployer,
    DeployResult,
    HookOutcome,
    NameCheck,
    SocketOutcome,
    VerifyOutcome,
    deployer_from_settings,
    sni_for,
)
from sidecar.errors import ConfigError
from sidecar.haproxy import HAProxyAddress
from sidecar.outcome import Action, Outcome


def test_mode_defaults_follow_the_contract() -> None:
    assert DeployConfig().mode == "none"
    with_socket = DeployConfig.build(sockets=["unix:/run/admin.sock"])
    assert with_socket.mode == "runtime-api"
    assert DeployConfig.build(sockets=["unix:/a"], reload="signal").mode == "signal"
    with pytest.raises(ValueError, match="unknown reload mode"):
        _ = DeployConfig(reload="restart").mode


def test_build_accepts_user_spellings() -> None:
    config = DeployConfig.build(
        sockets=["master:unix:/m.sock", HAProxyAddress("tcp", host="h", port=1)],
        reload_command="systemctl reload 'haproxy x'",
        deploy_hook=["/bin/hook", "--flag"],
        reload_signal="usr2",
        verify_address="[::1]:8443",
    )
    assert config.sockets[0] == HAProxyAddress("unix", path="/m.sock", master=True)
    assert config.reload_command == ("systemctl", "reload", "haproxy x")
    assert config.deploy_hook == ("/bin/hook", "--flag")
    assert config.reload_signal is signal.SIGUSR2
    assert config.verify_address == ("::1", 8443)
    assert DeployConfig.build(reload_signal="SIGHUP").reload_signal is signal.SIGHUP
    assert DeployConfig.build(reload_signal=12).reload_signal is signal.SIGUSR2
    with pytest.raises(ValueError, match="HOST:PORT"):
        DeployConfig.build(verify_address="nohost")
    with pytest.raises(ValueError, match="empty command"):
        DeployConfig.build(reload_command="")


def _settings(flags: list[str]) -> Settings:
    args = build_parser().parse_args(["check-config", "--domain", "a.example", *flags])
    return load_settings(args, {})


def test_from_settings_takes_the_parsed_values_as_they_are(tmp_path: Path) -> None:
    """The deployer takes what config.py parsed: one parser for each spelling, no second one."""
    settings = _settings(
        [
            "--haproxy-socket", "unix:/s",
            "--certs-dir", str(tmp_path / "certs"),
            "--haproxy-certs-dir", "/etc/haproxy/certs",
            "--reload-command", "true -USR2 'a b'",
            "--reload-signal", "hup",
            "--reload-pid-file", str(tmp_path / "pid"),
            "--verify-address", "[::1]:8443",
            "--deploy-hook", "true --x",
            "--hook-env", "TOKEN",
        ]
    )  # fmt: skip
    config = deployer_from_settings(settings).config
    assert config == DeployConfig(
        sockets=(HAProxyAddress("unix", path="/s"),),
        certs_dir=tmp_path / "certs",
        haproxy_certs_dir=Path("/etc/haproxy/certs"),
        reload="runtime-api",
        reload_command=("true", "-USR2", "a b"),
        reload_signal=signal.SIGHUP,
        reload_pid_file=tmp_path / "pid",
        verify_address=("::1", 8443),
        deploy_hook=("true", "--x"),
        hook_env=("TOKEN",),
    )
    deployer = deployer_from_settings(settings)
    assert deployer.mode == "runtime-api" and deployer.crt_list == "/etc/haproxy/certs"
    assert [str(r.address) for r in deployer.runtimes] == ["unix:/s"]
    # The default mode is config.py's, and the deployer agrees with it.
    assert deployer_from_settings(_settings([])).mode == "none"
    assert DeployConfig().mode == _settings([]).haproxy.reload


def test_build_spellings_are_the_settings_spellings() -> None:
    """DeployConfig.build parses with config.py's functions: the same words are refused."""
    for text in ("h:x", "h:0", "::1:80", "nohost"):
        with pytest.raises(ValueError) as from_build:
            DeployConfig.build(verify_address=text)
        with pytest.raises(ConfigError) as from_settings:
            _settings(["--verify-address", text])
        assert str(from_build.value) == from_settings.value.message
    with pytest.raises(ValueError) as bad_signal:
        DeployConfig.build(reload_signal="SIGNOPE")
    assert str(bad_signal.value) == "'SIGNOPE' is not a signal name like SIGUSR2"


def test_paths_as_haproxy_sees_them() -> None:
    deployer = Deployer(
        DeployConfig(certs_dir=Path("/srv/certs"), haproxy_certs_dir=Path("/etc/haproxy/certs"))
    )
    assert (
        deployer.haproxy_path(Path("/srv/certs/a.example.pem"))
        == "/etc/haproxy/certs/a.example.pem"
    )
    assert deployer.haproxy_path("a.example") == "/etc/haproxy/certs/a.example.pem"
    assert deployer.haproxy_path("_wildcard.x.org") == "/etc/haproxy/certs/_wildcard.x.org.pem"
    # A file outside certs_dir keeps only its name: HAProxy only loads the one directory.
    assert deployer.haproxy_path(Path("/elsewhere/b.pem")) == "/etc/haproxy/certs/b.pem"
    same = Deployer(DeployConfig(certs_dir=Path("/c")))
    assert same.crt_list == "/c" and same.haproxy_path("n") == "/c/n.pem"


@pytest.mark.parametrize(
    ("name", "sni"),
    [
        ("a.example", "a.example"),
        ("*.example.org", "cert-sidecar-verify.example.org"),
        ("127.0.0.1", None),
        ("::1", None),
        ("[::1]", None),
    ],
)
def test_sni_for(name: str, sni: str | None) -> None:
    assert sni_for(name) == sni


def test_result_summary_and_json() -> None:
    failed = DeployResult(
        name="a",
        serial="0A",
        mode="runtime-api",
        ok=False,
        sockets=(SocketOutcome("unix:/s", False, "failed", attempts=3, error="refused"),),
        errors=("unix:/s: refused",),
    )
    assert failed.summary() == "runtime-api: unix:/s: refused"
    # The control socket's answer carries the deployer's whole report, as it always has.
    data = outcome_to_json(Outcome("a", Action.ISSUED, True, deploy=failed))["deploy"]
    assert data == {
        "name": "a",
        "serial": "0A",
        "mode": "runtime-api",
        "ok": False,
        "sockets": (
            {
                "address": "unix:/s",
                "ok": False,
                "action": "failed",
                "serial": None,
                "attempts": 3,
                "error": "refused",
                "reachable": True,
            },
        ),
        "fallback": None,
        "fallback_ok": None,
        "verification": None,
        "hook": None,
        "errors": ("unix:/s: refused",),
        "duration": 0.0,
        "verified": None,
        "error": "unix:/s: refused",
    }
    json.dumps(data)  # it goes over the socket as JSON

    ok = DeployResult(
        name="a",
        serial="0A",
        mode="runtime-api",
        ok=True,
        fallback="command",
        fallback_ok=True,
        verification=VerifyOutcome("h:1", True, (NameCheck("a", "a", True, "0A"),)),
        hook=HookOutcome(True, 0),
    )
    assert ok.summary() == "runtime-api: serial 0A deployed (after falling back to command)"
    assert ok.verified is True
    data = outcome_to_json(Outcome("a", Action.ISSUED, True, deploy=ok))["deploy"]
    assert (data["verified"], data["error"], data["fallback"]) == (True, None, "command")
    assert data["verification"] == {
        "address": "h:1",
        "ok": True,
        "checks": ({"name": "a", "sni": "a", "ok": True, "served_serial": "0A", "error": None},),
        "skipped": (),
    }
    assert data["hook"] == {"ok": True, "returncode": 0, "error": None}
