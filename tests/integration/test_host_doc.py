"""docs/host.md ("Without containers"), run as written: the real step-ca and HAProxy, a
virtualenv made by the page's own `pip install .`, the page's TOML file, its first `issue`,
its systemd unit's and cron line's commands.

What is adapted to this machine, and nothing else: the settings block (`host-settings`) gets
the test's values (the fixture's directory and root, a leased name, directories under
tmp_path, the fixture HAProxy's socket), and the unit, cron and haproxy.cfg texts, which name
the page's default paths, get the test's paths in their place.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from sidecar.pem import describe_cert
from tests.integration.cli import REPO
from tests.peers.haproxy import HAProxyFactory, handshake, haproxy_check_config
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA

pytestmark = [pytest.mark.stepca, pytest.mark.haproxy]

HOST_MD = REPO / "docs" / "host.md"
_BLOCK = re.compile(
    r"^<!-- test: (?P<name>[\w-]+) -->\n+```\w*\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL
)
_SETTING = re.compile(r"^(?P<name>[A-Z_]+)=(?P<value>\S+)", re.MULTILINE)
# The page's install, configuration and first issuance: shell blocks run in this order.
_SHELL_BLOCKS = ("host-install", "host-config", "host-first")


def host_blocks() -> dict[str, str]:
    return {match["name"]: match["body"] for match in _BLOCK.finditer(HOST_MD.read_text())}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CERT_SIDECAR_")}


def _replace_paths(text: str, paths: dict[str, str]) -> str:
    for default in sorted(paths, key=len, reverse=True):
        text = text.replace(default, paths[default])
    return text


def test_the_host_page_runs_as_written(
    step_ca: StepCA,
    loopback: LoopbackLease,
    haproxy_factory: HAProxyFactory,
    tmp_path: Path,
) -> None:
    blocks = host_blocks()
    assert set(blocks) >= {"host-settings", "host-haproxy", "host-unit", "host-cron"}
    assert set(blocks) >= set(_SHELL_BLOCKS)
    certs = tmp_path / "haproxy-certs"
    certs.mkdir()
    haproxy = haproxy_factory(certs)
    ours = {
        "CA_DIRECTORY": step_ca.directory_url,
        "CA_ROOT": str(step_ca.root_path),
        "NAME": loopback.name,
        "PREFIX": str(tmp_path / "opt-cert-sidecar"),
        "CONFIG_DIR": str(tmp_path / "etc-cert-sidecar"),
        "STATE_DIR": str(tmp_path / "var-lib-cert-sidecar"),
        "CERTS_DIR": str(certs),
        "HAPROXY_SOCKET": str(haproxy.socket_path),
        # No HAProxy in front on this machine's :80: the responder is what the CA reaches.
        "HTTP_LISTEN": f"{loopback.address}:80",
    }
    defaults = dict(_SETTING.findall(blocks["host-settings"]))
    assert set(defaults) == set(ours), "the page's settings changed: give the test its values"
    paths = {value: ours[name] for name, value in defaults.items() if value.startswith("/")}

    settings = "".join(f"{name}={shlex.quote(value)}\n" for name, value in ours.items())
    script = settings + "".join(blocks[name] for name in _SHELL_BLOCKS)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,  # `pip install .` from a checkout
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # HAProxy serves the issued certificate, loaded through its socket, for the name.
    pem = (certs / f"{loopback.name}.pem").read_bytes()
    serial = describe_cert(x509.load_pem_x509_certificate(pem)).serial_hex
    served = handshake("127.0.0.1", haproxy.port, loopback.name, step_ca.root_pem.encode())
    assert describe_cert(served).serial_hex == serial
    assert serial in done.stdout  # status: the serial HAProxy serves

    # haproxy.cfg: the page's frontends and backends, with Debian's kind of global section.
    config = (
        f"global\n  stats socket {tmp_path / 'check.sock'} level admin\n"
        "defaults\n  mode http\n  timeout client 5s\n  timeout server 5s\n"
        "  timeout connect 5s\n"
        + _replace_paths(blocks["host-haproxy"], paths | {"/etc/haproxy/certs/": f"{certs}/"})
    )
    checked = haproxy_check_config(config, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # The unit's command (check-config for `run`, which would not return) and its environment.
    unit = _replace_paths(blocks["host-unit"], paths)
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    argv = shlex.split(exec_start)
    assert argv[-1] == "run"
    environment = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in unit.splitlines()
        if line.startswith("Environment=")
    )
    checked = subprocess.run(
        [*argv[:-1], "check-config"],
        env=_clean_env() | environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert 'log_format = "console"' in checked.stdout

    # The cron line as cron would run it: nothing is due, so `renew` changes nothing, exit 0.
    (entry,) = [line for line in blocks["host-cron"].splitlines() if not line.startswith("#")]
    *_schedule, user, command = entry.split(maxsplit=6)
    assert user == "root"
    renewed = subprocess.run(
        ["sh", "-c", _replace_paths(command, paths)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert (certs / f"{loopback.name}.pem").read_bytes() == pem
