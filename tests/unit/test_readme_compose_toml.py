"""docs/compose.md's "Settings in a TOML file" recipe for compose (issue 16, item 10), as written:
the override mounts the file's directory where CERT_SIDECAR_CONFIG points, and the documented
file, under compose.yaml's own environment, is what `check-config` then shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import trustme

from tests.compose.readme import readme_block

REPO = Path(__file__).resolve().parents[2]
_DEFAULT = re.compile(r"\$\{\w+:-([^}]*)\}")


def _compose_environment() -> dict[str, str]:
    """cert-sidecar's environment in compose.yaml, variables at their defaults."""
    compose = (REPO / "compose.yaml").read_text()
    service = compose.split("\n  cert-sidecar:\n", 1)[1].split("\n  haproxy:\n", 1)[0]
    return {
        name: _DEFAULT.sub(r"\1", value)
        for name, value in re.findall(r"^      (CERT_SIDECAR_\w+): (.*)$", service, re.MULTILINE)
    }


def _check_config(env: dict[str, str]) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERT_SIDECAR_")}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config"],
        env=base | {"PYTHONPATH": str(REPO)} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout)


def test_the_documented_toml_file_is_what_check_config_shows(tmp_path: Path) -> None:
    override = readme_block("compose-toml-override")
    (config_path,) = re.findall(r"CERT_SIDECAR_CONFIG: (\S+)", override)
    (host_dir, mounted, mode) = re.findall(r"- (\./[\w-]+):(\S+):(\w+)", override)[0]
    # The directory is mounted (an editor's rename reaches the container), read-only.
    assert Path(config_path).parent == Path(mounted) and mode == "ro"
    documented = readme_block("compose-toml")
    config = tmp_path / host_dir / Path(config_path).name
    config.parent.mkdir()
    config.write_text(documented)

    ca = tmp_path / "root_ca.crt"
    trustme.CA().cert_pem.write_to_path(str(ca))
    env = _compose_environment()
    # The container's paths, on this machine: nothing else of compose.yaml changes.
    env |= {
        "CERT_SIDECAR_CONFIG": str(config),
        "CERT_SIDECAR_CA_BUNDLE": str(ca),
        "CERT_SIDECAR_CERTS_DIR": str(tmp_path),
        "CERT_SIDECAR_STATE_DIR": str(tmp_path),
    }
    effective = _check_config(env)
    for table, values in tomllib.loads(documented).items():
        for key, value in values.items():
            assert effective[table][key] == value, (table, key)  # type: ignore[index]
    # compose.yaml's environment still wins where it sets something.
    acme = effective["acme"]
    assert isinstance(acme, dict)
    assert acme["directory"] == env["CERT_SIDECAR_DIRECTORY"]


def test_an_empty_variable_in_the_override_hands_a_setting_to_the_file(tmp_path: Path) -> None:
    """The recipe's way to move a setting compose.yaml sets into the file."""
    ca = tmp_path / "root_ca.crt"
    trustme.CA().cert_pem.write_to_path(str(ca))
    config = tmp_path / "config.toml"
    config.write_text('[[certificates]]\nname = "api.example"\ndomains = ["api.example"]\n')
    env = _compose_environment() | {
        "CERT_SIDECAR_CONFIG": str(config),
        "CERT_SIDECAR_CA_BUNDLE": str(ca),
        "CERT_SIDECAR_CERTS_DIR": str(tmp_path),
        "CERT_SIDECAR_STATE_DIR": str(tmp_path),
        "CERT_SIDECAR_DOMAINS": "",
    }
    effective = _check_config(env)
    certificates = effective["certificates"]
    assert isinstance(certificates, list)
    assert [(c["name"], c["domains"]) for c in certificates] == [("api.example", ["api.example"])]
