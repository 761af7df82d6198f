"""The TLS trust used to talk to the CA: the configured bundle only, unless told otherwise.

The CA is internal (step-ca with its own root), so the system store is not trusted by default:
a public certificate for ``step-ca`` would otherwise be accepted too. It also costs ~70 ms to
load, which matters for one-shot commands. Environment variables such as ``SSL_CERT_FILE`` and
``SSL_CERT_DIR`` play no part, with or without ``--system-trust``: the context is built from the
named file, plus OpenSSL's compiled-in store when asked.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from sidecar.errors import ConfigError

__all__ = ["build_ssl_context", "load_ca_bundle"]

_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


def load_ca_bundle(ca_bundle: Path, *, setting: str = "--ca-bundle") -> str:
    """Read the bundle and check that OpenSSL parses at least one certificate from it.

    Returns the PEM text; raises ``ConfigError`` naming ``setting`` when the file is missing,
    unreadable, not PEM, or holds no certificate.
    """
    text = _read_bundle(ca_bundle, setting)
    _context_from(text, ca_bundle, setting)
    return text


def _read_bundle(ca_bundle: Path, setting: str) -> str:
    try:
        data = ca_bundle.read_bytes()
    except FileNotFoundError:
        raise ConfigError(setting, f"{ca_bundle} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(setting, f"{ca_bundle} is a directory, not a PEM file") from None
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {ca_bundle}: {exc.strerror}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(setting, f"{ca_bundle} is not a PEM file (binary or DER?)") from None
    if _PEM_CERTIFICATE not in text:
        raise ConfigError(setting, f"{ca_bundle} holds no PEM certificate")
    return text


def _context_from(text: str, ca_bundle: Path, setting: str) -> ssl.SSLContext:
    # PROTOCOL_TLS_CLIENT sets verify_mode=CERT_REQUIRED and check_hostname=True.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise ConfigError(
            setting, f"{ca_bundle} holds a certificate OpenSSL cannot parse ({reason})"
        ) from None
    return context


def build_ssl_context(
    ca_bundle: Path, system_trust: bool, *, setting: str = "--ca-bundle"
) -> ssl.SSLContext:
    """A client context trusting ``ca_bundle`` (plus the system store with ``system_trust``).

    TLS 1.2 or later, certificate verification and hostname checking on; never weakened.
    """
    # The file is read once and parsed from memory, so what is checked is what is trusted.
    context = _context_from(_read_bundle(ca_bundle, setting), ca_bundle, setting)
    if system_trust:
        load_system_store(context)
    return context


def load_system_store(context: ssl.SSLContext) -> None:
    """Add OpenSSL's compiled-in system store to ``context``, ignoring the environment.

    ``load_default_certs`` (``set_default_verify_paths``) reads ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` first: whoever can set the sidecar's environment could then add a root.
    The contract says trust comes from ``--ca-bundle`` plus the system store, nothing else.
    """
    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if cafile is not None or capath is not None:
        context.load_verify_locations(cafile=cafile, capath=capath)
