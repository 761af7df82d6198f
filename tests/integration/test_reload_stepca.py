"""A config reload takes full effect in a running `cert-sidecar run` (issue 10), against the real
step-ca 0.19 and HAProxy 2.6.

One `run --config FILE` process lives through every step; each step rewrites the file and shows
that the next order (or deploy) follows the new file without a restart:

(a) another CA (directory and bundle, a different root): `renew --force`, handed to the running
    sidecar, gets its certificate from the new CA;
(b) another HAProxy socket: the next certificate is deployed to the new HAProxy, not the old;
(c) another certs directory: the certificate is written there;
(d) another challenge (tls-alpn-01), then an http-01 listen address on another interface: the
    next orders are validated through them.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from sidecar import pem
from tests.integration.cli import Sidecar, Wait, run_cli, running_sidecar, verify_chain
from tests.peers.haproxy import HAProxyInstance, handshake
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA, StepCAFactory

pytestmark = [pytest.mark.stepca, pytest.mark.haproxy]

NAME = "site"


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    temp.rename(path)


def _config(
    ca: StepCA,
    *,
    certs: Path,
    state: Path,
    domain: str,
    http_listen: str,
    tls_alpn_listen: str,
    challenge: str = "http-01",
    sockets: Sequence[HAProxyInstance] = (),
) -> bytes:
    socket_list = ", ".join(f'"unix:{h.socket_path}"' for h in sockets)
    return "\n".join(
        [
            "[acme]",
            f'directory = "{ca.directory_url}"',
            f'ca_bundle = "{ca.root_path}"',
            f'challenge = "{challenge}"',
            f'http_listen = "{http_listen}"',
            f'tls_alpn_listen = "{tls_alpn_listen}"',
            "[files]",
            f'certs_dir = "{certs}"',
            f'state_dir = "{state}"',
            "[haproxy]",
            f"sockets = [{socket_list}]",
            "[[certificates]]",
            f'name = "{NAME}"',
            f'domains = ["{domain}"]',
            "",
        ]
    ).encode()


def _real_serial(path: Path, ca: StepCA, domain: str) -> int | None:
    """The serial of the real certificate at ``path`` when ``ca`` issued it for ``domain``."""
    try:
        bundle = pem.parse_combined(path.read_bytes())
        verify_chain(bundle.leaf, list(bundle.chain), ca.root_pem.encode())
    except Exception:
        return None
    facts = pem.describe_cert(bundle.leaf)
    if facts.is_placeholder or list(facts.names) != [domain]:
        return None
    return facts.serial


def _served(haproxy: HAProxyInstance, sni: str, ca: StepCA) -> int | None:
    """The serial HAProxy presents for ``sni``, verified against ``ca``'s root."""
    try:
        return handshake("127.0.0.1", haproxy.port, sni, ca.root_pem.encode()).serial_number
    except (OSError, ssl.SSLError, ValueError):
        return None


def _count(sidecar: Sidecar, event: str) -> int:
    return sidecar.event_names().count(event)


def _messages(sidecar: Sidecar) -> list[str]:
    return [str(e.get("event")) for e in sidecar.events()]


def test_a_reload_applies_ca_haproxy_certs_dir_and_challenge_without_restart(
    step_ca_factory: StepCAFactory,
    haproxy_factory: Callable[..., HAProxyInstance],
    loopback_factory: Callable[[], LoopbackLease],
    tmp_path: Path,
) -> None:
    first, second = loopback_factory(), loopback_factory()
    ca1, ca2 = step_ca_factory(), step_ca_factory()
    certs1, certs2, state = tmp_path / "certs1", tmp_path / "certs2", tmp_path / "state"
    certs1.mkdir()
    pem1, pem2 = certs1 / f"{NAME}.pem", certs2 / f"{NAME}.pem"
    haproxy1 = haproxy_factory(certs1)
    config = tmp_path / "conf" / "cert-sidecar.toml"
    settings: dict[str, object] = {
        "certs": certs1,
        "state": state,
        "domain": first.name,
        "http_listen": f"{first.address}:80",
        "tls_alpn_listen": f"{first.address}:443",
        "sockets": [haproxy1],
    }

    def reconfigure(ca: StepCA, **changes: object) -> None:
        """Rewrite the file, then wait until the running sidecar has applied it."""
        settings.update(changes)
        reloads = _count(sidecar, "config_reloaded")
        _write_atomically(config, _config(ca, **settings))  # type: ignore[arg-type]
        sidecar.wait_for(lambda: _count(sidecar, "config_reloaded") > reloads, "the reload")

    def renew_force() -> int:
        """`renew --force` handed to the running sidecar; the serial it reports."""
        result = run_cli(["renew", "--force", "--config", str(config)])
        assert result.code == 0, result.stderr
        assert "done by the running cert-sidecar" in result.stderr
        found = re.search(rf"^{NAME}: issued serial ([0-9A-F]+)", result.stdout, re.MULTILINE)
        assert found is not None, result.stdout
        return int(found.group(1), 16)

    def ordered_at(serial: int) -> str:
        """The order URL the sidecar logged for the certificate with ``serial``."""
        urls = [
            str(e.get("order_url"))
            for e in sidecar.events()
            if e.get("event") == "cert_issued" and int(str(e.get("serial")), 16) == serial
        ]
        assert len(urls) == 1, urls
        return urls[0]

    _write_atomically(config, _config(ca1, **settings))  # type: ignore[arg-type]
    first_certificate = Wait(
        "the first certificate", lambda _: _real_serial(pem1, ca1, first.name) is not None
    )
    with running_sidecar(
        ["--config", str(config)], tmp_path / "run.log", until=first_certificate
    ) as sidecar:
        serial = _real_serial(pem1, ca1, first.name)
        sidecar.wait_for(lambda: _served(haproxy1, first.name, ca1) == serial, "HAProxy 1")

        # (a) Another CA, with its own root: the forced renewal is ordered there. The deployed
        # certificate does not chain to the new bundle, so the sidecar also re-issues it by
        # itself (before or after the renewal: both hold the certificate's lock).
        issued = _count(sidecar, "cert_issued")
        reconfigure(ca2)
        assert ordered_at(renew_force()).startswith(f"{ca2.base_url}/"), "ordered from CA 1"
        sidecar.wait_for(
            lambda: _count(sidecar, "cert_issued") >= issued + 2, "the re-issue and the renewal"
        )
        assert "cert_untrusted_by_new_root" in sidecar.event_names()
        from_ca2 = _real_serial(pem1, ca2, first.name)
        assert from_ca2 is not None
        sidecar.wait_for(lambda: _served(haproxy1, first.name, ca2) == from_ca2, "HAProxy 1")

        # (b) Another HAProxy (it loaded the current file when it started): the next
        # certificate goes to it through its runtime API, and no longer to the first one.
        haproxy2 = haproxy_factory(certs1)
        assert _served(haproxy2, first.name, ca2) == from_ca2
        reconfigure(ca2, sockets=[haproxy2])
        renewed = renew_force()
        assert _real_serial(pem1, ca2, first.name) == renewed != from_ca2
        sidecar.wait_for(lambda: _served(haproxy2, first.name, ca2) == renewed, "HAProxy 2")
        assert _served(haproxy1, first.name, ca2) == from_ca2

        # (c) Another certs directory (and no HAProxy, which reads the first one): the
        # certificate is missing there, so it is issued and written there.
        kept = pem1.read_bytes()
        failed_deploys = _count(sidecar, "haproxy_update_failed")
        reconfigure(ca2, certs=certs2, sockets=[])
        sidecar.wait_for(lambda: _real_serial(pem2, ca2, first.name), "the file in certs2")
        assert pem1.read_bytes() == kept
        assert _count(sidecar, "haproxy_update_failed") == failed_deploys

        # (d) tls-alpn-01 instead of http-01: its responder starts for the next order, and it
        # is the only solver that order is given.
        http_at_first = f"http-01 responder listening on {first.address}:80"
        assert _messages(sidecar).count(http_at_first) == 1  # kept bound through (a)-(c)
        before = _real_serial(pem2, ca2, first.name)
        reconfigure(ca2, challenge="tls-alpn-01")
        via_alpn = renew_force()
        assert _real_serial(pem2, ca2, first.name) == via_alpn != before
        assert f"tls-alpn-01 responder listening on {first.address}:443" in _messages(sidecar)

        # ... then http-01 again, listening on another interface, for a name that resolves
        # there: the responder moves (the old address cannot answer for the new name), and
        # the changed names make the certificate due at once.
        reconfigure(
            ca2, challenge="http-01", domain=second.name, http_listen=f"{second.address}:80"
        )
        sidecar.wait_for(lambda: _real_serial(pem2, ca2, second.name), "the new name's certificate")
        assert f"http-01 responder listening on {second.address}:80" in _messages(sidecar)

        # All of it in one process.
        assert _count(sidecar, "service_starting") == 1
        assert "config_reload_failed" not in sidecar.event_names()
    assert sidecar.exit_code == 0
