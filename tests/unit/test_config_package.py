"""sidecar.config is split by audience (issue 18, item 6): each module imports only those
before it, none imports the start-up checks back, and every name the one config.py exported
still imports from ``sidecar.config``."""

from __future__ import annotations

import ast
from pathlib import Path

import sidecar.config

PACKAGE = Path(sidecar.config.__file__).parent
# The order of the package docstring: a module may import only modules before it.
LAYERS = (
    "options",
    "model",
    "parsers",
    "host_lookups",
    "sources",
    "loader",
    "render",
    "flags",
)
# What `from sidecar.config import ...` gave before the split (its __all__, and the names
# other modules imported beyond it), less the two disk checks that moved to sidecar.preflight.
EXPORTED_BEFORE = [
    "CHALLENGES",
    "DEFAULTS",
    "ENV_PREFIX",
    "KEY_TYPES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "OPTIONS",
    "RELOAD_MODES",
    "CertificateSpec",
    "ConfigError",
    "Option",
    "ReloadMode",
    "Settings",
    "add_setting_arguments",
    "default_reload_mode",
    "describe",
    "is_reload_mode",
    "load_settings",
    "locate_running_sidecar",
    "parse_bool",
    "parse_host_port",
    "parse_pem_mode",
    "parse_signal",
    "resolve_group",
    "split_command",
    "WORK_FIELDS",
    "work_fingerprint",
    "work_label",
    "mask_command",
    "RunningSidecarAddress",
]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_modules_are_the_documented_layers() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)
    for name in LAYERS:
        assert f"``{name}``" in (sidecar.config.__doc__ or ""), name


def test_each_module_imports_only_the_layers_before_it() -> None:
    for position, name in enumerate(LAYERS):
        imported = _imports(PACKAGE / f"{name}.py")
        later = {f"sidecar.config.{other}" for other in LAYERS[position:]}
        assert not imported & later, (name, sorted(imported & later))
        # Never the package itself: its __init__ imports every module (a cycle).
        assert "sidecar.config" not in imported, name


def test_the_settings_never_import_the_start_up_checks() -> None:
    """preflight imports the model; the model importing preflight back was the cycle."""
    for path in PACKAGE.glob("*.py"):
        imported = _imports(path)
        assert not {"sidecar.preflight", "sidecar.trust"} & imported, path.name
        assert "sidecar.preflight" not in {f"sidecar.{name}" for name in imported}, path.name


def test_no_file_over_800_lines() -> None:
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 800, path.name


def test_every_name_still_imports_from_the_package() -> None:
    assert set(EXPORTED_BEFORE) <= set(sidecar.config.__all__)
    for name in sidecar.config.__all__:
        assert getattr(sidecar.config, name) is not None, name


def test_the_parsers_ask_nothing_of_the_host() -> None:
    """The pure ones: no group database, no PATH lookup, no file read."""
    imported = _imports(PACKAGE / "parsers.py")
    assert not {"grp", "pwd", "shutil", "subprocess", "tomllib"} & imported
    tree = ast.parse((PACKAGE / "parsers.py").read_text())
    called = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert not {"read_text", "read_bytes", "open", "geteuid", "getgroups", "which"} & called
