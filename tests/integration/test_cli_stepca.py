"""`cert-sidecar issue / renew / status / revoke` against the real step-ca 0.19, as a process.

Each test leases a loopback address whose four names resolve to it, so the http-01 and
tls-alpn-01 responders can bind :80 and :443 there without colliding with other tests.
"""

from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.integration.cli import base_args, free_port, read_pem_blocks, run_cli, verify_chain
from tests.peers.loopback import LoopbackLease
from tests.peers.stepca import StepCA

pytestmark = [pytest.mark.stepca]


def _args(ca: StepCA, tmp_path: Path, lease: LoopbackLease, **kwargs: str) -> list[str]:
    return base_args(
        ca.directory_url,
        ca.root_path,
        tmp_path / "certs",
        tmp_path / "state",
        http_listen=f"{lease.address}:80",
        tls_alpn_listen=f"{lease.address}:443",
        **kwargs,
    )


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(read_pem_blocks(path)[0][1])


def _names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def _account_url(state: Path) -> str:
    (account,) = (state / "account").iterdir()
    return str(json.loads((account / "account.json").read_text())["url"])


def test_issue_writes_combined_pem_for_haproxy(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    name = loopback.name
    result = run_cli(["issue", *_args(step_ca, tmp_path, loopback), "--domain", name])
    assert result.code == 0, result.stderr
    assert f"{name}: issued" in result.stdout
    assert "Traceback" not in result.stderr

    pem_path = tmp_path / "certs" / f"{name}.pem"
    blocks = read_pem_blocks(pem_path)
    labels = [label for label, _ in blocks]
    # Leaf, then the intermediate(s), then the key; no blank lines anywhere.
    assert labels[0] == "CERTIFICATE" and labels[-1].endswith("PRIVATE KEY")
    assert labels.count("CERTIFICATE") >= 2
    assert "\n\n" not in pem_path.read_text()
    assert stat.S_IMODE(pem_path.stat().st_mode) == 0o640
    leaf = x509.load_pem_x509_certificate(blocks[0][1])
    chain = [x509.load_pem_x509_certificate(b) for label, b in blocks[1:-1]]
    verify_chain(leaf, chain, step_ca.root_pem.encode())
    assert _names(leaf) == {name}
    key = load_pem_private_key(blocks[-1][1], None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]

    state = tmp_path / "state"
    assert stat.S_IMODE((state / "certs" / name / "key.pem").stat().st_mode) == 0o600
    (account,) = (state / "account").iterdir()
    assert stat.S_IMODE((account / "key.pem").stat().st_mode) == 0o600
    # Nothing but the PEM in the certs directory: no temp files left behind.
    assert [p.name for p in (tmp_path / "certs").iterdir()] == [f"{name}.pem"]
    # Private key material never reaches the logs.
    assert "PRIVATE KEY" not in result.stderr + result.stdout


def test_second_issue_keeps_valid_cert_and_force_reuses_account_and_key(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    name = loopback.name
    args = ["issue", *_args(step_ca, tmp_path, loopback), "--domain", name]
    assert run_cli(args).code == 0
    pem_path = tmp_path / "certs" / f"{name}.pem"
    first = pem_path.read_bytes()
    account = _account_url(tmp_path / "state")

    again = run_cli(args)
    assert again.code == 0, again.stderr
    assert f"{name}: unchanged" in again.stdout
    assert pem_path.read_bytes() == first

    forced = run_cli([*args, "--force"])
    assert forced.code == 0, forced.stderr
    assert f"{name}: issued" in forced.stdout
    second = pem_path.read_bytes()
    assert _leaf(pem_path).serial_number != x509.load_pem_x509_certificate(first).serial_number
    # Same account, same certificate key across runs.
    assert _account_url(tmp_path / "state") == account
    assert read_pem_blocks(pem_path)[-1][1] in first
    assert second != first
    # The previous certificate is kept in the state directory.
    assert (tmp_path / "state" / "certs" / name / "previous.pem").exists()


def test_key_type_flag_reaches_the_certificate(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    # One type other than the default (ec-p256) in both algorithm and size: the wiring from
    # --key-type to the key and CSR. That step-ca issues every type is test_ca_client_stepca's.
    result = run_cli(
        [
            "issue",
            *_args(step_ca, tmp_path, loopback),
            "--key-type",
            "rsa-3072",
            "--domain",
            loopback.name,
        ]
    )
    assert result.code == 0, result.stderr
    blocks = read_pem_blocks(tmp_path / "certs" / f"{loopback.name}.pem")
    public = x509.load_pem_x509_certificate(blocks[0][1]).public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072
    key = load_pem_private_key(blocks[-1][1], None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.public_key().public_numbers() == public.public_numbers()


def test_status_reports_issued_certificate(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    args = _args(step_ca, tmp_path, loopback)
    domains = f"{loopback.names[0]},{loopback.names[1]}"
    assert run_cli(["issue", *args, "--domain", domains]).code == 0
    serial = format(_leaf(tmp_path / "certs" / f"{loopback.name}.pem").serial_number, "X")

    result = run_cli(["status", "--json", *args, "--domain", domains])
    assert result.code == 0, result.stderr
    (record,) = result.json()["certificates"]  # type: ignore[index]
    assert record["name"] == loopback.name
    assert record["names"] == [loopback.names[0], loopback.names[1]]
    assert record["state"] == "valid"
    assert int(record["serial"], 16) == int(serial, 16)
    assert int(record["deployed_serial"], 16) == int(serial, 16)
    leaf = _leaf(tmp_path / "certs" / f"{loopback.name}.pem")
    assert datetime.fromisoformat(record["not_after"]) == leaf.not_valid_after_utc
    # docs/commands.md: renewal once renew_at (0.66) of the lifetime has passed, minus up to
    # 1/20 of it
    # (run, status and /metrics agreeing is test_run_stepca's).
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    latest = leaf.not_valid_before_utc + lifetime * 0.66
    tolerance = timedelta(seconds=1)  # the certificate's times have whole seconds
    renewal = datetime.fromisoformat(record["next_renewal"])
    assert latest - lifetime / 20 - tolerance <= renewal <= latest + tolerance
    assert record["last_error"] is None

    table = run_cli(["status", *args, "--domain", domains])
    assert table.code == 0
    header, row = table.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "NAMES"]
    assert row.startswith(loopback.name)


def test_revoke_replaces_with_new_key_and_remove_deletes(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    args = [*_args(step_ca, tmp_path, loopback), "--domain", loopback.name]
    assert run_cli(["issue", *args]).code == 0
    pem_path = tmp_path / "certs" / f"{loopback.name}.pem"
    before = read_pem_blocks(pem_path)

    result = run_cli(["revoke", loopback.name, "--reason", "key-compromise", *args])
    assert result.code == 0, result.stderr
    after = read_pem_blocks(pem_path)
    assert after[0][1] != before[0][1]
    assert after[-1][1] != before[-1][1], "a revoked certificate's key must not be reused"

    # Revoking the same certificate again is refused by the CA: it was revoked... the new one
    # is not, so this revokes the replacement, and --remove takes it away entirely.
    removed = run_cli(["revoke", loopback.name, "--remove", *args])
    assert removed.code == 0, removed.stderr
    assert not pem_path.exists()
    assert not (tmp_path / "state" / "certs" / loopback.name / "cert.pem").exists()


def test_one_failing_certificate_does_not_stop_the_others(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    # The second name resolves nowhere: step-ca cannot validate it.
    result = run_cli(
        [
            "issue",
            *_args(step_ca, tmp_path, loopback),
            "--domain",
            loopback.name,
            "--domain",
            "nowhere.invalid",
        ]
    )
    assert result.code == 1
    assert (tmp_path / "certs" / f"{loopback.name}.pem").exists()
    assert not (tmp_path / "certs" / "nowhere.invalid.pem").exists()
    assert "nowhere.invalid: failed:" in result.stderr
    assert "Traceback" not in result.stderr
    meta = json.loads((tmp_path / "state" / "certs" / "nowhere.invalid" / "meta.json").read_text())
    assert meta["failures"] == 1 and meta["last_error"] and meta["next_retry_at"]


def test_haproxy_loads_the_pem_and_serves_a_verified_chain_for_each_name(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path, haproxy_factory: object
) -> None:
    from tests.peers.haproxy import handshake, haproxy_check_config

    # All four names of the lease in one certificate, validated over tls-alpn-01 on :443.
    domains = ",".join(loopback.names)
    result = run_cli(
        [
            "issue",
            *_args(step_ca, tmp_path, loopback),
            "--challenge",
            "tls-alpn-01",
            "--domain",
            domains,
        ]
    )
    assert result.code == 0, result.stderr
    pem_path = tmp_path / "certs" / f"{loopback.name}.pem"
    assert _names(_leaf(pem_path)) == set(loopback.names)
    check = haproxy_check_config(
        "\n".join(
            [
                "defaults",
                "  mode http",
                "  timeout client 5s",
                "  timeout server 5s",
                "  timeout connect 5s",
                "frontend tls",
                f"  bind 127.0.0.1:{free_port()} ssl crt {pem_path}",
                "",
            ]
        ),
        tmp_path,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    haproxy = haproxy_factory(tmp_path / "certs")  # type: ignore[operator]
    root = step_ca.root_pem.encode()
    serial = _leaf(pem_path).serial_number
    for name in loopback.names:
        # Verified against the step-ca root only, with the name checked (SNI = name).
        assert handshake("127.0.0.1", haproxy.port, name, root).serial_number == serial


def test_renew_dry_run_does_the_exchange_but_writes_nothing(
    step_ca: StepCA, loopback: LoopbackLease, tmp_path: Path
) -> None:
    args = [*_args(step_ca, tmp_path, loopback), "--domain", loopback.name]
    assert run_cli(["issue", *args]).code == 0
    pem_path = tmp_path / "certs" / f"{loopback.name}.pem"
    state = tmp_path / "state" / "certs" / loopback.name
    before = {p.name: p.read_bytes() for p in [pem_path, *state.iterdir()]}

    result = run_cli(["renew", "--force", "--dry-run", *args])
    assert result.code == 0, result.stderr
    assert f"{loopback.name}: dry-run serial" in result.stdout
    after = {p.name: p.read_bytes() for p in [pem_path, *state.iterdir()]}
    assert after == before
    # Not due and not forced: nothing to do, nothing ordered.
    plain = run_cli(["renew", *args])
    assert plain.code == 0
    assert f"{loopback.name}: unchanged" in plain.stdout
