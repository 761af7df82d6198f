"""The test helper `running_sidecar` itself: whatever a test does in its block, the `run`
process is stopped and reaped, and a failure carries the process's log. A sidecar that waits
for a CA bundle that never comes needs no peer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import Sidecar, Wait, logged, running_sidecar, waiting_run_args


def test_the_block_ending_stops_the_process_with_its_exit_code(tmp_path: Path) -> None:
    with running_sidecar(
        waiting_run_args(tmp_path), tmp_path / "run.log", until=logged("ca_bundle_waiting")
    ) as sidecar:
        assert sidecar.process.poll() is None
    assert sidecar.process.poll() == 0
    assert sidecar.exit_code == 0
    assert sidecar.stop() == (0, sidecar.stop_seconds)  # stopping again changes nothing


def test_a_failure_in_the_block_reaps_the_process_and_shows_its_log(tmp_path: Path) -> None:
    handle: list[Sidecar] = []
    with (
        pytest.raises(AssertionError, match="the test's own failure") as caught,
        running_sidecar(
            waiting_run_args(tmp_path), tmp_path / "run.log", until=logged("ca_bundle_waiting")
        ) as sidecar,
    ):
        handle.append(sidecar)
        raise AssertionError("the test's own failure")
    (sidecar,) = handle
    assert sidecar.process.returncode == 0  # stopped with SIGTERM, and reaped
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert str(tmp_path / "run.log") in notes
    assert "ca_bundle_waiting" in notes  # the log's lines, not only its name


def test_a_wait_that_never_holds_fails_with_the_log_and_stops_the_process(
    tmp_path: Path,
) -> None:
    never = Wait("something that never happens", lambda _: False, timeout=1.0)
    with (
        pytest.raises(AssertionError, match="timed out waiting for something") as caught,
        running_sidecar(waiting_run_args(tmp_path), tmp_path / "run.log", until=never),
    ):
        pytest.fail("the block must not run when the wait failed")
    assert str(tmp_path / "run.log") in "\n".join(getattr(caught.value, "__notes__", []))
