"""The sidecar uses `ca_client` as any other program could: through public modules only.

A private module (``_http``, ``_limits``, ...) may change shape with no notice; what another
package needs is re-exported by a public one (``ca_client.challenges.serving`` for the health
server), so the library's public surface is the whole of what the sidecar depends on."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SIDECAR = sorted((REPO_ROOT / "sidecar").rglob("*.py"))


def _ca_client_imports(path: Path) -> list[str]:
    """Every ``ca_client`` module and name `path` imports, dotted (``a.b._c`` or ``a.b:_c``)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("ca_client")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ca_client"):
            found += [f"{node.module}:{alias.name}" for alias in node.names]
    return found


def _private(imported: str) -> bool:
    return any(part.startswith("_") for part in imported.replace(":", ".").split("."))


@pytest.mark.parametrize("path", SIDECAR, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_sidecar_imports_no_private_part_of_ca_client(path: Path) -> None:
    private = [name for name in _ca_client_imports(path) if _private(name)]
    assert not private, f"{path.relative_to(REPO_ROOT)} imports private ca_client parts: {private}"


def test_the_serving_module_exports_what_it_lists() -> None:
    serving = importlib.import_module("ca_client.challenges.serving")
    for name in serving.__all__:
        assert getattr(serving, name).__module__.startswith("ca_client.challenges."), name


def test_metrics_only_renders_and_knows_no_ca_client_error() -> None:
    """Sorting a failure into its `ErrorKind` belongs with the errors (`sidecar.errors`);
    `sidecar.metrics` prints the kind it is given and never looks at a ca_client exception."""
    assert _ca_client_imports(REPO_ROOT / "sidecar" / "metrics.py") == []
