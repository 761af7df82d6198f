"""Shared test set-up: the real peers' fixtures live in tests/peers/ and are loaded here.

Under CI (tests/peers/require.py, ``in_ci``) a session that skipped anything fails: a skip
that no test helper turned into a failure (a ``skipif`` mark, an ``importorskip``, a plugin)
must not hide a test from a green run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from sidecar.logs import NOISY_LOGGERS
from tests.peers.require import in_ci

pytest_plugins = [
    "tests.peers.loopback",
    "tests.peers.stepca",
    "tests.peers.pebble",
    "tests.peers.haproxy",
]


# The tiers in the order they run: the fast, self-contained ones first (a broken unit shows in
# minutes), the compose and quadlet tests last, so that the images scripts/test builds in the
# background meanwhile (scripts/build-test-images.sh) are ready when they start. Within a tier,
# files and tests keep pytest's order (the quadlet steps depend on theirs).
TIER_ORDER = ("unit", "protocol", "peers", "integration", "compose", "quadlet")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent

    def tier(item: pytest.Item) -> int:
        parts = item.path.relative_to(here).parts if item.path.is_relative_to(here) else ()
        return TIER_ORDER.index(parts[0]) if parts and parts[0] in TIER_ORDER else 0

    items.sort(key=tier)  # stable: keeps the order within a tier


@pytest.fixture(autouse=True)
def _no_logging_left_behind() -> Iterator[None]:
    """Undo what `sidecar.logs.configure_logging`, run in-process by the CLI and logging tests,
    changes for the whole process: its root handler, the root level, the noisy libraries'
    levels and structlog's configuration. Its handler demotes ca_client's records to debug
    level, so one left behind made a later test see the library's facts at debug instead of
    info (seen once the unit tier ran before the integration tier)."""
    root = logging.getLogger()
    handlers, level = set(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    config = structlog.get_config()
    yield
    for handler in list(root.handlers):
        if handler not in handlers and handler.get_name() == "cert-sidecar":
            root.removeHandler(handler)
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)
    structlog.configure(**config)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SkipsFailUnderCI:
    """Collects every skip of the session and turns a passing exit status into a failure."""

    def __init__(self) -> None:
        self.skips: list[tuple[str, str]] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        # An xfail is reported as skipped too, with `wasxfail`: it is not a skip.
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.skips.append((report.nodeid, reason))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skips and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.skips:
            return
        terminalreporter.write_sep(
            "=", f"CI is set: {len(self.skips)} skipped, which fails the run", red=True
        )
        for nodeid, reason in self.skips:
            terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    if in_ci():
        config.pluginmanager.register(SkipsFailUnderCI(), "cert-sidecar-skips-fail-under-ci")
