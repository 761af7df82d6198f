"""The repository as users get it (issue 16, item 12): a licence, documentation that stays inside
the repository and agrees with the code, and upstream images pinned to what was tested."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from sidecar.config import OPTIONS, Option
from tests.markdown import markdown_files

REPO_ROOT = Path(__file__).resolve().parents[2]
_MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
# ${VAR:-default} in compose.yaml, ARG NAME=default in a Dockerfile: the images a user pulls.
_COMPOSE_DEFAULT = re.compile(r"\$\{(?P<var>\w*IMAGE)(?::-(?P<default>[^}]*))?\}")
_DOCKERFILE_ARG = re.compile(r"^ARG (?P<var>\w*IMAGE)=(?P<default>\S+)$", re.MULTILINE)


def _markdown_files() -> list[Path]:
    return markdown_files(REPO_ROOT)


def test_license_is_the_apache_2_text_pyproject_names() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == {"text": "Apache-2.0"}
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_files_the_readme_asks_users_to_create_are_ignored() -> None:
    # The README and the pages of docs/ it sends readers to (docs/compose.md: the override).
    readme = "".join(
        p.read_text() for p in [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")]
    )
    patterns = {
        line.strip()
        for line in (REPO_ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for name in ("compose.override.yaml", "root_ca.crt"):
        assert name in readme  # still asked for; else this entry has no reason left
        assert name in patterns, f".gitignore does not ignore {name}"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_documentation_links_stay_inside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "../shared/" not in text, f"{path.name} points outside the repository (../shared/)"
    for match in _MARKDOWN_LINK.finditer(text):
        target = match.group(1)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(REPO_ROOT), f"{path.name}: {target} leaves the repository"
        assert resolved.exists(), f"{path.name}: {target} does not exist"


def test_contract_and_style_guide_are_in_the_projects_docs() -> None:
    for name in ("CONTRACT.md", "STYLE.md"):
        assert (REPO_ROOT / "docs" / name).is_file()
    design = (REPO_ROOT / "docs" / "DESIGN.md").read_text()
    assert "(CONTRACT.md)" in design and "(STYLE.md)" in design


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.field)
def test_contract_names_every_setting_in_its_three_forms(option: Option) -> None:
    """docs/CONTRACT.md is kept true: each setting's flag, environment variable and TOML key."""
    contract = (REPO_ROOT / "docs" / "CONTRACT.md").read_text()
    assert re.search(rf"{option.flag}\b", contract), option.flag
    assert option.envs[0] in contract, option.envs[0]
    table_comment = re.search(rf"^\[{option.table}\][^\n]*(?:\n +#[^\n]*)*", contract, re.M)
    assert table_comment is not None, option.table
    assert re.search(rf"\b{option.key}\b", table_comment.group(0)), option.toml


def _image_defaults() -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    compose = (REPO_ROOT / "compose.yaml").read_text()
    for match in _COMPOSE_DEFAULT.finditer(compose):
        found.append(("compose.yaml", match["var"], match["default"] or ""))
    dockerfiles = [REPO_ROOT / "Dockerfile", *sorted((REPO_ROOT / "docker").rglob("Dockerfile"))]
    for dockerfile in dockerfiles:
        for match in _DOCKERFILE_ARG.finditer(dockerfile.read_text()):
            found.append((str(dockerfile.relative_to(REPO_ROOT)), match["var"], match["default"]))
    for match in re.finditer(r"^\s+image: (?P<image>[^$\s]\S*)$", compose, re.MULTILINE):
        found.append(("compose.yaml", "image", match["image"]))
    return found


def test_every_upstream_image_is_pinned_to_a_version() -> None:
    defaults = _image_defaults()
    upstream = [
        (where, var, image)
        for where, var, image in defaults
        # Images built here (cert-sidecar:local, ...) and the test stand-ins are not pulled.
        if not image.startswith(("localhost/", "cert-sidecar"))
    ]
    assert {image.split(":")[0] for _, _, image in upstream} >= {
        "smallstep/step-ca",
        "haproxy",
        "python",
    }, defaults
    for where, var, image in upstream:
        _, _, tag = image.partition(":")
        assert re.match(r"\d+\.\d+", tag), f"{where}: {var} default {image} names no version"


def test_compose_leaves_the_log_format_to_the_reader() -> None:
    """No forced JSON: unset, the sidecar picks console for a terminal and JSON otherwise; a
    person reading `docker compose logs` sets CERT_SIDECAR_LOG_FORMAT=console (docs/operations.md,
    Logs)."""
    compose = (REPO_ROOT / "compose.yaml").read_text()
    (value,) = re.findall(r"^      CERT_SIDECAR_LOG_FORMAT: (.*)$", compose, re.MULTILINE)
    assert value == "${CERT_SIDECAR_LOG_FORMAT:-}"
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    assert "export CERT_SIDECAR_LOG_FORMAT=console" in operations


def test_test_files_are_named_for_what_they_guard() -> None:
    """A test file's name says what it checks, not how the gap was found (issue 18): the
    `test_mutants_*.py` files were renamed, and the mutation report names them as they are."""
    tests = REPO_ROOT / "tests"
    origin_named = sorted(str(path.relative_to(tests)) for path in tests.rglob("test_mutants_*"))
    assert origin_named == []
