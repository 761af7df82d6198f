"""--system-trust adds OpenSSL's own store, never what SSL_CERT_FILE / SSL_CERT_DIR name."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from sidecar.trust import build_ssl_context


def _subjects(context_pems: list[dict[str, object]]) -> set[str]:
    return {repr(cert.get("subject")) for cert in context_pems}


def test_system_trust_ignores_ssl_cert_file_and_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle_ca, planted_ca = trustme.CA(), trustme.CA()
    bundle = tmp_path / "bundle.pem"
    bundle_ca.cert_pem.write_to_path(str(bundle))
    planted = tmp_path / "planted.pem"
    planted_ca.cert_pem.write_to_path(str(planted))
    planted_dir = tmp_path / "dir"
    planted_dir.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(planted))
    monkeypatch.setenv("SSL_CERT_DIR", str(planted_dir))

    context = build_ssl_context(bundle, system_trust=True)
    loaded = _subjects(context.get_ca_certs())  # type: ignore[arg-type]
    planted_subject = _subjects(
        build_ssl_context(planted, system_trust=False).get_ca_certs()  # type: ignore[arg-type]
    )
    bundle_subject = _subjects(
        build_ssl_context(bundle, system_trust=False).get_ca_certs()  # type: ignore[arg-type]
    )
    assert bundle_subject <= loaded
    assert not planted_subject & loaded, "SSL_CERT_FILE's root was trusted"
