"""Conversations with one HAProxy must not collide (issue 7: "Can't show!").

HAProxy 2.6 guards its certificate store with one lock that a CLI command takes with a
*try*-lock: ``show ssl cert <file>`` holds it until its whole answer is written, ``set`` and
``commit ssl cert`` hold it while they work. A second command arriving meanwhile is not queued:
it is answered "Can't show!\\nOperations on certificates are currently locked!" (or "Can't
update ..."). Two status checks of one HAProxy at the same moment hit exactly that.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.haproxy import HAProxyRuntime
from tests.peers.haproxy import HAProxyInstance, TestPKI

pytestmark = [pytest.mark.haproxy, pytest.mark.anyio]


def _start(haproxy_factory, tmp_path: Path, pki: TestPKI, count: int) -> tuple:  # type: ignore[no-untyped-def]
    certs = tmp_path / "certs"
    certs.mkdir()
    for n in range(count):
        data, _ = pki.issue(f"c{n}.test")
        (certs / f"c{n}.test.pem").write_bytes(data)
    instance: HAProxyInstance = haproxy_factory(certs)
    return certs, instance


async def test_concurrent_checks_of_one_haproxy_all_get_their_answer(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, haproxy = _start(haproxy_factory, tmp_path, haproxy_pki, 8)
    paths = [str(certs / f"c{n}.test.pem") for n in range(8)]
    runtimes = [HAProxyRuntime(f"unix:{haproxy.socket_path}") for _ in paths]
    # Many rounds of every certificate checked at once, as the scheduler's checks and a
    # /readyz or status request do; before the fix some answers were "Can't show!".
    for _ in range(25):
        infos = await asyncio.gather(
            *(runtime.show_ssl_cert(path) for runtime, path in zip(runtimes, paths, strict=True))
        )
        assert all(info is not None and info.loaded for info in infos)


async def test_checks_during_updates_get_their_answer(
    haproxy_factory, haproxy_pki: TestPKI, tmp_path: Path
) -> None:
    certs, haproxy = _start(haproxy_factory, tmp_path, haproxy_pki, 2)
    runtime = HAProxyRuntime(f"unix:{haproxy.socket_path}")
    updated, checked = str(certs / "c0.test.pem"), str(certs / "c1.test.pem")
    pems = [haproxy_pki.issue("c0.test") for _ in range(10)]

    async def updates() -> None:
        for data, _ in pems:
            await runtime.update_certificate(updated, data, crt_list=str(certs))

    async def checks() -> int:
        count = 0
        while not updater.done():
            info = await HAProxyRuntime(f"unix:{haproxy.socket_path}").show_ssl_cert(checked)
            assert info is not None and info.loaded
            count += 1
        return count

    updater = asyncio.ensure_future(updates())
    counts = await asyncio.gather(checks(), checks(), updater)
    assert counts[0] > 0 and counts[1] > 0
