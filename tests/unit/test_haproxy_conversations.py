"""The runtime API client's conversations, against a stand-in for HAProxy 2.6 (fake_haproxy):
hot updates, removals, the master CLI, and the exact one-line errors an operator reads.

The real HAProxy runs these flows in tests/integration; here they run in the fast tier, so that
mutation testing (docs/MUTATION.md) can see what each line of sidecar/haproxy.py is for.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from sidecar import haproxy
from sidecar.haproxy import (
    HAProxyAccessDenied,
    HAProxyCommandError,
    HAProxyConnectionRefused,
    HAProxyError,
    HAProxyProtocolError,
    HAProxyReloadFailed,
    HAProxyRuntime,
    HAProxySocketMissing,
    HAProxyTimeout,
    HAProxyTransactionBusy,
    HAProxyUnreachable,
    InvalidPayload,
    SslCertListing,
    UpdateResult,
    check_payload,
    cli_word_problem,
    parse_haproxy_address,
    parse_show_ssl_cert,
    parse_show_ssl_cert_list,
)
from tests.unit.fake_haproxy import FakeHAProxy, StoredCert, hex_serial, serve

pytestmark = pytest.mark.anyio

CA = trustme.CA()


def _pem(name: str) -> tuple[bytes, int]:
    leaf = CA.issue_cert(name)
    data = leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes()
    return data, x509.load_pem_x509_certificate(data).serial_number


PEM_A, SERIAL_A = _pem("a.example")
PEM_B, SERIAL_B = _pem("b.example")
TEXT_A = PEM_A.decode().rstrip("\n")
TEXT_B = PEM_B.decode().rstrip("\n")
LOCKED = "Can't show!\nOperations on certificates are currently locked!\n\n"

Connect = Callable[[FakeHAProxy], Awaitable[tuple[HAProxyRuntime, str]]]


@pytest.fixture
async def connect(tmp_path: Path) -> AsyncIterator[Connect]:
    """Serve a FakeHAProxy on a unix socket and return a runtime for it (and its address)."""
    async with asyncio.timeout(60):
        servers: list[object] = []

        async def start(fake: FakeHAProxy) -> tuple[HAProxyRuntime, str]:
            context = serve(fake, tmp_path / f"s{len(servers)}.sock")
            address = await context.__aenter__()
            servers.append(context)
            return HAProxyRuntime(address, timeout=10), address

        yield start
        for context in reversed(servers):
            await context.__aexit__(None, None, None)  # type: ignore[attr-defined]


def loaded(*names: str, crt_list: str = "/c") -> FakeHAProxy:
    fake = FakeHAProxy(crt_lists={crt_list: []})
    for name in names:
        fake.load(name, TEXT_A, crt_list)
    return fake


# -- updating a certificate --------------------------------------------------------------------


async def test_a_loaded_certificate_is_set_committed_and_reports_the_new_serial(
    connect: Connect,
) -> None:
    fake = loaded("/c/a.pem")
    runtime, address = await connect(fake)
    result = await runtime.update_certificate("/c/a.pem", PEM_B, crt_list="/c")
    assert result == UpdateResult(
        address=address,
        path="/c/a.pem",
        created=False,
        added_to_crt_list=False,
        serial=hex_serial(SERIAL_B),
        status="Used",
    )
    assert fake.received == [
        "show ssl cert\n",
        f"set ssl cert /c/a.pem <<\n{TEXT_B}\n\n",
        "commit ssl cert /c/a.pem\n",
        "show ssl cert /c/a.pem\n",
    ]
    assert fake.certs["/c/a.pem"].payload == TEXT_B and fake.transaction is None


async def test_a_new_file_gets_a_store_and_joins_the_crt_list(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    runtime, address = await connect(fake)
    result = await runtime.update_certificate("/c/b.pem", PEM_B, crt_list="/c")
    assert result == UpdateResult(address, "/c/b.pem", True, True, hex_serial(SERIAL_B), "Used")
    assert fake.commands == [
        "show ssl cert",
        "new ssl cert /c/b.pem",
        "set ssl cert /c/b.pem <<",
        "commit ssl cert /c/b.pem",
        "show ssl cert /c/b.pem",
        "show ssl crt-list",
        "add ssl crt-list /c /c/b.pem",
        "show ssl cert /c/b.pem",
    ]
    assert fake.crt_lists == {"/c": ["/c/a.pem", "/c/b.pem"]}


async def test_names_are_used_as_haproxy_spells_them(connect: Connect) -> None:
    # HAProxy keeps the spelling of its configuration ("crt /c/", a doubled slash); the update
    # must address those stores, not create look-alikes. An exact spelling wins over a
    # look-alike.
    fake = loaded("/c//a.pem", crt_list="/c/")
    fake.load("/c/b.pem", TEXT_A, "/c/")
    fake.load("/c//b.pem", TEXT_A, "/c/")
    runtime, _ = await connect(fake)
    result = await runtime.update_certificate("/c/a.pem", PEM_B, crt_list="/c")
    assert (result.path, result.created) == ("/c//a.pem", False)
    assert fake.certs["/c//a.pem"].payload == TEXT_B
    exact = await runtime.update_certificate("/c/b.pem", PEM_B, crt_list="/c")
    assert exact.path == "/c/b.pem" and fake.certs["/c//b.pem"].payload == TEXT_A
    new = await runtime.update_certificate("/c/n.pem", PEM_B, crt_list="/c")
    assert new.added_to_crt_list and "add ssl crt-list /c/ /c/n.pem" in fake.commands


async def test_an_unused_store_from_an_interrupted_attempt_joins_the_crt_list(
    connect: Connect,
) -> None:
    fake = loaded()
    fake.certs["/c/b.pem"] = StoredCert(TEXT_A)  # committed, but in no crt-list
    runtime, _ = await connect(fake)
    result = await runtime.update_certificate("/c/b.pem", PEM_B, crt_list="/c")
    assert (result.created, result.added_to_crt_list, result.status) == (False, True, "Used")
    assert "new ssl cert /c/b.pem" not in fake.commands


async def test_another_files_open_transaction_is_left_alone(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.transaction = ("/c/other.pem", TEXT_A)
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyTransactionBusy) as caught:
        await runtime.update_certificate("/c/a.pem", PEM_B, crt_list="/c")
    assert str(caught.value) == (
        f"haproxy {address}: set ssl cert: a transaction for /c/other.pem is open;"
        " refusing to touch it"
    )
    assert fake.commands == ["show ssl cert"]
    assert fake.transaction == ("/c/other.pem", TEXT_A)


async def test_a_transaction_left_open_for_the_same_file_is_taken_over(
    connect: Connect,
) -> None:
    fake = loaded("/c/a.pem")
    fake.transaction = ("/c/a.pem", TEXT_A)
    runtime, _ = await connect(fake)
    result = await runtime.update_certificate("/c//a.pem", PEM_B, crt_list="/c")
    assert result.serial == hex_serial(SERIAL_B)
    assert fake.certs["/c/a.pem"].payload == TEXT_B and fake.transaction is None


async def test_the_26_trap_another_transaction_updated_by_our_set_is_aborted(
    connect: Connect,
) -> None:
    # Someone opens a transaction for another file between our listing and our set: 2.6 puts
    # our payload into *their* transaction. It must be aborted, or their commit would load our
    # certificate under their name.
    fake = loaded("/c/a.pem", "/c/other.pem")
    fake.transaction = ("/c/other.pem", TEXT_A)
    fake.answers["show ssl cert"] = ["# filename\n/c/a.pem\n/c/other.pem\n\n"]
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyTransactionBusy) as caught:
        await runtime.update_certificate("/c/a.pem", PEM_B, crt_list="/c")
    assert str(caught.value) == (
        f"haproxy {address}: set ssl cert: transaction for /c/other.pem was open"
    )
    assert fake.commands[-1] == "abort ssl cert /c/other.pem"
    assert "commit ssl cert /c/a.pem" not in fake.commands
    assert fake.transaction is None
    assert fake.certs["/c/a.pem"].payload == TEXT_A == fake.certs["/c/other.pem"].payload


async def test_a_refused_payload_aborts_and_reports_haproxys_answer(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    runtime, address = await connect(fake)
    garbage = (
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.update_certificate("/c/a.pem", garbage, crt_list="/c")
    assert str(caught.value) == (
        f"haproxy {address}: set ssl cert: unable to load certificate from file '/c/a.pem'."
        " Can't load the payload Can't update /c/a.pem!"
    )
    assert caught.value.command == "set ssl cert" and caught.value.address == address
    assert fake.commands[-1] == "abort ssl cert /c/a.pem"
    assert fake.certs["/c/a.pem"].payload == TEXT_A


async def test_a_failed_commit_aborts_the_transaction(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.answers["commit ssl cert"] = ["Can't commit /c/a.pem!\n\n"]
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.update_certificate("/c/a.pem", PEM_B, crt_list="/c")
    assert str(caught.value) == f"haproxy {address}: commit ssl cert: Can't commit /c/a.pem!"
    assert fake.commands[-1] == "abort ssl cert /c/a.pem"
    assert fake.transaction is None and fake.certs["/c/a.pem"].payload == TEXT_A


async def test_an_abort_that_fails_does_not_hide_the_error_that_caused_it(
    connect: Connect,
) -> None:
    fake = loaded("/c/a.pem")
    fake.answers["commit ssl cert"] = ["Can't commit /c/a.pem!\n\n"]
    fake.answers["abort ssl cert"] = ["Permission denied\n\n"]
    runtime, _ = await connect(fake)
    with pytest.raises(HAProxyCommandError, match="commit ssl cert: Can't commit"):
        await runtime.update_certificate("/c/a.pem", PEM_B, crt_list="/c")


async def test_a_refused_new_store_is_reported(connect: Connect) -> None:
    fake = loaded()
    fake.answers["new ssl cert"] = ["Certificate '/c/b.pem' already exists!\n\n"]
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.update_certificate("/c/b.pem", PEM_B, crt_list="/c")
    assert str(caught.value) == (
        f"haproxy {address}: new ssl cert: Certificate '/c/b.pem' already exists!"
    )
    assert "set ssl cert /c/b.pem <<" not in fake.commands


async def test_a_store_that_vanishes_after_commit_or_add_is_a_protocol_error(
    connect: Connect,
) -> None:
    not_found = "Can't display the certificate: Not found or the certificate is a bundle!\n\n"
    fake = loaded("/c/a.pem")
    fake.answers["show ssl cert /c/"] = [not_found]
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyProtocolError) as caught:
        await runtime.update_certificate("/c/a.pem", PEM_B, crt_list="/c")
    assert str(caught.value) == f"haproxy {address}: /c/a.pem vanished after commit"
    fake.answers["show ssl cert /c/"] = [None, not_found]
    with pytest.raises(HAProxyProtocolError) as caught:
        await runtime.update_certificate("/c/b.pem", PEM_B, crt_list="/c")
    assert str(caught.value) == f"haproxy {address}: /c/b.pem vanished after add"


async def test_a_refused_crt_list_entry_is_reported(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.update_certificate("/c/b.pem", PEM_B, crt_list="/nolist")
    assert str(caught.value) == (
        f"haproxy {address}: add ssl crt-list: Can't edit the crt-list: crt-list '/nolist'"
        " does not exist!"
    )
    fake.answers["add ssl crt-list"] = ["Inserting certificate '/c/b.pem' in crt-list '/c'.\n\n"]
    with pytest.raises(HAProxyCommandError, match="add ssl crt-list: Inserting"):
        await runtime.update_certificate("/c/b.pem", PEM_B, crt_list="/c")


async def test_concurrent_updates_of_one_haproxy_take_turns(connect: Connect) -> None:
    # One global transaction per HAProxy: without the per-address lock the second update would
    # see the first one's transaction open (or, worse, fall into the 2.6 trap).
    fake = loaded("/c/a.pem", "/c/b.pem")
    runtime, address = await connect(fake)
    other = HAProxyRuntime(address, timeout=10)
    results = await asyncio.gather(
        runtime.update_certificate("/c/a.pem", PEM_B, crt_list="/c"),
        other.update_certificate("/c/b.pem", PEM_B, crt_list="/c"),
        runtime.update_certificate("/c/n.pem", PEM_B, crt_list="/c"),
    )
    assert [r.serial for r in results] == [hex_serial(SERIAL_B)] * 3
    sets = [i for i, c in enumerate(fake.commands) if c.startswith("set ssl cert")]
    commits = [i for i, c in enumerate(fake.commands) if c.startswith("commit ssl cert")]
    assert all(s + 1 == c for s, c in zip(sets, commits, strict=True))


# -- removing a certificate --------------------------------------------------------------------


async def test_removal_leaves_the_crt_list_then_deletes_the_store(connect: Connect) -> None:
    fake = loaded("/c/a.pem", "/c/b.pem", crt_list="/c/")
    runtime, _ = await connect(fake)
    assert await runtime.remove_certificate("/c/a.pem", "/c") is True
    assert fake.commands[-2:] == ["del ssl crt-list /c/ /c/a.pem", "del ssl cert /c/a.pem"]
    assert list(fake.certs) == ["/c/b.pem"] and fake.crt_lists == {"/c/": ["/c/b.pem"]}


async def test_removing_what_haproxy_does_not_have_is_false(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    runtime, _ = await connect(fake)
    assert await runtime.remove_certificate("/c/zz.pem", "/c") is False
    assert fake.commands == ["show ssl cert"]


async def test_a_store_in_no_crt_list_is_still_deleted(connect: Connect) -> None:
    fake = loaded()
    fake.certs["/c/b.pem"] = StoredCert(TEXT_A)
    runtime, _ = await connect(fake)
    assert await runtime.remove_certificate("/c//b.pem", "/c") is True
    assert fake.certs == {}


async def test_refused_removals_are_reported(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.answers["del ssl crt-list"] = ["Can't delete the entry: crt-list '/c' is locked!\n\n"]
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.remove_certificate("/c/a.pem", "/c")
    assert str(caught.value) == (
        f"haproxy {address}: del ssl crt-list: Can't delete the entry: crt-list '/c' is locked!"
    )
    assert "/c/a.pem" in fake.certs
    fake.answers["del ssl crt-list"] = ["Entry '/c/a.pem' deleted in crtlist '/c'!\n\n"]
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.remove_certificate("/c/a.pem", "/c")  # still in the crt-list: in use
    assert str(caught.value) == (
        f"haproxy {address}: del ssl cert: Can't remove the certificate: certificate"
        " '/c/a.pem' in use, can't be deleted!"
    )


# -- queries -----------------------------------------------------------------------------------


async def test_the_listing_names_the_open_transaction(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    runtime, _ = await connect(fake)
    assert await runtime.list_ssl_certs() == SslCertListing(("/c/a.pem",), None)
    fake.transaction = ("/c/a.pem", TEXT_B)
    assert await runtime.list_ssl_certs() == SslCertListing(("/c/a.pem",), "/c/a.pem")
    assert await runtime.show_ssl_certs() == ["/c/a.pem"]
    fake.answers["show ssl cert"] = ["\n"]
    assert await runtime.list_ssl_certs() == SslCertListing((), None)


async def test_a_listing_that_is_not_one_is_a_protocol_error(connect: Connect) -> None:
    fake = loaded()
    fake.answers["show ssl cert"] = ["Can't allocate memory!\n\n"]
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyProtocolError) as caught:
        await runtime.list_ssl_certs()
    assert str(caught.value) == (
        f'haproxy {address}: show ssl cert: unexpected answer "Can\'t allocate memory!\\n\\n"'
    )


async def test_show_ssl_cert_reads_a_store_or_its_pending_transaction(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.transaction = ("/c/a.pem", TEXT_B)
    runtime, address = await connect(fake)
    committed = await runtime.show_ssl_cert("/c/a.pem")
    pending = await runtime.show_ssl_cert("/c/a.pem", transaction=True)
    assert committed is not None and committed.serial == hex_serial(SERIAL_A)
    assert committed.loaded and committed.sans == ("DNS:a.example",)
    assert pending is not None and pending.transaction and pending.serial == hex_serial(SERIAL_B)
    assert fake.commands[-1] == "show ssl cert */c/a.pem"
    assert await runtime.show_ssl_cert("/c/zz.pem") is None
    fake.answers["show ssl cert /c/a.pem"] = ["garbage\n\n"]
    with pytest.raises(HAProxyProtocolError) as caught:
        await runtime.show_ssl_cert("/c/a.pem")
    assert str(caught.value) == (f"haproxy {address}: unexpected line in show ssl cert: 'garbage'")


async def test_crt_lists_and_raw_commands(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.crt_lists["/etc/haproxy/list.txt"] = []
    runtime, _ = await connect(fake)
    fake.answers["show ssl crt-list"] = ["# crt-lists\n/c\n/etc/haproxy/list.txt\n\n"]
    assert await runtime.show_crt_lists() == ["/c", "/etc/haproxy/list.txt"]
    assert await runtime.command("show ssl crt-list") == "/c\n/etc/haproxy/list.txt\n\n"


# -- errors an operator reads --------------------------------------------------------------------


async def test_a_user_level_socket_is_named_as_the_problem(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.admin = False
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyAccessDenied) as caught:
        await runtime.command("del ssl cert /c/a.pem")
    assert str(caught.value) == (
        f"haproxy {address}: del ssl cert: permission denied (the socket needs 'level admin')"
    )
    assert caught.value.command == "del ssl cert"


async def test_an_unknown_command_suggests_the_likely_causes(connect: Connect) -> None:
    runtime, address = await connect(loaded())
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.command("show ssl ocsp-response now please")
    assert str(caught.value) == (
        f"haproxy {address}: show ssl ocsp-response: unknown command (HAProxy too old, or not"
        " a worker socket?)"
    )


async def test_a_master_without_worker_says_so(connect: Connect) -> None:
    fake = loaded()
    fake.master = True
    fake.answers["show ssl cert"] = ["Can't find the target PID matching the prefix '@1'\n"]
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.show_ssl_certs()
    assert str(caught.value) == (f"haproxy {address}: show ssl cert: the master has no worker @1")


async def test_unsendable_names_are_refused_naming_socket_and_command() -> None:
    runtime = HAProxyRuntime("unix:/nonexistent/admin.sock")
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.update_certificate("/c/a b.pem", PEM_A, crt_list="/c")
    assert str(caught.value) == (
        "haproxy unix:/nonexistent/admin.sock: set ssl cert: HAProxy's CLI cannot take the"
        " file name '/c/a b.pem' (space, ;, \\, # or leading * @)"
    )
    assert caught.value.command == "set ssl cert"


async def test_sockets_that_cannot_be_used_are_named(tmp_path: Path) -> None:
    missing = HAProxyRuntime(f"unix:{tmp_path}/missing.sock")
    with pytest.raises(HAProxySocketMissing) as caught:
        await missing.show_ssl_certs()
    assert str(caught.value) == f"haproxy unix:{tmp_path}/missing.sock: socket does not exist"
    assert caught.value.address == f"unix:{tmp_path}/missing.sock"

    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(dead))  # a socket file nobody listens on: left by a stopped HAProxy
    with pytest.raises(HAProxyConnectionRefused) as refused:
        await HAProxyRuntime(f"unix:{dead}").show_ssl_certs()
    assert str(refused.value) == f"haproxy unix:{dead}: connection refused"

    (tmp_path / "file").write_text("")
    with pytest.raises(HAProxyUnreachable) as other:
        await HAProxyRuntime(f"unix:{tmp_path}/file/admin.sock").show_ssl_certs()
    assert str(other.value) == f"haproxy unix:{tmp_path}/file/admin.sock: Not a directory"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # a port that is ours and closed
        port = sock.getsockname()[1]
        with pytest.raises(HAProxyConnectionRefused):
            await HAProxyRuntime(f"tcp:127.0.0.1:{port}").show_ssl_certs()


async def test_a_tcp_runtime_api_works_like_a_unix_one() -> None:
    fake = loaded("/c/a.pem")
    async with serve(fake) as address:
        assert address.startswith("tcp:127.0.0.1:")
        assert await HAProxyRuntime(address, timeout=10).show_ssl_certs() == ["/c/a.pem"]


async def test_an_answer_that_never_comes_is_a_timeout(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        await asyncio.Event().wait()  # never answers, never closes

    server = await asyncio.start_unix_server(mute, str(path))
    try:
        with pytest.raises(HAProxyTimeout) as caught:
            await HAProxyRuntime(f"unix:{path}", timeout=0.2).show_ssl_certs()
        assert str(caught.value) == f"haproxy unix:{path}: no answer within 0.2 s"
    finally:
        server.close()


# -- a store locked by another command -----------------------------------------------------------


async def test_a_locked_store_is_retried_with_doubling_delays_up_to_a_fifth_of_a_second(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = loaded("/c/a.pem")
    fake.answers["show ssl cert"] = [LOCKED] * 8
    runtime, _ = await connect(fake)
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: object) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(haproxy.asyncio, "sleep", recording_sleep)
    assert await runtime.show_ssl_certs() == ["/c/a.pem"]
    assert delays == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2]


async def test_waiting_for_a_locked_store_never_sleeps_past_the_deadline(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = loaded("/c/a.pem")
    fake.answers["show ssl cert"] = [LOCKED] * 1000
    runtime, address = await connect(fake)
    runtime.timeout = 0.3
    loop = asyncio.get_running_loop()
    ends: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: object) -> None:
        ends.append(loop.time() + delay)
        await real_sleep(delay)

    monkeypatch.setattr(haproxy.asyncio, "sleep", recording_sleep)
    start = loop.time()
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.show_ssl_certs()
    assert str(caught.value) == (
        f"haproxy {address}: show ssl cert: the certificate store stayed locked by another"
        " command for 0.3 s"
    )
    assert ends and max(ends) <= start + 0.3 + 0.005  # the client's deadline is a bit later


async def test_a_locked_answer_is_known_by_its_first_two_lines_alone(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.answers["show ssl cert"] = [
        "Can't show!\nOperations on certificates are currently locked!"
    ]
    runtime, _ = await connect(fake)
    assert await runtime.show_ssl_certs() == ["/c/a.pem"]
    assert len(fake.received) == 2


# -- the master CLI ------------------------------------------------------------------------------


async def test_the_master_cli_routes_certificate_commands_to_the_worker(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.master = True
    runtime, _ = await connect(fake)
    result = await runtime.update_certificate("/c/a.pem", PEM_B, crt_list="/c")
    assert result.serial == hex_serial(SERIAL_B)
    assert all(data.startswith("@1 ") for data in fake.received)
    info = await runtime.show_proc()
    assert (info.master_pid, info.reloads, info.failed_reloads) == (1, 0, 0)
    assert info.worker_pids == (101,)
    assert fake.received[-1] == "show proc\n"


async def test_master_commands_need_a_master_socket(connect: Connect) -> None:
    runtime, address = await connect(loaded())
    message = f"haproxy {address}: {{}}: needs a master CLI socket (write it master:unix:/path)"
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.show_proc()
    assert str(caught.value) == message.format("show proc")
    with pytest.raises(HAProxyCommandError) as caught:
        await runtime.master_reload()
    assert str(caught.value) == message.format("reload")


async def test_a_master_reload_waits_for_the_new_worker(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.master = True
    runtime, _ = await connect(fake)
    info = await runtime.master_reload(deadline=30, poll_interval=0.01)
    assert (info.reloads, info.failed_reloads, info.worker_pids) == (1, 0, (102,))
    assert fake.commands == ["show proc", "reload", "show proc"]


async def test_a_reload_the_master_reports_failed_raises(connect: Connect) -> None:
    fake = loaded()
    fake.master = True
    fake.fail_reloads = True
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyReloadFailed) as caught:
        await runtime.master_reload(deadline=30, poll_interval=0.01)
    assert str(caught.value) == f"haproxy {address}: reload: the new configuration did not load"


async def test_a_newer_masters_failure_answer_fails_at_once(connect: Connect) -> None:
    fake = loaded()
    fake.master = True
    fake.answers["reload"] = ["Success=0\n--\n[ALERT] config: bad line\n"]
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyReloadFailed) as caught:
        await runtime.master_reload(deadline=30, poll_interval=0.01)
    assert str(caught.value) == f"haproxy {address}: reload: -- [ALERT] config: bad line"
    assert fake.commands == ["show proc", "reload"]


async def test_a_reload_never_seen_is_a_timeout(connect: Connect) -> None:
    fake = loaded()
    fake.master = True
    fake.answers["reload"] = ["Success=1\n"]  # but the counters never move
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyTimeout) as caught:
        await runtime.master_reload(deadline=0.2, poll_interval=0.01)
    assert str(caught.value) == f"haproxy {address}: reload not seen within 0.2 s"


async def test_a_reload_counts_only_once_its_new_worker_is_listed(
    connect: Connect,
) -> None:
    # 2.6 re-executes itself: "show proc" may find nobody, or a master whose new worker is not
    # listed yet; the reload is the counter moving *and* a worker being there.
    fake = loaded()
    fake.master = True
    no_worker = (
        "#<PID> <type> <reloads> <uptime> <version>\n1 master 1 [failed: 0] 0d 2.6.12\n"
        "# workers\n# programs\n\n"
    )
    fake.answers["show proc"] = [None, no_worker, None]
    runtime, _ = await connect(fake)
    info = await runtime.master_reload(deadline=30, poll_interval=0.01)
    assert info.worker_pids == (102,)
    assert fake.commands.count("show proc") == 3


# -- pure helpers: exact texts -------------------------------------------------------------------


def test_long_error_texts_are_cut_to_300_characters() -> None:
    exact = HAProxyError("unix:/s", "x" * 300)
    assert exact.message == "x" * 300
    cut = HAProxyError("unix:/s", "y" * 301)
    assert cut.message == "y" * 297 + "..."


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("é".encode(), "PEM payload is not ASCII"),
        (PEM_A.replace(b"\n", b"\r\n"), "PEM payload has CR characters"),
        (PEM_A.split(b"-----END CERTIFICATE-----\n")[1], "PEM payload has no certificate"),
        (PEM_A.split(b"-----END CERTIFICATE-----\n")[0], "PEM payload has no private key"),
    ],
)
def test_check_payload_messages(data: bytes, message: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        check_payload(data)
    assert str(caught.value) == message


def test_an_empty_file_name_is_named_so() -> None:
    assert cli_word_problem("") == "empty file name"


def test_address_errors_say_what_is_expected() -> None:
    with pytest.raises(ValueError) as caught:
        parse_haproxy_address("ftp:host")
    assert str(caught.value) == (
        "HAProxy socket 'ftp:host': expected unix:/path, tcp:host:port, master:unix:/path or"
        " master:tcp:host:port"
    )


def test_ipv6_addresses_in_either_case_and_the_port_range() -> None:
    assert parse_haproxy_address("tcp:[FE80::A]:9999").host == "FE80::A"
    assert parse_haproxy_address("tcp:[fe80::a]:9999").host == "fe80::a"
    assert parse_haproxy_address("tcp:h:65535").port == 65535
    with pytest.raises(ValueError, match="port 65536 out of range"):
        parse_haproxy_address("tcp:h:65536")


def test_show_ssl_cert_keeps_every_field() -> None:
    text = (
        "\nFilename: /c/a.pem\nStatus: Used\nSerial: 0A\nIssuer: /CN=CA\n"
        "SHA1 FingerPrint: AB12\nOCSP Response Key: \n\n"
    )
    info = parse_show_ssl_cert(text)
    assert info is not None
    assert (info.issuer, info.sha1_fingerprint, info.sans) == ("/CN=CA", "AB12", ())
    assert info.raw["Serial"] == "0A" and info.raw["OCSP Response Key"] == ""


def test_show_ssl_cert_errors_quote_the_line_and_name_the_fields() -> None:
    line = "x" * 100
    with pytest.raises(ValueError) as caught:
        parse_show_ssl_cert(line)
    assert str(caught.value) == f"unexpected line in show ssl cert: {'x' * 80!r}"
    with pytest.raises(ValueError) as caught:
        parse_show_ssl_cert("Serial: 0A\n")
    assert str(caught.value) == "show ssl cert: no Filename/Status in the answer"


def test_a_listing_without_transaction_has_none() -> None:
    assert parse_show_ssl_cert_list("# filename\n/c/a.pem\n\n").transaction is None


# -- more edges ------------------------------------------------------------------------------


def test_show_proc_skips_blank_lines_and_names_what_it_cannot_read() -> None:
    text = (
        "\n#<PID> <type> <reloads> <uptime> <version>\n\n"
        "7 master 4 [failed: 2] 0d 2.6.12\n# workers\n\n8 worker 0 0d 2.6.12\n"
    )
    assert haproxy.parse_show_proc(text) == haproxy.ProcessInfo(7, 4, 2, (8,))
    bad = "7 master four [failed: 2] " + "x" * 100
    with pytest.raises(ValueError) as caught:
        haproxy.parse_show_proc(bad)
    assert str(caught.value) == f"show proc: unexpected master line {bad[:80]!r}"
    with pytest.raises(ValueError) as caught:
        haproxy.parse_show_proc("# workers\n8 worker 0 0d 2.6.12\n")
    assert str(caught.value) == "show proc: no master line"


async def test_a_show_proc_answer_that_is_not_one_is_a_protocol_error(connect: Connect) -> None:
    fake = loaded()
    fake.master = True
    fake.answers["show proc"] = ["Unknown keyword\n"]
    runtime, address = await connect(fake)
    with pytest.raises(HAProxyProtocolError) as caught:
        await runtime.show_proc()
    assert str(caught.value) == f"haproxy {address}: show proc: no master line"


async def test_every_command_names_itself_when_refusing_a_file_name() -> None:
    runtime = HAProxyRuntime("unix:/nonexistent/admin.sock")
    cases = [
        (runtime.show_ssl_cert("/c/a;b.pem"), "show ssl cert", "'/c/a;b.pem'"),
        (runtime.remove_certificate("/c/a.pem", "#c"), "del ssl cert", "'#c'"),
        (runtime.remove_certificate("@a", "/c"), "del ssl cert", "'@a'"),
        (runtime.update_certificate("/c/a.pem", PEM_A, crt_list="/c d"), "set ssl cert", "'/c d'"),
    ]
    for call, verb, quoted in cases:
        with pytest.raises(HAProxyCommandError) as caught:
            await call
        assert caught.value.command == verb
        assert f"cannot take the file name {quoted}" in str(caught.value)


async def test_an_answer_that_is_not_utf8_is_read_with_replacements(connect: Connect) -> None:
    fake = loaded("/c/a.pem")
    fake.answers["show ssl cert /c/a.pem"] = [
        "Filename: /c/a.pem\nStatus: Used\nSubject: /CN=caf\udcff\n\n"
    ]
    runtime, _ = await connect(fake)
    info = await runtime.show_ssl_cert("/c/a.pem")
    assert info is not None and info.subject == "/CN=caf\ufffd"


async def test_an_answer_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "big.sock"
    listing = b"# filename\n" + b"/c/x.pem\n" * ((haproxy.MAX_ANSWER_BYTES - 11) // 9)
    listing += b"\n" * (haproxy.MAX_ANSWER_BYTES - len(listing))
    assert len(listing) == haproxy.MAX_ANSWER_BYTES

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.write(listing)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(big, str(path))
    try:
        names = await HAProxyRuntime(f"unix:{path}", timeout=30).show_ssl_certs()
        assert len(names) == (haproxy.MAX_ANSWER_BYTES - 11) // 9
    finally:
        server.close()


async def test_a_connection_closed_without_an_answer_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "rude.sock"

    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closing with the command unread makes the kernel reset the connection.
        writer.transport.abort()

    server = await asyncio.start_unix_server(rude, str(path))
    try:
        with pytest.raises(HAProxyUnreachable) as caught:
            await HAProxyRuntime(f"unix:{path}", timeout=10).show_ssl_certs()
        assert str(caught.value) == f"haproxy unix:{path}: connection closed by HAProxy"
    finally:
        server.close()


async def test_a_listing_may_start_with_a_blank_line(connect: Connect) -> None:
    fake = loaded()
    fake.answers["show ssl cert"] = ["\n# filename\n/c/a.pem\n\n"]
    runtime, _ = await connect(fake)
    assert await runtime.show_ssl_certs() == ["/c/a.pem"]


async def test_a_master_reload_polls_every_twentieth_of_a_second_by_default(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = loaded()
    fake.master = True
    before = fake._master("show proc")
    fake.answers["show proc"] = [None, before, None]
    runtime, _ = await connect(fake)
    polls: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: object) -> None:
        polls.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(haproxy.asyncio, "sleep", recording_sleep)
    info = await runtime.master_reload()
    assert info.reloads == 1 and polls == [0.05]


async def test_an_answer_one_byte_over_the_limit_is_refused_naming_the_socket(
    tmp_path: Path,
) -> None:
    path = tmp_path / "big.sock"
    answer = b"# filename\n" + b"x" * (haproxy.MAX_ANSWER_BYTES - 10)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(big, str(path))
    try:
        with pytest.raises(HAProxyProtocolError) as caught:
            await HAProxyRuntime(f"unix:{path}", timeout=30).show_ssl_certs()
    finally:
        server.close()
    assert len(answer) == haproxy.MAX_ANSWER_BYTES + 1
    assert str(caught.value) == (
        f"haproxy unix:{path}: answer larger than {haproxy.MAX_ANSWER_BYTES} bytes:"
        " not HAProxy's CLI?"
    )
