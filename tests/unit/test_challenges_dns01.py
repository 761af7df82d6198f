"""dns-01 hook solver: the exact argv, failures, timeouts; real subprocesses, no shell."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from ca_client.challenges import ChallengeSetupError, Dns01HookSolver, DnsHookError
from ca_client.challenges.dns01 import hook_argv
from ca_client.errors import AcmeError
from ca_client.models import Identifier

pytestmark = pytest.mark.anyio


def _solver(command: list[str], **options: object) -> Dns01HookSolver:
    """The hook script below reads HOOK_LOG and HOOK_MODE: a hook sees only what it is given."""
    return Dns01HookSolver(command, passthrough=("HOOK_LOG", "HOOK_MODE"), **options)  # type: ignore[arg-type]


THUMBPRINT = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTHORIZATION = f"{TOKEN}.{THUMBPRINT}"
# RFC 8555 §8.4, computed independently of the code under test.
TXT_VALUE = (
    base64.urlsafe_b64encode(hashlib.sha256(KEY_AUTHORIZATION.encode()).digest())
    .rstrip(b"=")
    .decode()
)

HOOK = """\
import json, os, sys, time
with open(os.environ["HOOK_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
mode = os.environ.get("HOOK_MODE", "ok")
if mode == "fail":
    print("adding record for", sys.argv[2])
    sys.stderr.write("first line\\nzone example.org not found\\n\\n")
    sys.exit(3)
if mode == "hang":
    time.sleep(600)
if mode == "fail-cleanup" and sys.argv[1] == "cleanup":
    sys.stderr.write("cannot delete record\\n")
    sys.exit(1)
if mode == "background":
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["HOOK_LOG"] + ".child", "w") as f:
        f.write(str(child.pid))
"""


@pytest.fixture
def hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    script = tmp_path / "hook.py"
    script.write_text(textwrap.dedent(HOOK))
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("HOOK_LOG", str(log))
    return [sys.executable, str(script)], log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_hook_argv_is_pure_and_exact() -> None:
    argv = hook_argv(
        ["/usr/bin/hook", "--zone", "x"], "present", Identifier.dns("a.example"), KEY_AUTHORIZATION
    )
    assert argv == [
        "/usr/bin/hook",
        "--zone",
        "x",
        "present",
        "_acme-challenge.a.example.",
        TXT_VALUE,
    ]
    # RFC 8555 §8.4: a wildcard is proven at the base name's record.
    wildcard = hook_argv(["h"], "cleanup", Identifier.dns("*.a.example"), KEY_AUTHORIZATION)
    assert wildcard == ["h", "cleanup", "_acme-challenge.a.example.", TXT_VALUE]


async def test_present_and_cleanup_run_the_hook_with_exact_argv(
    hook: tuple[list[str], Path],
) -> None:
    command, log = hook
    solver = _solver(command)
    assert solver.challenge_type == "dns-01"
    identifier = Identifier.dns("a.example")
    await solver.present(identifier, TOKEN, KEY_AUTHORIZATION)
    await solver.cleanup(identifier, TOKEN, KEY_AUTHORIZATION)
    assert _calls(log) == [
        ["present", "_acme-challenge.a.example.", TXT_VALUE],
        ["cleanup", "_acme-challenge.a.example.", TXT_VALUE],
    ]


async def test_arguments_are_not_interpreted_by_a_shell(
    hook: tuple[list[str], Path], tmp_path: Path
) -> None:
    command, log = hook
    marker = tmp_path / "injected"
    await _solver([*command, f"; touch {marker}"]).present(
        Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION
    )
    assert _calls(log)[0][0] == f"; touch {marker}"
    assert not marker.exists()


async def test_failing_hook_is_a_typed_error_with_status_and_stderr(
    hook: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    command, _ = hook
    monkeypatch.setenv("HOOK_MODE", "fail")
    with pytest.raises(DnsHookError) as caught:
        await _solver(command).present(Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION)
    error = caught.value
    assert isinstance(error, ChallengeSetupError)
    assert isinstance(error, AcmeError)
    assert error.returncode == 3
    assert error.hook == sys.executable
    assert error.action == "present"
    message = str(error)
    assert sys.executable in message
    assert "exit status 3" in message
    assert message.endswith("zone example.org not found")  # stderr's last non-blank line


async def test_hook_that_hangs_is_killed_at_the_timeout(
    hook: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    command, _ = hook
    monkeypatch.setenv("HOOK_MODE", "hang")
    with pytest.raises(DnsHookError, match=r"did not finish within 0\.5 s"):
        await _solver(command, timeout=0.5).present(
            Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION
        )


async def test_hook_leaving_a_background_child_does_not_block(
    hook: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    command, log = hook
    monkeypatch.setenv("HOOK_MODE", "background")
    # The child inherits the hook's stdout/stderr pipes and keeps them open for 600 s; the
    # hook itself exits 0 at once, which is what counts.
    try:
        await _solver(command, timeout=60).present(
            Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION
        )
    finally:
        child = Path(str(log) + ".child")
        if child.exists():
            os.kill(int(child.read_text()), signal.SIGKILL)


async def test_missing_hook_executable(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-hook")
    with pytest.raises(DnsHookError, match="cannot run it") as caught:
        await Dns01HookSolver([missing]).present(
            Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION
        )
    assert missing in str(caught.value)


async def test_cleanup_failure_is_only_logged(
    hook: tuple[list[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    command, log = hook
    monkeypatch.setenv("HOOK_MODE", "fail-cleanup")
    solver = _solver(command)
    with caplog.at_level(logging.WARNING, logger="ca_client.challenges.dns01"):
        await solver.cleanup(Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION)
    assert _calls(log) == [["cleanup", "_acme-challenge.a.example.", TXT_VALUE]]
    assert any("cannot delete record" in record.getMessage() for record in caplog.records)


async def test_propagation_delay_after_present(hook: tuple[list[str], Path]) -> None:
    command, _ = hook
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    solver = _solver(command, propagation_delay=7.5, sleep=fake_sleep)
    await solver.present(Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION)
    await solver.cleanup(Identifier.dns("a.example"), TOKEN, KEY_AUTHORIZATION)
    assert slept == [7.5]


def test_empty_command_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        Dns01HookSolver([])
