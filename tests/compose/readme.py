"""The documentation's commands, as the tests run them: a fenced code block that follows a marker
line `<!-- test: NAME -->` in README.md or a page of docs/ is the block NAME. Tests run these
blocks, so what a reader copies is what was tested, on whichever page it now lives.

A name is unique across all those files (`readme_blocks` refuses a second one), so moving a
block to another page never changes which block a test runs."""

from __future__ import annotations

import re
from pathlib import Path

from tests.compose.stack import REPO_ROOT

README = REPO_ROOT / "README.md"
_BLOCK = re.compile(
    r"^<!-- test: (?P<name>[\w-]+) -->\n+```\w*\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL
)


def documentation_files() -> list[Path]:
    """README.md, then every page of docs/, in a fixed order."""
    return [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]


def marked_blocks(paths: list[Path]) -> dict[str, tuple[Path, str]]:
    """Each marked block of `paths` by name: the file it is in, and its body."""
    found: dict[str, tuple[Path, str]] = {}
    for path in paths:
        for match in _BLOCK.finditer(path.read_text()):
            name = match["name"]
            if name in found:
                raise AssertionError(
                    f"<!-- test: {name} --> marks a block in both {found[name][0].name} and "
                    f"{path.name}: a name must be unique across the documentation"
                )
            found[name] = (path, match["body"])
    return found


def readme_blocks() -> dict[str, str]:
    """Every marked block of README.md and docs/*.md, by name."""
    return {name: body for name, (_, body) in marked_blocks(documentation_files()).items()}


def readme_block(name: str) -> str:
    blocks = readme_blocks()
    assert name in blocks, (
        f"neither README.md nor docs/*.md has a block marked <!-- test: {name} -->"
    )
    return blocks[name]
