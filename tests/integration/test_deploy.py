"""sidecar.deploy against real HAProxy processes: every reload mode, fallback, verify, hook."""

from __future__ import annotations

import datetime as dt
import json
import socket
import sys
import time
from pathlib import Path

import pytest

from sidecar.deploy import DeployConfig, Deployer, DeployResult
from sidecar.haproxy import normalize_serial
from tests.peers.haproxy import HAProxyInstance, TestPKI

pytestmark = [pytest.mark.haproxy, pytest.mark.anyio]

NOT_AFTER = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def _certs_with_one(tmp_path: Path, pki: TestPKI, name: str = "a.test") -> tuple[Path, int]:
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    data, serial = pki.issue(name)
    (certs / f"{name}.pem").write_bytes(data)
    return certs, serial


async def _deploy(
    deployer: Deployer, certs: Path, pki: TestPKI, name: str = "a.test", **write: bool
) -> tuple[DeployResult, int]:
    """Write a new PEM as the caller does (the file comes first), then deploy it."""
    data, serial = pki.issue(name)
    if write.get("blank_line"):
        data = data.replace(b"-----END CERTIFICATE-----\n", b"-----END CERTIFICATE-----\n\n", 1)
    path = certs / f"{name}.pem"
    path.write_bytes(data)
    result = await deployer.deploy(
        name, path, data, serial_hex=format(serial, "X"), not_after=NOT_AFTER, names=[name]
    )
    return result, serial


async def test_runtime_api_on_several_sockets_with_verification(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, _ = _certs_with_one(tmp_path, haproxy_pki)
    first: HAProxyInstance = haproxy_factory(certs)
    second: HAProxyInstance = haproxy_factory(certs, master_worker=False)
    workers = (first.worker_pid(), second.worker_pid())
    deployer = Deployer(
        DeployConfig.build(
            sockets=[
                f"unix:{first.socket_path}",
                f"master:unix:{first.master_socket_path}",
                f"unix:{second.socket_path}",
            ],
            certs_dir=certs,
            verify_address=("127.0.0.1", second.port),
        )
    )
    started = time.perf_counter()
    result, serial = await _deploy(deployer, certs, haproxy_pki)
    print(
        f"\ndeploy (3 sockets + verify) -> served: {(time.perf_counter() - started) * 1000:.1f} ms"
    )

    assert result.ok, result.errors
    assert result.mode == "runtime-api" and result.fallback is None and not result.errors
    assert [s.action for s in result.sockets] == ["updated", "updated", "updated"]
    assert result.verification is not None and result.verification.ok
    assert [c.served_serial for c in result.verification.checks] == [normalize_serial(serial)]
    assert first.serial("a.test") == serial and second.serial("a.test") == serial
    assert (first.worker_pid(), second.worker_pid()) == workers  # no restart
    assert await deployer.deployed_serial("a.test") == normalize_serial(serial)
    assert await deployer.deployed_serial(certs / "a.test.pem") == normalize_serial(serial)

    # A new certificate, added at runtime to both.
    result_b, serial_b = await _deploy(deployer, certs, haproxy_pki, "b.test")
    assert result_b.ok and [s.action for s in result_b.sockets] == ["added", "updated", "added"]
    assert second.serial("b.test") == serial_b

    # revoke --remove: unloaded everywhere; the service then sees nothing deployed.
    removed = await deployer.remove("b.test")
    # (The master CLI reaches the first process again, where it is already gone.)
    assert removed == [f"unix:{first.socket_path}", f"unix:{second.socket_path}"]
    assert await deployer.deployed_serial("b.test") is None


async def test_deployed_serial_is_none_when_sockets_disagree(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, serial = _certs_with_one(tmp_path, haproxy_pki)
    first: HAProxyInstance = haproxy_factory(certs, master_worker=False)
    second: HAProxyInstance = haproxy_factory(certs, master_worker=False)
    both = Deployer(
        DeployConfig.build(
            sockets=[f"unix:{first.socket_path}", f"unix:{second.socket_path}"], certs_dir=certs
        )
    )
    assert await both.deployed_serial("a.test") == normalize_serial(serial)
    only_first = Deployer(
        DeployConfig.build(sockets=[f"unix:{first.socket_path}"], certs_dir=certs)
    )
    result, new_serial = await _deploy(only_first, certs, haproxy_pki)
    assert result.ok
    # So that a caller comparing with the file's serial redeploys to both.
    assert await both.deployed_serial("a.test") is None
    assert await only_first.deployed_serial("a.test") == normalize_serial(new_serial)
    assert await both.deployed_serial("missing.test") is None


async def test_missing_socket_falls_back_to_the_reload_command(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, _ = _certs_with_one(tmp_path, haproxy_pki)
    haproxy: HAProxyInstance = haproxy_factory(certs)
    worker = haproxy.worker_pid()
    marker = tmp_path / "fallback-ran"
    deployer = Deployer(
        DeployConfig.build(
            sockets=[f"unix:{tmp_path}/missing.sock"],
            certs_dir=certs,
            reload_command=["sh", "-c", f"touch {marker} && kill -USR2 {haproxy.pid}"],
            verify_address=("127.0.0.1", haproxy.port),
            retry_delay=0.01,
        )
    )
    result, serial = await _deploy(deployer, certs, haproxy_pki)

    assert result.ok, result.errors
    assert result.fallback == "command" and result.fallback_ok is True
    assert marker.exists()
    assert not result.sockets[0].ok and result.sockets[0].attempts == 3
    assert "does not exist" in (result.sockets[0].error or "")
    assert result.verification is not None and result.verification.ok
    assert haproxy.worker_pid() != worker  # the fallback really reloaded
    assert haproxy.serial("a.test") == serial
    assert "after falling back to command" in result.summary()


async def test_refused_socket_falls_back_to_the_signal(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, _ = _certs_with_one(tmp_path, haproxy_pki)
    haproxy: HAProxyInstance = haproxy_factory(certs)
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # a socket file nobody listens on
        without_fallback = Deployer(
            DeployConfig.build(sockets=[f"unix:{stale}"], certs_dir=certs, retry_delay=0.01)
        )
        failed, _ = await _deploy(without_fallback, certs, haproxy_pki)
        assert not failed.ok and failed.fallback is None
        assert "connection refused" in failed.summary()

        worker = haproxy.worker_pid()
        deployer = Deployer(
            DeployConfig.build(
                sockets=[f"unix:{stale}"],
                certs_dir=certs,
                reload_signal="USR2",
                reload_pid_file=haproxy.pid_file,
                verify_address=("127.0.0.1", haproxy.port),
                retry_delay=0.01,
            )
        )
        result, serial = await _deploy(deployer, certs, haproxy_pki)
    assert result.ok, result.errors
    assert result.fallback == "signal" and result.fallback_ok
    assert haproxy.wait_for_worker_change(worker) != worker
    assert haproxy.serial("a.test") == serial


async def test_payload_with_blank_lines_is_not_sent_and_reload_loads_the_file(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, old = _certs_with_one(tmp_path, haproxy_pki)
    haproxy: HAProxyInstance = haproxy_factory(certs)
    marker = tmp_path / "reloaded"
    deployer = Deployer(
        DeployConfig.build(
            sockets=[f"unix:{haproxy.socket_path}"],
            certs_dir=certs,
            reload_command=["sh", "-c", f"touch {marker} && kill -USR2 {haproxy.pid}"],
        )
    )
    result, serial = await _deploy(deployer, certs, haproxy_pki, blank_line=True)
    assert "blank line" in " ".join(result.errors)
    assert result.fallback == "command" and marker.exists()
    # The reloaded worker read the file from disk (OpenSSL tolerates the blank line there).
    assert result.ok, result.errors
    assert result.sockets[0].action == "confirmed"
    assert haproxy.serial("a.test") == serial != old


async def test_signal_mode(haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path) -> None:
    certs, _ = _certs_with_one(tmp_path, haproxy_pki)
    haproxy: HAProxyInstance = haproxy_factory(certs)
    worker = haproxy.worker_pid()
    deployer = Deployer(
        DeployConfig.build(
            sockets=[f"unix:{haproxy.socket_path}"],
            certs_dir=certs,
            reload="signal",
            reload_signal="SIGUSR2",
            reload_pid_file=haproxy.pid_file,
        )
    )
    result, serial = await _deploy(deployer, certs, haproxy_pki)
    assert result.ok, result.errors
    assert result.mode == "signal" and result.sockets[0].action == "confirmed"
    assert haproxy.worker_pid() != worker
    assert haproxy.serial("a.test") == serial

    gone = Deployer(
        DeployConfig.build(reload="signal", reload_pid_file=tmp_path / "nope.pid", certs_dir=certs)
    )
    failed, _ = await _deploy(gone, certs, haproxy_pki)
    assert not failed.ok and "nope.pid" in failed.summary()


async def test_master_reload_mode(haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path) -> None:
    certs, _ = _certs_with_one(tmp_path, haproxy_pki)
    haproxy: HAProxyInstance = haproxy_factory(certs)
    worker = haproxy.worker_pid()
    deployer = Deployer(
        DeployConfig.build(
            sockets=[f"master:unix:{haproxy.master_socket_path}"],
            certs_dir=certs,
            reload="master-reload",
            verify_address=("127.0.0.1", haproxy.port),
        )
    )
    result, serial = await _deploy(deployer, certs, haproxy_pki)
    assert result.ok, result.errors
    assert result.mode == "master-reload" and haproxy.restart_count() == 1
    assert haproxy.worker_pid() != worker
    assert haproxy.serial("a.test") == serial


async def test_command_mode_failure_is_reported(haproxy_pki: TestPKI, tmp_path: Path) -> None:
    certs, _ = _certs_with_one(tmp_path, haproxy_pki)
    deployer = Deployer(
        DeployConfig.build(
            reload="command",
            reload_command=["sh", "-c", "echo first >&2; echo 'reload refused' >&2; exit 3"],
            certs_dir=certs,
        )
    )
    result, _ = await _deploy(deployer, certs, haproxy_pki)
    assert not result.ok
    assert result.summary() == "command: reload command sh: exit status 3: reload refused"

    slow = Deployer(
        DeployConfig.build(
            reload="command", reload_command=["sleep", "30"], certs_dir=certs, command_timeout=0.2
        )
    )
    timed_out, _ = await _deploy(slow, certs, haproxy_pki)
    assert not timed_out.ok and "timed out" in timed_out.summary()


async def test_verify_address_catches_a_stale_serial(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, old = _certs_with_one(tmp_path, haproxy_pki)
    haproxy: HAProxyInstance = haproxy_factory(certs)
    # reload "none": the file changes on disk but HAProxy keeps the old certificate in memory.
    deployer = Deployer(
        DeployConfig.build(
            certs_dir=certs, verify_address=f"127.0.0.1:{haproxy.port}", retry_delay=0.01
        )
    )
    result, serial = await _deploy(deployer, certs, haproxy_pki)
    assert not result.ok
    assert result.verification is not None and not result.verification.ok
    check = result.verification.checks[0]
    assert check.served_serial == normalize_serial(old)
    assert normalize_serial(serial) in (check.error or "")
    assert result.hook is None


async def test_deploy_hook_gets_the_environment_and_never_undoes(
    haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, _ = _certs_with_one(tmp_path, haproxy_pki)
    out = tmp_path / "hook.json"
    script = (
        "import json, os, sys; json.dump({k: v for k, v in os.environ.items() "
        f"if k.startswith('CERT_')}}, open({str(out)!r}, 'w')); sys.exit(int(sys.argv[1]))"
    )
    deployer = Deployer(
        DeployConfig.build(certs_dir=certs, deploy_hook=[sys.executable, "-c", script, "0"])
    )
    result, serial = await _deploy(deployer, certs, haproxy_pki)
    assert result.ok and result.hook is not None and result.hook.ok
    env = json.loads(out.read_text())
    assert env == {
        "CERT_NAME": "a.test",
        "CERT_PEM": str(certs / "a.test.pem"),
        "CERT_SERIAL": normalize_serial(serial),
        "CERT_NOT_AFTER": "2030-01-02T03:04:05Z",
        "CERT_DOMAINS": "a.test",
    }

    failing = Deployer(
        DeployConfig.build(certs_dir=certs, deploy_hook=[sys.executable, "-c", script, "4"])
    )
    result, _ = await _deploy(failing, certs, haproxy_pki)
    assert result.ok  # the deploy stands
    assert result.hook is not None and not result.hook.ok and result.hook.returncode == 4
    assert "deploy hook: exit status 4" in " ".join(result.errors)

    hanging = Deployer(
        DeployConfig.build(certs_dir=certs, deploy_hook=["sleep", "30"], hook_timeout=0.2)
    )
    result, _ = await _deploy(hanging, certs, haproxy_pki)
    assert result.ok and result.hook is not None and "timed out" in (result.hook.error or "")


async def test_haproxy_sees_the_certs_dir_under_another_path(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    """--haproxy-certs-dir: HAProxy's view of the directory (a volume mounted elsewhere)."""
    certs, _ = _certs_with_one(tmp_path, haproxy_pki)
    mounted = tmp_path / "mounted-elsewhere"
    mounted.symlink_to(certs)
    haproxy: HAProxyInstance = haproxy_factory(mounted, master_worker=False)
    deployer = Deployer(
        DeployConfig.build(
            sockets=[f"unix:{haproxy.socket_path}"], certs_dir=certs, haproxy_certs_dir=mounted
        )
    )
    result, serial = await _deploy(deployer, certs, haproxy_pki)
    assert result.ok, result.errors
    assert result.sockets[0].action == "updated"
    added, serial_b = await _deploy(deployer, certs, haproxy_pki, "b.test")
    assert added.ok and added.sockets[0].action == "added"
    assert sorted(haproxy.cli("show ssl cert").split()) == sorted(
        ["#", "filename", f"{mounted}/a.test.pem", f"{mounted}/b.test.pem"]
    )
    assert haproxy.serial("a.test") == serial and haproxy.serial("b.test") == serial_b
