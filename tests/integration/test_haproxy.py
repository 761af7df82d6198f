"""sidecar.haproxy against a real HAProxy 2.6: hot updates seen by real TLS handshakes."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from sidecar import pem as pem_layout
from sidecar.haproxy import (
    HAProxyAccessDenied,
    HAProxyCommandError,
    HAProxyConnectionRefused,
    HAProxyRuntime,
    HAProxySocketMissing,
    HAProxyTransactionBusy,
    InvalidPayload,
    normalize_serial,
    parse_haproxy_address,
)
from tests.peers.haproxy import HAProxyInstance, TestPKI, handshake, haproxy_check_config

pytestmark = [pytest.mark.haproxy, pytest.mark.anyio]


def _start_with(haproxy_factory, tmp_path: Path, pki: TestPKI, **options) -> tuple:  # type: ignore[no-untyped-def]
    certs = tmp_path / "certs"
    certs.mkdir()
    data, serial = pki.issue("a.test", "b.test")
    (certs / "a.test.pem").write_bytes(data)
    instance: HAProxyInstance = haproxy_factory(certs, **options)
    return certs, instance, serial


async def test_update_of_a_loaded_certificate_is_served_without_restart(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, haproxy, old_serial = _start_with(haproxy_factory, tmp_path, haproxy_pki)
    worker = haproxy.worker_pid()
    assert haproxy.serial("a.test") == old_serial
    runtime = HAProxyRuntime(f"unix:{haproxy.socket_path}")
    path = str(certs / "a.test.pem")
    assert await runtime.show_ssl_certs() == [path]

    new_pem, new_serial = haproxy_pki.issue("a.test", "b.test")
    started = time.perf_counter()
    result = await runtime.update_certificate(path, new_pem, crt_list=str(certs))
    # commit is synchronous: the very next handshake gets the new certificate.
    served = handshake("127.0.0.1", haproxy.port, "b.test", haproxy_pki.root_pem)
    print(f"\nruntime API update -> served: {(time.perf_counter() - started) * 1000:.1f} ms")

    assert served.serial_number == new_serial
    assert result.created is False
    assert result.added_to_crt_list is False
    assert result.status == "Used"
    assert result.serial == normalize_serial(new_serial)
    info = await runtime.show_ssl_cert(path)
    assert info is not None and info.loaded and int(info.serial or "0", 16) == new_serial
    assert "DNS:a.test" in info.sans
    assert haproxy.worker_pid() == worker, "HAProxy must not have been restarted"
    assert haproxy.restart_count() == 0


async def test_measure_update_to_served(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    """Time from the update call to a handshake serving the new serial (printed, not asserted:
    the machine is shared). Every round must still serve exactly the certificate just sent."""
    certs, haproxy, _ = _start_with(haproxy_factory, tmp_path, haproxy_pki)
    runtime = HAProxyRuntime(f"unix:{haproxy.socket_path}")
    path = str(certs / "a.test.pem")
    pems = [haproxy_pki.issue("a.test") for _ in range(20)]
    timings = []
    for data, serial in pems:
        started = time.perf_counter()
        await runtime.update_certificate(path, data, crt_list=str(certs))
        served = haproxy.serial("a.test")
        timings.append((time.perf_counter() - started) * 1000)
        assert served == serial
    timings.sort()
    median, worst = timings[len(timings) // 2], timings[-1]
    print(f"\nupdate -> served, {len(timings)} rounds: median {median:.1f} ms, max {worst:.1f} ms")


async def test_new_certificate_added_to_an_empty_directory(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    haproxy = haproxy_factory(certs, strict_sni=True)
    with pytest.raises(ssl.SSLError):
        handshake("127.0.0.1", haproxy.port, "new.test")  # strict-sni, nothing loaded
    runtime = HAProxyRuntime(f"unix:{haproxy.socket_path}")
    assert await runtime.show_ssl_certs() == []

    data, serial = haproxy_pki.issue("new.test")
    path = str(certs / "new.test.pem")
    (certs / "new.test.pem").write_bytes(data)
    result = await runtime.update_certificate(path, data, crt_list=str(certs))

    assert result.created and result.added_to_crt_list and result.status == "Used"
    assert handshake("127.0.0.1", haproxy.port, "new.test", haproxy_pki.root_pem).serial_number == (
        serial
    )
    # A second update of the now loaded file takes the plain set+commit path.
    data2, serial2 = haproxy_pki.issue("new.test")
    again = await runtime.update_certificate(path, data2, crt_list=str(certs) + "/")
    assert not again.created and not again.added_to_crt_list
    assert haproxy.serial("new.test") == serial2


async def test_master_cli_update_and_reload(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, haproxy, _ = _start_with(haproxy_factory, tmp_path, haproxy_pki, master_worker=True)
    master = HAProxyRuntime(f"master:unix:{haproxy.master_socket_path}")
    path = str(certs / "a.test.pem")
    data, serial = haproxy_pki.issue("a.test")
    result = await master.update_certificate(path, data, crt_list=str(certs))
    assert int(result.serial or "0", 16) == serial
    assert haproxy.serial("a.test") == serial

    # A reload starts a worker that reads the file from disk.
    data2, serial2 = haproxy_pki.issue("a.test")
    (certs / "a.test.pem").write_bytes(data2)
    worker = haproxy.worker_pid()
    info = await master.master_reload()
    assert info.reloads == 1 and info.failed_reloads == 0
    assert worker not in info.worker_pids
    assert haproxy.serial("a.test") == serial2
    info_after = await master.show_ssl_cert(path)
    assert info_after is not None and info_after.serial == normalize_serial(serial2)


async def test_master_reload_failure_is_reported(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    from sidecar.haproxy import HAProxyReloadFailed

    certs, haproxy, serial = _start_with(haproxy_factory, tmp_path, haproxy_pki)
    (certs / "broken.pem").write_text("not a certificate\n")
    master = HAProxyRuntime(f"master:unix:{haproxy.master_socket_path}")
    with pytest.raises(HAProxyReloadFailed, match="did not load"):
        await master.master_reload()
    assert haproxy.serial("a.test") == serial  # the old worker keeps serving


async def test_missing_and_refused_sockets(tmp_path: Path) -> None:
    with pytest.raises(HAProxySocketMissing, match="does not exist") as missing:
        await HAProxyRuntime(f"unix:{tmp_path}/nope.sock").show_ssl_certs()
    assert "\n" not in str(missing.value)

    # A socket file nobody listens on: what a crashed HAProxy leaves behind.
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))
    with pytest.raises(HAProxyConnectionRefused):
        await HAProxyRuntime(f"unix:{stale}").show_ssl_certs()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(HAProxyConnectionRefused):
            await HAProxyRuntime(f"tcp:127.0.0.1:{port}").show_ssl_certs()


async def test_silent_socket_times_out(tmp_path: Path) -> None:
    """A listener that accepts and never answers (a wedged process): a fault a real HAProxy
    will not produce on demand, so a bare asyncio server stands in for it."""
    import asyncio

    from sidecar.haproxy import HAProxyTimeout

    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    path = tmp_path / "silent.sock"
    server = await asyncio.start_unix_server(accept, path=str(path))
    async with server:
        with pytest.raises(HAProxyTimeout, match=r"no answer within 0\.2 s"):
            await HAProxyRuntime(f"unix:{path}", timeout=0.2).show_ssl_certs()
        for writer in held:
            writer.close()


async def test_operator_level_socket_is_access_denied(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, haproxy, serial = _start_with(
        haproxy_factory, tmp_path, haproxy_pki, socket_level="operator"
    )
    runtime = HAProxyRuntime(f"unix:{haproxy.socket_path}")
    data, _ = haproxy_pki.issue("a.test")
    with pytest.raises(HAProxyAccessDenied, match="level admin"):
        await runtime.update_certificate(str(certs / "a.test.pem"), data, crt_list=str(certs))
    assert haproxy.serial("a.test") == serial


async def test_failed_commit_is_aborted_and_old_certificate_stays(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, haproxy, serial = _start_with(haproxy_factory, tmp_path, haproxy_pki)
    runtime = HAProxyRuntime(f"unix:{haproxy.socket_path}")
    good, _ = haproxy_pki.issue("a.test")
    other, _ = haproxy_pki.issue("a.test")
    # This certificate with another certificate's key: HAProxy refuses it at commit.
    mismatched = good.split(b"-----BEGIN EC PRIVATE KEY-----")[0] + (
        b"-----BEGIN EC PRIVATE KEY-----" + other.split(b"-----BEGIN EC PRIVATE KEY-----")[1]
    )
    with pytest.raises(HAProxyCommandError, match="commit ssl cert") as error:
        await runtime.update_certificate(str(certs / "a.test.pem"), mismatched, crt_list=str(certs))
    assert "PRIVATE KEY" not in str(error.value)
    listing = await runtime.list_ssl_certs()
    assert listing.transaction is None, "the failed transaction must have been aborted"
    assert haproxy.serial("a.test") == serial


async def test_payload_with_blank_lines_is_rejected_before_any_command(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, haproxy, serial = _start_with(haproxy_factory, tmp_path, haproxy_pki)
    runtime = HAProxyRuntime(f"unix:{haproxy.socket_path}")
    data, _ = haproxy_pki.issue("a.test")
    with_blank = data.replace(b"-----END CERTIFICATE-----\n", b"-----END CERTIFICATE-----\n\n", 1)
    with pytest.raises(InvalidPayload, match="blank line"):
        await runtime.update_certificate(str(certs / "a.test.pem"), with_blank, crt_list=str(certs))
    assert (await runtime.list_ssl_certs()).transaction is None
    assert haproxy.serial("a.test") == serial


async def test_foreign_transaction_is_left_alone(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, haproxy, serial = _start_with(haproxy_factory, tmp_path, haproxy_pki)
    other_data, _ = haproxy_pki.issue("b.test")
    (certs / "b.test.pem").write_bytes(other_data)
    runtime = HAProxyRuntime(f"unix:{haproxy.socket_path}")
    # Someone else's half-done transaction on another file.
    haproxy.cli(f"new ssl cert {certs}/b.test.pem")
    payload = other_data.decode().rstrip("\n")
    assert "Transaction created" in haproxy.cli(
        f"set ssl cert {certs}/b.test.pem <<\n{payload}\n\n"
    )
    data, _ = haproxy_pki.issue("a.test")
    with pytest.raises(HAProxyTransactionBusy, match=r"b\.test\.pem"):
        await runtime.update_certificate(str(certs / "a.test.pem"), data, crt_list=str(certs))
    listing = await runtime.list_ssl_certs()
    assert listing.transaction == f"{certs}/b.test.pem"
    pending = await runtime.show_ssl_cert(f"{certs}/b.test.pem", transaction=True)
    assert pending is not None and "DNS:b.test" in pending.sans  # not overwritten by ours
    assert haproxy.serial("a.test") == serial


async def test_remove_certificate(haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path) -> None:
    certs, haproxy, _ = _start_with(haproxy_factory, tmp_path, haproxy_pki)
    runtime = HAProxyRuntime(f"unix:{haproxy.socket_path}")
    path = str(certs / "a.test.pem")
    assert await runtime.remove_certificate(path, str(certs)) is True
    assert await runtime.show_ssl_certs() == []
    with pytest.raises(ssl.SSLError):
        handshake("127.0.0.1", haproxy.port, "a.test")
    assert await runtime.remove_certificate(path, str(certs)) is False


async def test_tcp_stats_socket(haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path) -> None:
    from tests.peers.processes import free_port

    port = free_port()
    certs, haproxy, _ = _start_with(
        haproxy_factory,
        tmp_path,
        haproxy_pki,
        extra_global=[f"stats socket ipv4@127.0.0.1:{port} level admin"],
    )
    runtime = HAProxyRuntime(parse_haproxy_address(f"tcp:127.0.0.1:{port}"))
    data, serial = haproxy_pki.issue("a.test")
    await runtime.update_certificate(str(certs / "a.test.pem"), data, crt_list=str(certs))
    assert haproxy.serial("a.test") == serial


def test_haproxy_check_accepts_the_combined_pem(haproxy_pki: TestPKI, tmp_path: Path) -> None:
    """The layout sidecar.pem writes (leaf, intermediates, key) is what HAProxy loads."""
    leaf = haproxy_pki.intermediate.issue_cert("check.test")
    data = pem_layout.combined_pem(
        leaf.cert_chain_pems[0].bytes(),
        [blob.bytes() for blob in leaf.cert_chain_pems[1:]],
        leaf.private_key_pem.bytes(),
    )
    assert b"\n\n" not in data
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "check.test.pem").write_bytes(data)
    config = (
        "defaults\n  mode http\n  timeout client 5s\n  timeout server 5s\n  timeout connect 5s\n"
        # -c parses and loads certificates but binds nothing, so any port will do.
        f"frontend f\n  bind 127.0.0.1:8443 ssl crt {certs} strict-sni\n"
        "  http-request return status 200\n"
    )
    checked = haproxy_check_config(config, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # And the check is not vacuous: a PEM whose key does not match fails it.
    other = haproxy_pki.intermediate.issue_cert("other.test")
    (certs / "check.test.pem").write_bytes(
        b"".join(b.bytes() for b in leaf.cert_chain_pems) + other.private_key_pem.bytes()
    )
    assert haproxy_check_config(config, tmp_path).returncode != 0
