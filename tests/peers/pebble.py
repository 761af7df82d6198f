"""The real Pebble (Debian ``pebble`` 2.4) and its ``pebble-challtestsrv`` as pytest fixtures.

Each Pebble gets its own challtestsrv, used two ways: as Pebble's DNS server (``-dnsserver``),
which answers every A query with 127.0.0.1 unless told otherwise (``add_a``), and as the dns-01
TXT store driven through its management API (``/set-txt``, ``/clear-txt``; see
tests/peers/dns_hook.py). Its own HTTP/TLS challenge servers are disabled: the code under test
is the responder. AAAA answers are disabled too, so Pebble never dials ``[::1]`` where no
responder listens.

Pebble validates http-01 on ``.http_port`` and tls-alpn-01 on ``.tls_port`` of the resolved
address (free ephemeral ports, not 80/443), so Pebble tests need no loopback lease.

Hostility (Pebble's defaults, kept ON by the session fixture): it rejects 5% of valid nonces
with badNonce (``PEBBLE_WFE_NONCEREJECT``), sleeps a random 0-15 s before each validation
(``PEBBLE_VA_NOSLEEP=1`` skips), and reuses 50% of valid authorizations. Use
``pebble_factory(no_sleep=True)`` for tests that want speed over realism.

Fixtures:
- ``pebble`` (session): default hostility.
- ``pebble_factory`` (function): ``pebble_factory(eab=None, no_sleep=False, nonce_reject=None,
  chain_length=None, alternate_roots=None, strict=False) -> Pebble``; stopped at test end.
- ``challtestsrv`` (function): a standalone challtestsrv (``ChallTestSrv``), e.g. as the real
  step-ca's DNS for dns-01: ``step_ca_factory(resolver=challtestsrv.dns_server)``.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
import trustme

from tests.peers.processes import (
    PeerProcess,
    PeerStartError,
    free_port,
    free_udp_and_tcp_port,
    http_get,
    peer_environment,
)

__all__ = [
    "ChallTestSrv",
    "Pebble",
    "PebbleFactory",
    "challtestsrv",
    "create_challtestsrv",
    "create_pebble",
    "pebble",
    "pebble_factory",
]

PEBBLE_BINARY = "pebble"
CHALLTESTSRV_BINARY = "pebble-challtestsrv"


def pebble_config(
    directory: Path,
    *,
    listen_port: int,
    management_port: int,
    http_port: int,
    tls_port: int,
    eab: Mapping[str, str] | None,
) -> dict[str, object]:
    """Pebble's JSON configuration (pure)."""
    config: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{listen_port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(directory / "listener-cert.pem"),
        "privateKey": str(directory / "listener-key.pem"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": eab is not None,
    }
    if eab is not None:
        config["externalAccountMACKeys"] = dict(eab)
    return {"pebble": config}


def pebble_env(
    *,
    no_sleep: bool,
    nonce_reject: int | None,
    chain_length: int | None,
    alternate_roots: int | None,
) -> dict[str, str]:
    """Pebble's behaviour switches; unset ones keep Pebble's (hostile) defaults."""
    env: dict[str, str] = {}
    if no_sleep:
        env["PEBBLE_VA_NOSLEEP"] = "1"
    if nonce_reject is not None:
        env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject)
    if chain_length is not None:
        env["PEBBLE_CHAIN_LENGTH"] = str(chain_length)
    if alternate_roots is not None:
        env["PEBBLE_ALTERNATE_ROOTS"] = str(alternate_roots)
    return env


def _post_json(url: str, document: Mapping[str, object]) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        response.read()


@dataclass
class ChallTestSrv:
    """A running pebble-challtestsrv: a DNS server (UDP+TCP) driven over HTTP.

    Every A query gets 127.0.0.1 unless ``add_a`` says otherwise; no AAAA answers; TXT records
    come from ``set_txt``. Its HTTP/TLS challenge servers are disabled (the code under test is
    the responder). Also usable as step-ca's resolver, for dns-01 against the real step-ca:
    ``step_ca_factory(resolver=srv.dns_server)`` (step-ca still reads /etc/hosts first).
    """

    dir: Path
    dns_port: int
    management_port: int
    _process: PeerProcess | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The management API (``/set-txt``, ``/clear-txt``, ``/add-a``, ...)."""
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def dns_server(self) -> str:
        """``host:port`` of its DNS server."""
        return f"127.0.0.1:{self.dns_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "challtestsrv.log"

    def set_txt(self, host: str, value: str) -> None:
        """Add a TXT value for ``host`` (FQDN with trailing dot, e.g. ``_acme-challenge.x.``)."""
        _post_json(f"{self.url}/set-txt", {"host": host, "value": value})

    def clear_txt(self, host: str) -> None:
        """Remove every TXT value of ``host``."""
        _post_json(f"{self.url}/clear-txt", {"host": host})

    def add_a(self, host: str, addresses: Sequence[str]) -> None:
        """Answer A queries for ``host`` (no trailing dot needed) with ``addresses``."""
        _post_json(f"{self.url}/add-a", {"host": host, "addresses": list(addresses)})

    def _ready(self) -> bool:
        try:
            # Any answer, even 404, means the management server is listening.
            http_get(f"{self.url}/", timeout=2.0)
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False
        return True

    def start(self) -> None:
        if self._process is None:
            argv = [
                CHALLTESTSRV_BINARY,
                *("-management", f"127.0.0.1:{self.management_port}"),
                *("-dns01", self.dns_server),
                *("-http01", "", "-https01", "", "-tlsalpn01", ""),
                *("-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
            ]
            self._process = PeerProcess("pebble-challtestsrv", argv, self.log_path)
        self._process.start()
        self._process.wait_ready(self._ready, f"management API on {self.url}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()


def create_challtestsrv(directory: Path) -> ChallTestSrv:
    directory.mkdir(parents=True, exist_ok=True)
    server = ChallTestSrv(
        dir=directory, dns_port=free_udp_and_tcp_port(), management_port=free_port()
    )
    server.start()
    return server


@dataclass
class Pebble:
    """A running Pebble plus its own challtestsrv (its DNS server)."""

    dir: Path
    listen_port: int
    management_port: int
    http_port: int
    tls_port: int
    challtestsrv: ChallTestSrv
    eab: dict[str, str] | None
    _process: PeerProcess | None = field(default=None, repr=False)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.listen_port}/dir"

    @property
    def ca_bundle(self) -> Path:
        """Trusts Pebble's listener (and management) TLS certificate; not its issuing roots."""
        return self.dir / "listener-ca.pem"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    @property
    def challtestsrv_url(self) -> str:
        return self.challtestsrv.url

    @property
    def dns_server(self) -> str:
        """``host:port`` of the DNS server Pebble resolves with (its challtestsrv)."""
        return self.challtestsrv.dns_server

    @property
    def log_path(self) -> Path:
        return self.dir / "pebble.log"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def issuing_roots(self) -> list[str]:
        """PEM of every root Pebble issues under: ``/roots/0``, ``/roots/1``, ... (1 +
        alternate_roots of them). Pebble makes new roots at each start."""
        roots: list[str] = []
        context = self.ssl_context()
        while True:
            try:
                body = http_get(f"{self.management_url}/roots/{len(roots)}", context)
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and roots:
                    return roots
                raise
            roots.append(body.decode("ascii"))

    # Shortcuts to the challtestsrv, the usual way tests drive Pebble's view of DNS.
    def set_txt(self, host: str, value: str) -> None:
        self.challtestsrv.set_txt(host, value)

    def clear_txt(self, host: str) -> None:
        self.challtestsrv.clear_txt(host)

    def add_a(self, host: str, addresses: Sequence[str]) -> None:
        """Make ``host`` resolve, for Pebble, to ``addresses`` instead of 127.0.0.1."""
        self.challtestsrv.add_a(host, addresses)

    def _ready(self) -> bool:
        try:
            http_get(self.directory_url, self.ssl_context(), timeout=2.0)
        except (urllib.error.URLError, OSError):
            return False
        return True

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
        self.challtestsrv.stop()


def create_pebble(
    directory: Path,
    *,
    eab: Mapping[str, str] | None = None,
    no_sleep: bool = False,
    nonce_reject: int | None = None,
    chain_length: int | None = None,
    alternate_roots: int | None = None,
    strict: bool = False,
) -> Pebble:
    """Write the configuration and listener certificate, start challtestsrv then Pebble."""
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            return _create_pebble_once(
                directory / f"try{attempt}",
                eab=eab,
                no_sleep=no_sleep,
                nonce_reject=nonce_reject,
                chain_length=chain_length,
                alternate_roots=alternate_roots,
                strict=strict,
            )
        except PeerStartError as exc:
            # A free port can be taken between our probe and the server's bind: new ports.
            if "address already in use" not in str(exc) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _create_pebble_once(
    directory: Path,
    *,
    eab: Mapping[str, str] | None,
    no_sleep: bool,
    nonce_reject: int | None,
    chain_length: int | None,
    alternate_roots: int | None,
    strict: bool,
) -> Pebble:
    directory.mkdir(parents=True, exist_ok=True)
    listener_ca = trustme.CA(organization_name="cert-sidecar Pebble listener CA")
    listener_cert = listener_ca.issue_cert("localhost", "127.0.0.1")
    listener_cert.private_key_pem.write_to_path(str(directory / "listener-key.pem"))
    listener_cert.cert_chain_pems[0].write_to_path(str(directory / "listener-cert.pem"))
    for extra in listener_cert.cert_chain_pems[1:]:
        extra.write_to_path(str(directory / "listener-cert.pem"), append=True)
    listener_ca.cert_pem.write_to_path(str(directory / "listener-ca.pem"))

    challtestsrv = create_challtestsrv(directory / "challtestsrv")
    pebble = Pebble(
        dir=directory,
        listen_port=free_port(),
        management_port=free_port(),
        http_port=free_port(),
        tls_port=free_port(),
        challtestsrv=challtestsrv,
        eab=dict(eab) if eab is not None else None,
    )
    try:
        config = pebble_config(
            directory,
            listen_port=pebble.listen_port,
            management_port=pebble.management_port,
            http_port=pebble.http_port,
            tls_port=pebble.tls_port,
            eab=eab,
        )
        config_path = directory / "pebble-config.json"
        config_path.write_text(json.dumps(config, indent=2))
        argv = [PEBBLE_BINARY, "-config", str(config_path), "-dnsserver", pebble.dns_server]
        if strict:
            argv.append("-strict")
        # Pebble reads PEBBLE_* from its environment: drop inherited ones so each instance
        # behaves exactly as its arguments say.
        env = {k: v for k, v in peer_environment().items() if not k.startswith("PEBBLE_")}
        env.update(
            pebble_env(
                no_sleep=no_sleep,
                nonce_reject=nonce_reject,
                chain_length=chain_length,
                alternate_roots=alternate_roots,
            )
        )
        pebble._process = PeerProcess("pebble", argv, pebble.log_path, env=env)
        pebble._process.start()
        pebble._process.wait_ready(pebble._ready, f"GET {pebble.directory_url}")
    except BaseException:
        pebble.stop()
        raise
    return pebble


class PebbleFactory(Protocol):
    def __call__(
        self,
        *,
        eab: Mapping[str, str] | None = ...,
        no_sleep: bool = ...,
        nonce_reject: int | None = ...,
        chain_length: int | None = ...,
        alternate_roots: int | None = ...,
        strict: bool = ...,
    ) -> Pebble: ...


@pytest.fixture
def challtestsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChallTestSrv]:
    """A standalone challtestsrv, e.g. as step-ca's DNS for dns-01 (``resolver=``)."""
    server = create_challtestsrv(tmp_path_factory.mktemp("challtestsrv"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """A session-wide Pebble with its default hostility (nonce rejection, validation sleeps)."""
    instance: Pebble | None = None
    try:
        instance = create_pebble(tmp_path_factory.mktemp("pebble"))
        yield instance
    finally:
        if instance is not None:
            instance.stop()


@pytest.fixture
def pebble_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleFactory]:
    """Make Pebbles with options; every one is stopped when the test ends."""
    made: list[Pebble] = []

    def make(
        *,
        eab: Mapping[str, str] | None = None,
        no_sleep: bool = False,
        nonce_reject: int | None = None,
        chain_length: int | None = None,
        alternate_roots: int | None = None,
        strict: bool = False,
    ) -> Pebble:
        instance = create_pebble(
            tmp_path_factory.mktemp("pebble"),
            eab=eab,
            no_sleep=no_sleep,
            nonce_reject=nonce_reject,
            chain_length=chain_length,
            alternate_roots=alternate_roots,
            strict=strict,
        )
        made.append(instance)
        return instance

    try:
        yield make
    finally:
        for instance in made:
            instance.stop()
