"""Service identity by mutual TLS: the project's dev CA, a certificate per
service, and the gRPC credentials built from them.

`make certs` (python -m shared.tls) writes into one folder (TLS_DIR, default
data/certs): ca.crt and ca.key, and NAME.crt / NAME.key for each service. A
process presents NAME's certificate and trusts only ca.crt. In production the
folder is a mounted Secret holding ca.crt and the service's own pair.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Every process that holds a service identity (workers use the queue's).
SERVICE_NAMES: tuple[str, ...] = ("tasks", "queue", "verification", "gateway")
CA_NAME = "ca"
_VALID_DAYS = 825


@dataclass(frozen=True)
class CertPaths:
    """Where one service's pair and the CA certificate are."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, folder: str | Path, name: str) -> CertPaths:
        root = Path(folder)
        return cls(root / f"{CA_NAME}.crt", root / f"{name}.crt", root / f"{name}.key")

    def exist(self) -> bool:
        return self.ca.is_file() and self.cert.is_file() and self.key.is_file()

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca certificate, certificate chain, private key) in PEM."""
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def _write_private(path: Path, data: bytes) -> None:
    """Create a file only its owner can read (private keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tee-verifier"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _hosts(name: str, extra: Sequence[str]) -> list[x509.GeneralName]:
    """The names a peer may dial this service by: its own, the k8s Service's, loopback."""
    names: list[x509.GeneralName] = []
    for host in (name, f"verifier-{name}", "localhost", *extra):
        names.append(x509.DNSName(host))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    names.append(x509.IPAddress(ipaddress.ip_address("::1")))
    return names


def _create_ca(
    folder: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name("tee-verifier dev CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .sign(key, hashes.SHA256())
    )
    _write_private(folder / f"{CA_NAME}.key", _key_pem(key))
    (folder / f"{CA_NAME}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((folder / f"{CA_NAME}.crt").read_bytes())
    key = serialization.load_pem_private_key((folder / f"{CA_NAME}.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    return cert, key


def issue(
    folder: str | Path, name: str, extra_hosts: Sequence[str] = (), now: dt.datetime | None = None
) -> CertPaths:
    """A certificate for service `name` from the folder's CA (made first if missing),
    good for both ends of a connection (serverAuth and clientAuth)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    now = now or dt.datetime.now(dt.UTC)
    if (root / f"{CA_NAME}.crt").is_file() and (root / f"{CA_NAME}.key").is_file():
        ca_cert, ca_key = _load_ca(root)
    else:
        ca_cert, ca_key = _create_ca(root, now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_hosts(name, extra_hosts)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = CertPaths.of(root, name)
    _write_private(paths.key, _key_pem(key))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def ensure_dev_certs(folder: str | Path, names: Sequence[str] = SERVICE_NAMES) -> list[str]:
    """Make the CA and any missing service certificate; returns the names it issued."""
    made = []
    for name in names:
        if not CertPaths.of(folder, name).exist():
            issue(folder, name)
            made.append(name)
    return made


# --- gRPC credentials (imported lazily so cert tooling works without grpc) ------------


def server_credentials(paths: CertPaths, *, require_client_auth: bool) -> object:
    """TLS for a listening port. With require_client_auth, only peers with a
    certificate from our CA get in (the internal port); without, no client
    certificate is asked for, so a peer certificate on a call always means it
    came through the mutual-TLS port."""
    import grpc

    ca, chain, key = paths.read()
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=ca if require_client_auth else None,
        require_client_auth=require_client_auth,
    )


def channel_credentials(paths: CertPaths, *, client_cert: bool = True) -> object:
    """TLS to a peer that trusts our CA, presenting our certificate (mutual TLS)."""
    import grpc

    ca, chain, key = paths.read()
    if not client_cert:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=chain
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shared.tls", description="make dev certificates"
    )
    parser.add_argument("--dir", help="output folder (default: TLS_DIR or data/certs)")
    parser.add_argument("--force", action="store_true", help="issue new certificates (same CA)")
    parser.add_argument("--host", action="append", default=[], help="extra DNS name, repeatable")
    args = parser.parse_args(argv)
    if args.dir:
        folder = Path(args.dir)
    else:
        from shared.config import CommonSettings, load_settings

        folder = Path(load_settings(CommonSettings).effective_tls_dir)
    for name in SERVICE_NAMES:
        if args.force or args.host or not CertPaths.of(folder, name).exist():
            issue(folder, name, args.host)
            print(f"certs: issued {folder / name}.crt")
    print(f"certs: CA and service certificates in {folder} (private keys mode 0600)")


if __name__ == "__main__":
    main()
