"""CA-bundle checks and the CA trust context, with real TLS handshakes on loopback."""

from __future__ import annotations

import argparse
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
import trustme

from sidecar.config import load_settings, sources
from sidecar.errors import ConfigError
from sidecar.preflight import check_ca_bundle
from sidecar.trust import build_ssl_context, load_ca_bundle


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def bundle(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "root_ca.crt"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA) -> Iterator[int]:
    """A TLS server for ``localhost`` on an ephemeral loopback port, one handshake per client."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    with server_context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), which close() does not
    listener.close()
    thread.join(timeout=5)


def handshake(context: ssl.SSLContext, port: int, server_hostname: str = "localhost") -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(2)


def test_context_trusts_the_bundle(bundle: Path, tls_server: int) -> None:
    context = build_ssl_context(bundle, system_trust=False)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert handshake(context, tls_server) == b"ok"


def test_context_refuses_another_root(tmp_path: Path, tls_server: int) -> None:
    other = tmp_path / "other.crt"
    trustme.CA().cert_pem.write_to_path(str(other))
    context = build_ssl_context(other, system_trust=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, tls_server)


def test_context_checks_the_host_name(bundle: Path, tls_server: int) -> None:
    context = build_ssl_context(bundle, system_trust=False)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)hostname"):
        handshake(context, tls_server, server_hostname="step-ca.example")


def test_system_trust_adds_the_system_store(bundle: Path) -> None:
    only = build_ssl_context(bundle, system_trust=False)
    both = build_ssl_context(bundle, system_trust=True)
    assert only.cert_store_stats()["x509_ca"] == 1
    # Debian's store has roots; if this machine had none, the counts would be equal.
    assert both.cert_store_stats()["x509_ca"] >= only.cert_store_stats()["x509_ca"]


def test_ssl_cert_file_in_the_environment_is_ignored(
    bundle: Path, tmp_path: Path, tls_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.crt"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    context = build_ssl_context(other, system_trust=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, tls_server)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "no PEM certificate"),
        (b"hello\n", "no PEM certificate"),
        (b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00\xff", "not a PEM file"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "cannot parse"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "cannot parse"),
        (b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n", "no PEM certificate"),
    ],
)
def test_bad_bundles(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=fragment) as caught:
        load_ca_bundle(path, setting="CERT_SIDECAR_CA_BUNDLE")
    assert caught.value.setting == "CERT_SIDECAR_CA_BUNDLE"
    with pytest.raises(ConfigError, match=fragment):
        build_ssl_context(path, system_trust=False)
    # Never echo key material from a misplaced key file.
    assert "MIIB" not in str(caught.value)


def test_missing_and_directory_bundles(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_ca_bundle(tmp_path / "nope.crt")
    with pytest.raises(ConfigError, match="is a directory"):
        load_ca_bundle(tmp_path)


def test_check_ca_bundle_names_the_setting_as_written(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = load_settings(argparse.Namespace(domains=["a.example"], ca_bundle=str(bundle)), {})
    check_ca_bundle(good)
    missing = str(tmp_path / "missing.crt")
    from_flag = load_settings(argparse.Namespace(domains=["a.example"], ca_bundle=missing), {})
    with pytest.raises(ConfigError) as caught:
        check_ca_bundle(from_flag)
    assert str(caught.value) == f"--ca-bundle: {missing} does not exist"
    from_env = load_settings(
        argparse.Namespace(domains=["a.example"]), {"CERT_SIDECAR_CA_BUNDLE": missing}
    )
    with pytest.raises(ConfigError) as caught:
        check_ca_bundle(from_env)
    assert caught.value.setting == "CERT_SIDECAR_CA_BUNDLE"
    # The default (/root_ca/root_ca.crt, test_config.py) may exist on the machine running the
    # tests: point the defaults table at a missing file so the case runs everywhere.
    monkeypatch.setattr(
        sources, "DEFAULTS", MappingProxyType({**sources.DEFAULTS, "ca_bundle": missing})
    )
    default = load_settings(argparse.Namespace(domains=["a.example"]), {})
    assert default.acme.ca_bundle == Path(missing)
    with pytest.raises(ConfigError) as caught:
        check_ca_bundle(default)
    assert caught.value.setting == "--ca-bundle (default)"
    assert str(caught.value) == f"--ca-bundle (default): {missing} does not exist"
