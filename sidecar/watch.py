"""How cert-sidecar watches files: one place for the watchfiles settings both watches share.

watchfiles' notify thread wakes every ``step`` milliseconds to look for a stop request (and
Python signals), 50 ms by default: twenty wake-ups a second per watch, each taking the GIL,
for the whole life of an idle sidecar. The watches here are the CA bundle and the config file,
which change a few times a year; noticing that (and a stop) within half a second is plenty.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import watchfiles

#: Milliseconds between the notify thread's looks at the stop event. Bounds how long after a
#: change (plus the debounce) and after a stop request the watch answers.
WATCH_STEP_MS = 500


def awatch(
    path: Path,
    *,
    watch_filter: Callable[[watchfiles.Change, str], bool],
    **options: Any,
) -> AsyncGenerator[set[tuple[watchfiles.Change, str]], None]:
    """`watchfiles.awatch` of one path, with this module's step."""
    return watchfiles.awatch(path, watch_filter=watch_filter, step=WATCH_STEP_MS, **options)


__all__ = ["WATCH_STEP_MS", "awatch"]
