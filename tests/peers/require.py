"""What a test needs from the machine, and what happens when it is missing.

On a developer's machine a missing peer or privilege skips the test with the reason. Under CI
(the ``CI`` environment variable set, as ``.ci/run`` does) it fails instead: a green CI run
must mean every test ran. tests/conftest.py backs this up by failing a CI session that
reports any skip at all, whatever called ``pytest.skip``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import pytest

# The unprivileged identity the probe below runs as: "other" to every root-owned path, like
# the uids the tests drop to (65534, and the image's 10001).
NOBODY = 65534


def in_ci() -> bool:
    """True when the CI environment variable is set to anything but an explicit no."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def require(condition: object, why: str) -> None:
    """Carry on when ``condition`` holds; otherwise skip with ``why``, or fail under CI."""
    if condition:
        return
    if in_ci():
        pytest.fail(
            f"{why} (CI is set: a missing peer or privilege is a failure, not a skip)",
            pytrace=False,
        )
    pytest.skip(why)


def require_root_and_setpriv() -> str:
    """The path of setpriv, for running a child as an unprivileged user; needs root."""
    setpriv = shutil.which("setpriv")
    require(
        os.geteuid() == 0 and setpriv is not None,
        "needs root and setpriv (util-linux) to run a child as an unprivileged user",
    )
    assert setpriv is not None
    return setpriv


@functools.cache
def _unprivileged_interpreter() -> str | None:
    """None when an unprivileged user runs this very interpreter; else what went wrong."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        return "needs root and setpriv (util-linux)"
    probe = "import sys; print(sys.version); print(sys.base_prefix)"
    result = subprocess.run(
        [
            setpriv,
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd="/",
    )
    wanted = f"{sys.version}\n{sys.base_prefix}\n"
    if result.returncode == 0 and result.stdout == wanted:
        return None
    # An interpreter under a 0700 home (pyenv in /root) is out of the user's reach: the loader
    # cannot open its libpython, or, for 3.11, silently picks Debian's 3.11 and stdlib
    # instead, so the child would not run the Python under test.
    seen = (result.stdout or result.stderr).strip().replace("\n", " | ")[:300]
    return (
        f"uid {NOBODY} cannot run this interpreter ({sys.base_prefix}); it got: {seen}."
        f" Make every directory above it searchable (chmod o+x), as scripts/test does"
        f" under CI"
    )


def require_unprivileged_python() -> str:
    """The path of setpriv, once an unprivileged child is known to run ``sys.executable``
    itself: the same Python and standard library as the tests, not whatever it falls back
    to."""
    setpriv = require_root_and_setpriv()
    problem = _unprivileged_interpreter()
    require(problem is None, problem or "")
    return setpriv
