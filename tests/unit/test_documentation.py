"""The documentation as a reader follows it (issue 18): every relative link and anchor in the
repository's Markdown resolves, and every command block a test runs is found by name, whichever
page (README.md or docs/*.md) it lives on, with no name marking two blocks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.compose.readme import documentation_files, marked_blocks, readme_block
from tests.markdown import markdown_files

REPO_ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6}[ \t]+(?P<text>.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
_INLINE_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")

# The marked blocks the tests run, and the test file that names each one. A block moved to
# another page keeps its marker; `readme_block` must still find it there.
USED_BY_TESTS: dict[str, str] = {
    "quick-start": "tests/compose/test_readme.py",
    "tour": "tests/compose/test_readme.py",
    "clean-up": "tests/compose/test_readme.py",
    "podman-quick-start": "tests/compose/test_readme.py",
    "add-a-name": "tests/compose/test_docker.py",
    "master-cli": "tests/compose/test_docker.py",
    "compose-toml-override": "tests/unit/test_readme_compose_toml.py",
    "compose-toml": "tests/unit/test_readme_compose_toml.py",
    "remove-a-name": "tests/integration/test_remove_a_name_stepca.py",
    "quadlet-dry-run": "tests/quadlet/test_release_rpm.py",
    "quadlet-install": "tests/quadlet/test_release_rpm.py",
    "quadlet-check": "tests/quadlet/test_release_rpm.py",
    "quadlet-uninstall": "tests/quadlet/test_release_rpm.py",
}
# docs/host.md's blocks are run in order by their own reader, tests/integration/test_host_doc.py.
HOST_DOC_PREFIX = "host-"
# The quick start is the front door: its first-run blocks stay in README.md itself.
FRONT_DOOR = ("quick-start", "tour", "clean-up")


def _markdown_files() -> list[Path]:
    return markdown_files(REPO_ROOT)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _INLINE_LINK.sub(r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in _HEADING.finditer(_FENCE.sub("", text)):
        base = slug(match["text"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_slug_is_githubs() -> None:
    assert slug("OpenCHAMI: the Release RPM (podman quadlets under systemd)") == (
        "openchami-the-release-rpm-podman-quadlets-under-systemd"
    )
    assert slug("Under systemd (sd_notify, watchdog, status)") == (
        "under-systemd-sd_notify-watchdog-status"
    )
    assert slug("Using `ca_client`") == "using-ca_client"
    assert slug("Flood (issue 8): hostile clients on :80 and :443") == (
        "flood-issue-8-hostile-clients-on-80-and-443"
    )
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### A\n") == {"a", "a-1", "a-2"}


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    text = path.read_text()
    broken: list[str] = []
    for match in _LINK.finditer(_FENCE.sub("", text)):
        target = match["target"]
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:: outside the repository
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{path.relative_to(REPO_ROOT)}: " + "; ".join(broken)


def test_every_block_a_test_runs_is_found() -> None:
    for name, test_file in USED_BY_TESTS.items():
        assert f'"{name}"' in (REPO_ROOT / test_file).read_text(), (name, test_file)
        assert readme_block(name).strip(), name


def test_every_marked_block_is_run_by_a_test() -> None:
    blocks = marked_blocks(documentation_files())
    unrun = [
        f"{name} ({path.name})"
        for name, (path, _) in blocks.items()
        if name not in USED_BY_TESTS and not name.startswith(HOST_DOC_PREFIX)
    ]
    assert not unrun, f"marked, but no test runs them: {unrun}"
    assert all(path.name == "host.md" for name, (path, _) in blocks.items() if name[:5] == "host-")


def test_the_quick_start_stays_in_the_readme() -> None:
    blocks = marked_blocks(documentation_files())
    for name in FRONT_DOOR:
        assert blocks[name][0] == REPO_ROOT / "README.md", name


def test_a_name_marking_two_blocks_is_refused(tmp_path: Path) -> None:
    block = "<!-- test: twice -->\n```sh\ntrue\n```\n"
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    first.write_text(block)
    second.write_text("text\n\n" + block)
    assert marked_blocks([first])["twice"] == (first, "true\n")
    with pytest.raises(AssertionError, match=r"twice.*a\.md.*b\.md"):
        marked_blocks([first, second])


def test_the_readmes_release_rpm_summary_is_the_tested_page() -> None:
    """The README names the Release RPM's commands inline; each is, word for word, a line of
    docs/openchami-rpm.md, whose marked blocks tests/quadlet runs."""
    readme = (REPO_ROOT / "README.md").read_text()
    summary = readme.split("## OpenCHAMI: the Release RPM", 1)[1].split("\n## ", 1)[0]
    page_lines = {
        line.strip() for line in (REPO_ROOT / "docs" / "openchami-rpm.md").read_text().split("\n")
    }
    commands = re.findall(r"`((?:podman |docker/quadlet/install)[^`]*)`", " ".join(summary.split()))
    assert len(commands) == 5, commands
    for command in commands:
        assert command in page_lines, command
