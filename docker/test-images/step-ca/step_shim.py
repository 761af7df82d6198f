"""A minimal stand-in for the `step` CLI, for the local step-ca test image only.

The upstream smallstep/step-ca image initialises and checks itself with the `step` CLI, which is
not available on these machines (no registry, no Debian package). This script implements just
the subcommands that the image's entrypoint, its healthcheck and cert-sidecar's wrapper
(docker/step-ca/) call, with the same files and flags, so that the wrapper runs unchanged on the
stand-in and on the real image:

    step path
    step ca init --name N --dns a,b --address :9000 --provisioner P --password-file F
                 [--provisioner-password-file F] [--acme] [--ssh] [--remote-management] ...
    step ca health
    step ca provisioner update NAME [--x509-min-dur D] [--x509-max-dur D]
                 [--x509-default-dur D] [--ca-config FILE]

Keys are EC P-256 like `step ca init`'s defaults. Unlike upstream, the keys are stored
unencrypted (step-ca accepts that; the password file is still written and passed) and the
database is bbolt, which the Debian-built step-ca 0.19 supports.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import ssl
import sys
import tempfile
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def step_path() -> Path:
    return Path(os.environ.get("STEPPATH", "/home/step"))


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file and rename: step-ca must never read a half-written ca.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }
    # RFC 7638 thumbprint as the key id, as step does.
    canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
    return {**jwk, "use": "sig", "alg": "ES256", "kid": b64url(hashlib.sha256(canonical).digest())}


def make_ca_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    path_length: int,
    years: int,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def ca_init(args: argparse.Namespace) -> int:
    base = step_path()
    config_file = base / "config" / "ca.json"
    if config_file.exists():
        print(f"step: {config_file} already exists", file=sys.stderr)
        return 1
    password = Path(args.password_file).read_bytes().strip() if args.password_file else b""
    if not password:
        print("step: ca init needs --password-file with a password", file=sys.stderr)
        return 1

    root_key = ec.generate_private_key(ec.SECP256R1())
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    root_name = f"{args.name} Root CA"
    root = make_ca_cert(
        root_name, root_key, issuer=root_name, issuer_key=root_key, path_length=1, years=10
    )
    intermediate = make_ca_cert(
        f"{args.name} Intermediate CA",
        intermediate_key,
        issuer=root_name,
        issuer_key=root_key,
        path_length=0,
        years=10,
    )

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    certs, secrets = base / "certs", base / "secrets"
    write_atomic(certs / "root_ca.crt", root.public_bytes(serialization.Encoding.PEM), 0o644)
    write_atomic(
        certs / "intermediate_ca.crt", intermediate.public_bytes(serialization.Encoding.PEM), 0o644
    )
    write_atomic(secrets / "root_ca_key", key_pem(root_key), 0o600)
    write_atomic(secrets / "intermediate_ca_key", key_pem(intermediate_key), 0o600)

    provisioners: list[dict[str, object]] = [
        {
            "type": "JWK",
            "name": args.provisioner,
            "key": jwk_of(ec.generate_private_key(ec.SECP256R1())),
        }
    ]
    if args.acme:
        provisioners.append({"type": "ACME", "name": "acme"})
    dns_names = [name.strip() for name in args.dns.split(",") if name.strip()]
    config = {
        "root": str(certs / "root_ca.crt"),
        "federatedRoots": None,
        "crt": str(certs / "intermediate_ca.crt"),
        "key": str(secrets / "intermediate_ca_key"),
        "address": args.address,
        "insecureAddress": "",
        "dnsNames": dns_names,
        "logger": {"format": "text"},
        "db": {"type": "bbolt", "dataSource": str(base / "db" / "bolt.db")},
        "authority": {"provisioners": provisioners},
        "tls": {
            "cipherSuites": [
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ],
            "minVersion": 1.2,
            "maxVersion": 1.3,
            "renegotiation": False,
        },
    }
    (base / "db").mkdir(parents=True, exist_ok=True)
    port = args.address.rsplit(":", 1)[-1]
    defaults = {
        "ca-url": f"https://{dns_names[0] if dns_names else 'localhost'}:{port}",
        "ca-config": str(config_file),
        "fingerprint": root.fingerprint(hashes.SHA256()).hex(),
        "root": str(certs / "root_ca.crt"),
    }
    write_atomic(base / "config" / "defaults.json", json.dumps(defaults, indent=4).encode(), 0o644)
    write_atomic(config_file, json.dumps(config, indent=4).encode(), 0o644)
    print(f"step: initialised {args.name} in {base}")
    return 0


def ca_health(_args: argparse.Namespace) -> int:
    defaults = json.loads((step_path() / "config" / "defaults.json").read_text())
    context = ssl.create_default_context(cafile=defaults["root"])
    # The CA's own certificate is for its dnsNames; the check runs inside its container, so
    # connect to localhost and verify the chain, not the name (upstream does the same).
    context.check_hostname = False
    port = defaults["ca-url"].rsplit(":", 1)[-1]
    try:
        with urllib.request.urlopen(
            f"https://localhost:{port}/health", context=context, timeout=5
        ) as response:
            status = json.loads(response.read()).get("status", "")
    except OSError as error:
        print(f"step: health check failed: {error}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "ok" else 1


def ca_provisioner_update(args: argparse.Namespace) -> int:
    config_file = Path(args.ca_config or step_path() / "config" / "ca.json")
    config = json.loads(config_file.read_text())
    for provisioner in config["authority"]["provisioners"]:
        if provisioner["name"] == args.name:
            claims = provisioner.setdefault("claims", {})
            for flag, claim in (
                ("x509_min_dur", "minTLSCertDuration"),
                ("x509_max_dur", "maxTLSCertDuration"),
                ("x509_default_dur", "defaultTLSCertDuration"),
            ):
                value = getattr(args, flag)
                if value:
                    claims[claim] = value
            write_atomic(config_file, json.dumps(config, indent=4).encode(), 0o644)
            print(f"step: updated provisioner {args.name} in {config_file}")
            return 0
    print(f"step: provisioner {args.name} not found in {config_file}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="step", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("path").set_defaults(func=lambda _a: print(step_path()) or 0)
    ca = commands.add_parser("ca").add_subparsers(dest="ca_command", required=True)

    init = ca.add_parser("init")
    init.add_argument("--name", required=True)
    init.add_argument("--dns", required=True)
    init.add_argument("--address", default=":9000")
    init.add_argument("--provisioner", default="admin")
    init.add_argument("--password-file")
    init.add_argument("--provisioner-password-file")
    init.add_argument("--acme", action="store_true")
    # Accepted for interface compatibility; the stand-in makes a plain X.509 CA only.
    for flag in ("--ssh", "--remote-management"):
        init.add_argument(flag, action="store_true")
    for option in ("--admin-subject", "--root", "--key", "--key-password-file",
                   "--deployment-type", "--with-ca-url"):
        init.add_argument(option)
    init.set_defaults(func=ca_init)

    ca.add_parser("health").set_defaults(func=ca_health)

    provisioner = ca.add_parser("provisioner").add_subparsers(dest="p_command", required=True)
    update = provisioner.add_parser("update")
    update.add_argument("name")
    update.add_argument("--x509-min-dur")
    update.add_argument("--x509-max-dur")
    update.add_argument("--x509-default-dur")
    update.add_argument("--ca-config")
    update.set_defaults(func=ca_provisioner_update)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
