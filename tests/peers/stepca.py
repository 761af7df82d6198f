"""The real step-ca (0.19, built by scripts/build-step-ca.sh) as a pytest fixture.

A CA directory is generated with ``cryptography`` (no ``step`` CLI): root and intermediate EC
P-256, a ``ca.json`` with one ACME provisioner named ``acme``, a bbolt database, TLS on
``127.0.0.1:<free port>`` (step-ca issues its own listener certificate from the intermediate
for ``dnsNames`` localhost/127.0.0.1, so clients verify it against the root bundle).

Fixtures:
- ``step_ca`` (session): 24h certificates, shared by the tests of one pytest process.
- ``step_ca_factory`` (function): ``step_ca_factory(default_duration="24h", min_duration=None,
  max_duration=None, root_key=None, resolver=None) -> StepCA``; every CA it made is stopped
  when the test ends, pass or fail. ``root_key``: reuse another CA's ``.root_key`` for an
  equivalent root (same key and subject: its bundle verifies both). ``resolver``: a DNS
  ``host:port`` for step-ca's lookups (e.g. the ``challtestsrv`` fixture's ``.dns_server``, for
  dns-01 against the real step-ca; /etc/hosts is still read first).

Facts: step-ca validates http-01 on port 80 and tls-alpn-01 on 443 of the identifier, resolving
names with the system resolver (Go re-reads /etc/hosts), so tests use a loopback lease. It
backdates certificates by 1 minute; with ``default_duration="60s", min_duration="30s"`` a
certificate lives 2 minutes from notBefore. Start-up to a healthy ``/health`` takes ~0.3 s idle.
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.peers.certs import CAPair, ec_key_pem, make_intermediate, make_root
from tests.peers.processes import (
    PeerProcess,
    PeerStartError,
    free_port,
    http_get,
    peer_environment,
)

__all__ = ["STEP_CA_BINARY", "StepCA", "StepCAFactory", "step_ca", "step_ca_factory"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STEP_CA_BINARY = REPO_ROOT / ".cache" / "step-ca" / "bin" / "step-ca"

PROVISIONER = "acme"
# step-ca's own claim defaults (authority/provisioner/claims.go): min 5m, default 24h, max 24h.
_STEP_DEFAULT_MIN = "5m"
_STEP_DEFAULT_MAX = "24h"

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: str) -> float:
    """Seconds in a Go duration string such as ``"1h30m"``, ``"60s"``, ``"500ms"``."""
    total, number, index = 0.0, "", 0
    while index < len(text):
        char = text[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = next(
            (u for u in sorted(_UNITS, key=len, reverse=True) if text.startswith(u, index)),
            None,
        )
        if unit is None or not number:
            raise ValueError(f"not a Go duration: {text!r}")
        total += float(number) * _UNITS[unit]
        number = ""
        index += len(unit)
    if number:
        raise ValueError(f"not a Go duration (missing unit): {text!r}")
    return total


def provisioner_claims(
    default_duration: str, min_duration: str | None, max_duration: str | None
) -> dict[str, str]:
    """Claims whose bounds admit ``default_duration`` (step-ca refuses to start otherwise)."""
    default = go_duration_seconds(default_duration)
    if min_duration is None:
        keep_min = go_duration_seconds(_STEP_DEFAULT_MIN) <= default
        min_duration = _STEP_DEFAULT_MIN if keep_min else default_duration
    if max_duration is None:
        keep_max = go_duration_seconds(_STEP_DEFAULT_MAX) >= default
        max_duration = _STEP_DEFAULT_MAX if keep_max else default_duration
    return {
        "minTLSCertDuration": min_duration,
        "maxTLSCertDuration": max_duration,
        "defaultTLSCertDuration": default_duration,
    }


def ca_config(directory: Path, port: int, claims: dict[str, str]) -> dict[str, object]:
    """The ca.json document (pure)."""
    return {
        "root": str(directory / "certs" / "root_ca.crt"),
        "crt": str(directory / "certs" / "intermediate_ca.crt"),
        "key": str(directory / "secrets" / "intermediate_ca_key"),
        "address": f"127.0.0.1:{port}",
        "dnsNames": ["localhost", "127.0.0.1"],
        "logger": {"format": "text"},
        "db": {"type": "bbolt", "dataSource": str(directory / "db" / "db.bolt")},
        "authority": {
            "provisioners": [{"type": "ACME", "name": PROVISIONER, "claims": claims}],
        },
        "tls": {"minVersion": 1.2, "maxVersion": 1.3, "renegotiation": False},
    }


@dataclass
class StepCA:
    """One running (or stopped) step-ca with its own CA directory."""

    dir: Path
    port: int
    root: CAPair
    intermediate: CAPair
    claims: dict[str, str]
    resolver: str | None = None
    _process: PeerProcess | None = field(default=None, repr=False)

    # -- paths and URLs ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def directory_url(self) -> str:
        return f"{self.base_url}/acme/{PROVISIONER}/directory"

    @property
    def root_path(self) -> Path:
        """The root bundle, like the step-root-ca volume's root_ca.crt."""
        return self.dir / "certs" / "root_ca.crt"

    @property
    def root_pem(self) -> str:
        return self.root.pem

    @property
    def root_key(self) -> ec.EllipticCurvePrivateKey:
        """Pass to ``step_ca_factory(root_key=...)`` for another CA under an equivalent root."""
        return self.root.key

    @property
    def intermediate_path(self) -> Path:
        return self.dir / "certs" / "intermediate_ca.crt"

    @property
    def config_path(self) -> Path:
        return self.dir / "config" / "ca.json"

    @property
    def db_path(self) -> Path:
        return self.dir / "db"

    @property
    def log_path(self) -> Path:
        return self.dir / "step-ca.log"

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts this CA's root only."""
        return ssl.create_default_context(cafile=str(self.root_path))

    # -- life cycle -------------------------------------------------------------------------
    def write_files(self) -> None:
        for sub in ("certs", "secrets", "config", "db", "step"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.root_path.write_text(self.root.pem)
        self.intermediate_path.write_text(self.intermediate.pem)
        key_path = self.dir / "secrets" / "intermediate_ca_key"
        key_path.write_text(ec_key_pem(self.intermediate.key))
        key_path.chmod(0o600)
        self._write_config()

    def _write_config(self) -> None:
        config = ca_config(self.dir, self.port, self.claims)
        self.config_path.write_text(json.dumps(config, indent=2))

    def _healthy(self) -> bool:
        try:
            body = http_get(f"{self.base_url}/health", self.ssl_context(), timeout=2.0)
        except (urllib.error.URLError, OSError):
            return False
        return b'"ok"' in body

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def start(self) -> None:
        """Start (or restart, on the same port and data) and wait for ``/health``."""
        if not STEP_CA_BINARY.exists():
            pytest.fail(
                f"step-ca binary missing at {STEP_CA_BINARY}: run scripts/build-step-ca.sh",
                pytrace=False,
            )
        if self._process is None:
            argv = [str(STEP_CA_BINARY)]
            if self.resolver:
                # urfave/cli v1 stops parsing flags at the first positional argument.
                argv.append(f"--resolver={self.resolver}")
            argv.append(str(self.config_path))
            # STEPPATH/HOME: keep step's config lookups inside the CA dir, not in ~/.step.
            env_extra = {"STEPPATH": str(self.dir / "step"), "HOME": str(self.dir)}
            self._process = PeerProcess(
                "step-ca", argv, self.log_path, env=peer_environment(env_extra)
            )
        self._process.start()
        self._process.wait_ready(self._healthy, f"GET {self.base_url}/health")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def reset_database(self) -> None:
        """The "CA database reset" case: accounts, orders and certificates are forgotten."""
        self.stop()
        shutil.rmtree(self.db_path, ignore_errors=True)
        self.db_path.mkdir()
        self.start()


def create_step_ca(
    directory: Path,
    *,
    default_duration: str = "24h",
    min_duration: str | None = None,
    max_duration: str | None = None,
    root_key: ec.EllipticCurvePrivateKey | None = None,
    resolver: str | None = None,
) -> StepCA:
    """Generate a CA in ``directory`` and start it on a free port."""
    root = make_root(key=root_key)
    intermediate = make_intermediate(root)
    claims = provisioner_claims(default_duration, min_duration, max_duration)
    attempts = 3
    for attempt in range(1, attempts + 1):
        ca = StepCA(
            dir=directory,
            port=free_port(),
            root=root,
            intermediate=intermediate,
            claims=claims,
            resolver=resolver,
        )
        ca.write_files()
        try:
            ca.start()
        except PeerStartError as exc:
            # The free port can be taken between our probe and step-ca's bind; try another.
            if "address already in use" in str(exc) and attempt < attempts:
                continue
            raise
        return ca
    raise AssertionError("unreachable")


class StepCAFactory(Protocol):
    def __call__(
        self,
        *,
        default_duration: str = ...,
        min_duration: str | None = ...,
        max_duration: str | None = ...,
        root_key: ec.EllipticCurvePrivateKey | None = ...,
        resolver: str | None = ...,
    ) -> StepCA: ...


@pytest.fixture(scope="session")
def step_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StepCA]:
    """A session-wide step-ca issuing 24h certificates."""
    ca: StepCA | None = None
    try:
        ca = create_step_ca(tmp_path_factory.mktemp("step-ca"))
        yield ca
    finally:
        if ca is not None:
            ca.stop()


@pytest.fixture
def step_ca_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StepCAFactory]:
    """Make CAs with custom lifetimes or a given root key; all are stopped at test end."""
    made: list[StepCA] = []

    def make(
        *,
        default_duration: str = "24h",
        min_duration: str | None = None,
        max_duration: str | None = None,
        root_key: ec.EllipticCurvePrivateKey | None = None,
        resolver: str | None = None,
    ) -> StepCA:
        ca = create_step_ca(
            tmp_path_factory.mktemp("step-ca"),
            default_duration=default_duration,
            min_duration=min_duration,
            max_duration=max_duration,
            root_key=root_key,
            resolver=resolver,
        )
        made.append(ca)
        return ca

    try:
        yield make
    finally:
        for ca in made:
            ca.stop()
