"""A throw-away X.509 test PKI (CA, server and client certificates) made with `cryptography` for TLS broker tests."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclasses.dataclass(frozen=True)
class TestPki:
    """PEM files of one test PKI: `ca` signs the server and client certificates, `other_ca` signs nothing."""

    __test__ = False  # not a pytest test class, though its name starts with "Test"

    ca: Path
    ca_key: Path
    other_ca: Path
    other_ca_key: Path
    server: Path  # CN 127.0.0.1, serverAuth, SAN 127.0.0.1 and localhost
    server_key: Path
    client: Path  # CN cart-07, clientAuth
    client_key: Path
    backend: Path  # CN backend, clientAuth
    backend_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))


def _write(cert_path: Path, key_path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_validity(x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                      .public_key(key.public_key()).serial_number(x509.random_serial_number()))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, usage: x509.ObjectIdentifier,
          san: bool = False) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_validity(x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
                         .public_key(key.public_key()).serial_number(x509.random_serial_number()))
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(d: Path) -> TestPki:
    """Write a CA, another CA, a server certificate for 127.0.0.1 and two client certificates into `d`."""
    d.mkdir(parents=True, exist_ok=True)
    pki = TestPki(ca=d / "ca.pem", ca_key=d / "ca.key", other_ca=d / "other_ca.pem", other_ca_key=d / "other_ca.key",
                  server=d / "server.pem", server_key=d / "server.key", client=d / "client.pem",
                  client_key=d / "client.key", backend=d / "backend.pem", backend_key=d / "backend.key")
    ca_key, ca_cert = _ca("shelfscout test CA")
    _write(pki.ca, pki.ca_key, ca_key, ca_cert)
    _write(pki.other_ca, pki.other_ca_key, *_ca("some other CA"))
    _write(pki.server, pki.server_key, *_leaf(ca_key, ca_cert, "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, san=True))
    _write(pki.client, pki.client_key, *_leaf(ca_key, ca_cert, "cart-07", ExtendedKeyUsageOID.CLIENT_AUTH))
    _write(pki.backend, pki.backend_key, *_leaf(ca_key, ca_cert, "backend", ExtendedKeyUsageOID.CLIENT_AUTH))
    return pki


def client_cert(pki: TestPki, cn: str, d: Path) -> tuple[Path, Path]:
    """Write a clientAuth certificate with common name `cn`, signed by `pki.ca`, as `d/<cn>.crt` and `d/<cn>.key`."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{pki.ca_key} is not an EC private key")
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    d.mkdir(parents=True, exist_ok=True)
    crt, key_path = d / f"{cn}.crt", d / f"{cn}.key"
    _write(crt, key_path, *_leaf(ca_key, ca_cert, cn, ExtendedKeyUsageOID.CLIENT_AUTH))
    return crt, key_path
