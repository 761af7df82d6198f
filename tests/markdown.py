"""The repository's own Markdown files, for the documentation tests.

Walked with pruning, not `rglob`: `.cache/` holds debootstrap trees (with `/proc` entries that
vanish mid-walk while a build runs in the background) and venvs with thousands of files.
"""

from __future__ import annotations

import os
from pathlib import Path

SKIP_DIRS = frozenset({"mutants", "build", "dist", "node_modules", "__pycache__"})


def markdown_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [
            name
            for name in subdirs
            if not name.startswith(".") and name not in SKIP_DIRS and not name.endswith(".egg-info")
        ]
        found.extend(Path(directory) / name for name in files if name.endswith(".md"))
    return sorted(found)
