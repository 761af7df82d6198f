"""A name removed from the configuration (issue 16, item 1), against the real step-ca 0.19 and
HAProxy 2.6.

`run --config FILE` issues two certificates and loads them into HAProxy; the file then loses
one. Its PEM stays on disk and loaded (run does not unload it by itself), so run warns about it
(``cert_not_configured``), ``/metrics`` counts it, and docs/compose.md's "Remove a name" recipe,
run exactly as written, lists it, removes it through the running sidecar (revoked, unloaded
from HAProxy, files deleted), and no longer lists it.

A second test does the same for a typo's placeholder with no sidecar running: it is removed
without asking the CA.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar import pem
from sidecar.inventory import utc_now
from sidecar.placeholder import make_placeholder
from tests.compose.readme import readme_block
from tests.integration.cli import Wait, run_cli, running_sidecar
from tests.peers.haproxy import HAProxyInstance
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA, StepCAFactory

pytestmark = [pytest.mark.stepca, pytest.mark.haproxy]

REMOVED = "api.openchami.cluster"  # the name the documented recipe removes


def _config(
    ca: StepCA, certs: Path, state: Path, lease: LoopbackLease, *, both: bool, socket: Path
) -> str:
    lines = [
        "[acme]",
        f'directory = "{ca.directory_url}"',
        f'ca_bundle = "{ca.root_path}"',
        f'http_listen = "{lease.address}:80"',
        "[files]",
        f'certs_dir = "{certs}"',
        f'state_dir = "{state}"',
        "[haproxy]",
        f'sockets = ["unix:{socket}"]',
        "[[certificates]]",
        'name = "demo"',
        f'domains = ["{lease.names[0]}"]',
    ]
    if both:
        lines += ["[[certificates]]", f'name = "{REMOVED}"', f'domains = ["{lease.names[1]}"]']
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.rename(path)


def _recipe() -> list[list[str]]:
    """The documented block's commands, each as argv without the leading `cert-sidecar`."""
    commands = []
    for line in readme_block("remove-a-name").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[0] == "cert-sidecar", line
            commands.append(words[1:])
    return commands


def test_a_removed_name_is_shown_and_the_readme_recipe_removes_it(
    step_ca_factory: StepCAFactory,
    haproxy_factory: Callable[..., HAProxyInstance],
    loopback_factory: Callable[[], LoopbackLease],
    tmp_path: Path,
) -> None:
    lease = loopback_factory()
    ca = step_ca_factory()
    certs, state = tmp_path / "certs", tmp_path / "state"
    certs.mkdir()
    haproxy = haproxy_factory(certs)
    config = tmp_path / "cert-sidecar.toml"
    _write(config, _config(ca, certs, state, lease, both=True, socket=haproxy.socket_path))
    removed_pem = certs / f"{REMOVED}.pem"
    both = Wait(
        "both certificates", lambda sidecar: sidecar.event_names().count("haproxy_updated") >= 2
    )
    with running_sidecar(["--config", str(config)], tmp_path / "run.log", until=both) as sidecar:
        assert str(removed_pem) in haproxy.cli("show ssl cert")
        serial = next(
            e["serial"]
            for e in sidecar.events()
            if e.get("event") == "cert_issued" and e.get("cert") == REMOVED
        )

        _write(config, _config(ca, certs, state, lease, both=False, socket=haproxy.socket_path))
        sidecar.wait_for(
            lambda: any(
                e.get("event") == "cert_not_configured" and e.get("cert") == REMOVED
                for e in sidecar.events()
            ),
            "the warning about the removed name",
        )
        warning = next(e for e in sidecar.events() if e.get("event") == "cert_not_configured")
        assert warning["level"] == "warning"
        assert warning["fix"] == f"cert-sidecar revoke {REMOVED} --remove"
        _, metrics = sidecar.get("/metrics")
        assert "cert_sidecar_certificates_not_configured 1" in metrics.splitlines()
        # Still on disk and loaded: run does not unload it by itself.
        assert removed_pem.exists()
        assert str(removed_pem) in haproxy.cli("show ssl cert")

        env = {"CERT_SIDECAR_CONFIG": str(config)}
        first, remove, last = [run_cli(argv, env=env) for argv in _recipe()]
        assert first.code == 0, first.stderr
        listed = first.stdout.split("Not configured", 1)
        assert len(listed) == 2, first.stdout
        assert REMOVED in listed[1] and "real" in listed[1] and serial in listed[1]

        assert remove.code == 0, remove.stderr
        assert "done by the running cert-sidecar" in remove.stderr
        assert f"{REMOVED}: removed" in remove.stdout
        assert not removed_pem.exists()
        assert not (state / "certs" / REMOVED).exists()
        assert str(removed_pem) not in haproxy.cli("show ssl cert")
        assert (certs / "demo.pem").exists()
        _, metrics = sidecar.get("/metrics")
        assert "cert_sidecar_certificates_not_configured 0" in metrics.splitlines()

        assert last.code == 0, last.stderr
        assert "Not configured" not in last.stdout and REMOVED not in last.stdout


def test_a_typo_placeholder_is_removed_without_a_running_sidecar(
    step_ca_factory: StepCAFactory, tmp_path: Path
) -> None:
    ca = step_ca_factory()
    certs, state = tmp_path / "certs", tmp_path / "state"
    certs.mkdir()
    cert_pem, key_pem = make_placeholder("typo.exmaple", ("typo.exmaple",), now=utc_now())
    (certs / "typo.exmaple.pem").write_bytes(pem.combined_pem(cert_pem, [], key_pem))
    (certs / ".typo.exmaple.pem.tmp").write_bytes(b"")  # a dot-file is never an orphan
    env = {
        "CERT_SIDECAR_DIRECTORY": ca.directory_url,
        "CERT_SIDECAR_CA_BUNDLE": str(ca.root_path),
        "CERT_SIDECAR_CERTS_DIR": str(certs),
        "CERT_SIDECAR_STATE_DIR": str(state),
        "CERT_SIDECAR_DOMAINS": "typo.example",
    }
    status = run_cli(["status", "--json"], env=env)
    assert status.code == 0, status.stderr
    listed = status.json()["not_configured"]  # type: ignore[index]
    assert [(o["name"], o["kind"]) for o in listed] == [("typo.exmaple", "placeholder")]

    result = run_cli(["revoke", "typo.exmaple", "--remove"], env=env)
    assert result.code == 0, result.stderr
    assert "typo.exmaple: removed" in result.stdout
    assert not (certs / "typo.exmaple.pem").exists()

    again = run_cli(["revoke", "typo.exmaple", "--remove"], env=env)
    assert again.code == 1
    assert "no certificate named 'typo.exmaple'" in again.stderr
