"""The README's commands, as the tests run them: a fenced code block that follows a marker
line `<!-- test: NAME -->` in README.md is the block NAME. Tests run these blocks, so what a
reader copies is what was tested."""

from __future__ import annotations

import re

from tests.compose.stack import REPO_ROOT

README = REPO_ROOT / "README.md"
_BLOCK = re.compile(
    r"^<!-- test: (?P<name>[\w-]+) -->\n+```\w*\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL
)


def readme_blocks() -> dict[str, str]:
    return {match["name"]: match["body"] for match in _BLOCK.finditer(README.read_text())}


def readme_block(name: str) -> str:
    blocks = readme_blocks()
    assert name in blocks, f"README.md has no block marked <!-- test: {name} -->"
    return blocks[name]
