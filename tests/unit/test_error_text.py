"""The one set of error-to-line helpers (sidecar.errors) the control socket, the health server,
the deployer and the HAProxy client share."""

from __future__ import annotations

import errno
import socket

from ca_client.challenges._listen import dual_stack_socket
from sidecar.errors import error_text, os_error_text
from sidecar.haproxy import _one_line


def test_error_text_is_one_line_or_the_type_name() -> None:
    assert error_text(ValueError("a\n   b\tc")) == "a b c"
    assert error_text(ValueError()) == "ValueError"
    assert error_text(RuntimeError("  \n ")) == "RuntimeError"


def test_os_error_text_prefers_the_errno_words() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 1)")
    assert os_error_text(refused) == "connection refused"
    assert os_error_text(OSError("no errno\nhere")) == "no errno here"
    assert os_error_text(OSError()) == "OSError"


def test_haproxy_lines_are_cut_after_being_made_one() -> None:
    assert _one_line("Can't find\n  the file  x\n") == "Can't find the file x"
    long = _one_line("word " * 100, limit=20)
    assert long == "word word word wo..." and len(long) == 20


def test_the_shared_dual_stack_socket_takes_ipv4_too() -> None:
    sock = dual_stack_socket(0)
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        sock.close()
