"""The command line: parsing, dispatch, and the exception -> exit code mapping."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from sidecar import __version__
from sidecar.cli import REVOCATION_REASONS, main
from sidecar.errors import ConfigError, OperationError

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["run", "issue", "renew", "status", "revoke", "healthcheck", "check-config"]


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


def base_flags(workdir: Path) -> list[str]:
    return [
        "--domain",
        "a.example,b.example",
        "--ca-bundle",
        str(workdir / "root.pem"),
        "--certs-dir",
        str(workdir / "certs"),
        "--state-dir",
        str(workdir / "state"),
    ]


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.result: object = 0
        self.raises: BaseException | None = None

    def function(self, name: str, *, coroutine: bool) -> Any:
        def record(*args: Any, **kwargs: Any) -> object:
            self.seen.append((name, args, kwargs))
            if self.raises is not None:
                raise self.raises
            return self.result

        if not coroutine:
            return record

        async def run(*args: Any, **kwargs: Any) -> object:
            return record(*args, **kwargs)

        return run


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Stand-ins for the command modules the other engineers write (dispatch is tested here;
    the commands themselves are tested in their own modules)."""
    recorder = Calls()
    modules = {
        "sidecar.oneshot": {"cmd_issue": True, "cmd_renew": True, "cmd_revoke": True},
        "sidecar.status": {"cmd_status": False},
        "sidecar.service": {"cmd_run": True},
        "sidecar.health": {"cmd_healthcheck": False},
    }
    for module_name, functions in modules.items():
        module = types.ModuleType(module_name)
        for function_name, is_async in functions.items():
            setattr(module, function_name, recorder.function(function_name, coroutine=is_async))
        monkeypatch.setitem(sys.modules, module_name, module)
    yield recorder


# --- parsing --------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cert-sidecar {__version__}"


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_for_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cert-sidecar")
    if command in (["status"], ["healthcheck"]):
        # They list the few they use (issue 16, item 9), and accept every other one.
        assert "Every other setting's flag is accepted too" in out
        assert "--config" in out and "--reload-signal" not in out
    elif command:
        # Every setting flag on every other command.
        for flag in (
            "--directory",
            "--ca-bundle",
            "--domain",
            "--pem-mode",
            "--haproxy-socket",
            "--reload-signal",
            "--placeholder",
            "--log-level",
            "--config",
        ):
            assert flag in out, (command, flag)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["issue", "--nope"],
        ["revoke"],
        ["status", "--force"],
        ["revoke", "a", "--reason", "because"],
        ["issue", "--system-trust=maybe"],
    ],
)
def test_usage_errors_exit_2_with_a_short_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert len(err.strip().splitlines()) == 2  # the error and "Try ... --help"
    assert "Traceback" not in err


# --- dispatch -------------------------------------------------------------------------------


def test_dispatch_passes_the_options(workdir: Path, calls: Calls) -> None:
    flags = base_flags(workdir)
    assert main(["issue", *flags]) == 0
    assert main(["issue", "--force", *flags]) == 0
    assert main(["renew", *flags, "--dry-run"]) == 0
    assert main(["renew", "--force", *flags]) == 0
    assert main(["status", "--json", *flags]) == 0
    assert main(["revoke", "a.example", "--reason", "key-compromise", "--remove", *flags]) == 0
    assert main(["revoke", "a.example", *flags]) == 0
    assert main(["run", *flags]) == 0
    assert main(["healthcheck", *flags]) == 0
    summary = [(name, args[1:], kwargs) for name, args, kwargs in calls.seen]
    assert summary == [
        ("cmd_issue", (), {"force": False}),
        ("cmd_issue", (), {"force": True}),
        ("cmd_renew", (), {"force": False, "dry_run": True}),
        ("cmd_renew", (), {"force": True, "dry_run": False}),
        ("cmd_status", (), {"as_json": True}),
        ("cmd_revoke", ("a.example",), {"reason": "keyCompromise", "remove": True}),
        ("cmd_revoke", ("a.example",), {"reason": None, "remove": False}),
        ("cmd_run", (), {"reload_settings": calls.seen[7][2].get("reload_settings")}),
        ("cmd_healthcheck", (), {}),
    ]
    # run gets a way to re-read the settings when the config file changes.
    reload_settings = calls.seen[7][2]["reload_settings"]
    assert reload_settings() == calls.seen[7][1][0]
    settings = calls.seen[0][1][0]
    assert [c.domains for c in settings.certificates] == [("a.example", "b.example")]


def test_revocation_reasons_are_rfc5280_codes() -> None:
    assert dict(REVOCATION_REASONS) == {
        "unspecified": 0,
        "keyCompromise": 1,
        "affiliationChanged": 3,
        "superseded": 4,
        "cessationOfOperation": 5,
    }


@pytest.mark.parametrize("result", [0, 1, 3])
def test_the_command_result_is_the_exit_code(workdir: Path, calls: Calls, result: int) -> None:
    calls.result = result
    assert main(["issue", *base_flags(workdir)]) == result
    assert main(["status", *base_flags(workdir)]) == result


def test_run_does_not_need_the_bundle_but_issue_does(
    workdir: Path, calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [*base_flags(workdir), "--ca-bundle", str(workdir / "not-yet.pem")]
    assert main(["run", *flags]) == 0
    assert main(["status", *flags]) == 0
    assert main(["healthcheck", *flags]) == 0
    assert main(["issue", *flags]) == 2
    assert capsys.readouterr().err == (
        f"cert-sidecar: error: --ca-bundle: {workdir / 'not-yet.pem'} does not exist\n"
    )
    assert [name for name, _, _ in calls.seen] == ["cmd_run", "cmd_status", "cmd_healthcheck"]


def test_revoke_name_must_be_a_certificate_name(
    workdir: Path, calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["revoke", "../etc/passwd", *base_flags(workdir)]) == 2
    assert capsys.readouterr().err.startswith("cert-sidecar: error: NAME: certificate name")
    assert calls.seen == []


# --- errors -> exit codes -------------------------------------------------------------------


def _acme_error() -> BaseException:
    from ca_client.errors import CAUnreachable

    return CAUnreachable("cannot reach https://step-ca:9000/acme/acme/directory: refused")


@pytest.mark.parametrize(
    ("exception", "code", "message"),
    [
        (ConfigError("--thing", "is bad"), 2, "cert-sidecar: error: --thing: is bad"),
        (
            OperationError("HAProxy refused\nthe update"),
            1,
            "cert-sidecar: error: HAProxy refused the update",
        ),
        (
            _acme_error(),
            1,
            "cert-sidecar: error: cannot reach https://step-ca:9000/acme/acme/directory: refused",
        ),
        (RuntimeError("surprise"), 1, "cert-sidecar: error: RuntimeError: surprise"),
        (ValueError(), 1, "cert-sidecar: error: ValueError"),
        (KeyboardInterrupt(), 130, "cert-sidecar: interrupted"),
        (
            ExceptionGroup("unhandled errors in a TaskGroup", [OperationError("deploy failed")]),
            1,
            "cert-sidecar: error: deploy failed",
        ),
        (
            BaseExceptionGroup("g", [ExceptionGroup("h", [ConfigError("--x", "bad")])]),
            2,
            "cert-sidecar: error: --x: bad",
        ),
        (
            BaseExceptionGroup("g", [RuntimeError("a"), KeyboardInterrupt()]),
            130,
            "cert-sidecar: interrupted",
        ),
    ],
)
def test_exceptions_become_one_line_and_an_exit_code(
    workdir: Path,
    calls: Calls,
    capsys: pytest.CaptureFixture[str],
    exception: BaseException,
    code: int,
    message: str,
) -> None:
    calls.raises = exception
    assert main(["issue", *base_flags(workdir)]) == code
    err = capsys.readouterr().err
    assert err == message + "\n"


def test_traceback_only_at_debug(
    workdir: Path, calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    calls.raises = RuntimeError("surprise")
    assert main(["issue", *base_flags(workdir), "--log-level", "debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("cert-sidecar: error: RuntimeError: surprise")


def test_private_keys_never_reach_the_error_line(
    workdir: Path, calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    key = trustme.CA().issue_cert("a.example").private_key_pem.bytes().decode()
    calls.raises = OperationError("could not parse " + key)
    assert main(["issue", *base_flags(workdir)]) == 1
    err = capsys.readouterr().err
    assert err == "cert-sidecar: error: could not parse [redacted]\n"


# --- check-config ---------------------------------------------------------------------------


def test_check_config_prints_the_effective_settings(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERT_SIDECAR_EAB_KID", "kid")
    monkeypatch.setenv("CERT_SIDECAR_EAB_HMAC_KEY", "c2VjcmV0LWtleS1ieXRlcw")
    assert main(["check-config", *base_flags(workdir)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert 'domains = ["a.example", "b.example"]' in captured.out
    assert "eab_hmac_key = ***" in captured.out
    assert "c2VjcmV0" not in captured.out


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--pem-mode", "0666"], {}, "--pem-mode: mode 0666 is refused"),
        ([], {"CERT_SIDECAR_RENEW_AT": "2"}, "CERT_SIDECAR_RENEW_AT: 2.0 must be between 0 and 1"),
        (["--key-type", "dsa"], {}, "--key-type: 'dsa' is not one of"),
    ],
)
def test_check_config_errors(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config", *base_flags(workdir), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("cert-sidecar: error: " + message)
    assert captured.err.count("\n") == 1


# --- as a process -----------------------------------------------------------------------------


def run_process(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *argv],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_process_config_error_is_one_line_and_exit_2(workdir: Path) -> None:
    result = run_process(["issue", *base_flags(workdir)], {"CERT_SIDECAR_PEM_MODE": "0777"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("cert-sidecar: error: CERT_SIDECAR_PEM_MODE: mode 0777")
    assert "Traceback" not in result.stderr


def test_process_usage_error_and_help(workdir: Path) -> None:
    result = run_process(["issue", "--bogus"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_process(["revoke", "--help"])
    assert result.returncode == 0 and "--reason" in result.stdout and "--remove" in result.stdout


def test_process_check_config_imports_no_network_or_logging_stack(workdir: Path) -> None:
    code = (
        "import sys\n"
        "from sidecar.cli import main\n"
        f"rc = main(['check-config', *{base_flags(workdir)!r}])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'httpx', 'httpcore', "
        "'structlog', 'anyio', 'asyncio', 'apscheduler', 'watchfiles'})\n"
        "print(rc, heavy, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert result.stderr.strip().splitlines()[-1] == "0 []"
    code = "import sys\nfrom sidecar.cli import main\nmain(['--help'])\nprint(sorted(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    loaded = result.stdout.strip().splitlines()[-1]
    for heavy in ("'httpx'", "'cryptography'", "'structlog'", "'ca_client.keys'"):
        assert heavy not in loaded
