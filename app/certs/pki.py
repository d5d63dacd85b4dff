"""The bus's certificate authority: created in the data directory at first start (or given by
settings), it signs the server certificate of the embedded nats-server, xbusd's own client
certificate, and the accounts' certificates (from their CSRs). A client certificate's
common name is its account's name: that is how NATS maps a connection to an account."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORGANIZATION = "xbus"
SERVER_CLIENT_NAME = "xbusd"  # the CN of xbusd's own NATS client certificate


class CertificateError(ValueError):
    """A CSR or certificate that cannot be used."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def make_csr(account_name: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR as `xbus-client register` sends it."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, account_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise CertificateError("the CSR signature does not match its public key")
    return csr


@dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    fingerprint: str
    not_after: dt.datetime


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @property
    def pem(self) -> str:
        return cert_pem(self.cert).decode()

    @classmethod
    def load_or_create(cls, directory: Path, days: int = 3650) -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = new_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, "Xbus CA"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert_pem(cert))
        return cls(key, cert)

    def _issue(
        self,
        subject_cn: str,
        public_key: object,
        days: int,
        usage: list[x509.ObjectIdentifier],
        hosts: list[str] | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                        x509.NameAttribute(NameOID.COMMON_NAME, subject_cn),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def sign_csr(self, csr_pem: str | bytes, account_name: str, days: int) -> IssuedCertificate:
        """Sign an account's CSR. The certificate's subject is set by the CA (CN = the account
        name) whatever the CSR asked for: the name is what NATS authorises."""
        if days < 1:
            raise CertificateError("a certificate must be valid for at least a day")
        csr = load_csr(csr_pem)
        cert = self._issue(account_name, csr.public_key(), days, [ExtendedKeyUsageOID.CLIENT_AUTH])
        return IssuedCertificate(
            cert_pem(cert).decode(), fingerprint(cert), cert.not_valid_after_utc
        )

    def issue_key_pair(
        self, common_name: str, days: int, *, server_hosts: list[str] | None = None
    ) -> tuple[bytes, bytes]:
        """A new key and its certificate: (key PEM, certificate PEM). With `server_hosts`, a
        server certificate for those names; otherwise a client certificate."""
        key = new_key()
        usage = (
            [ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else [ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        cert = self._issue(common_name, key.public_key(), days, usage, server_hosts)
        return key_pem(key), cert_pem(cert)

    def verify(self, pem: str | bytes) -> x509.Certificate:
        data = pem.encode() if isinstance(pem, str) else pem
        cert = x509.load_pem_x509_certificate(data)
        cert.verify_directly_issued_by(self.cert)
        return cert


@dataclass(frozen=True)
class ServerTls:
    """Files the embedded nats-server and xbusd's own NATS connection use."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _server_files(directory: Path) -> ServerTls:
    return ServerTls(
        ca_file=directory / "ca.crt",
        server_cert=directory / "nats-server.crt",
        server_key=directory / "nats-server.key",
        client_cert=directory / "xbusd-client.crt",
        client_key=directory / "xbusd-client.key",
    )


def certificate_hosts(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    hosts = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return sorted({*names.get_values_for_type(x509.DNSName), *hosts})


def generate_server_certificate(
    ca: CertificateAuthority, directory: Path, hosts: list[str], days: int
) -> x509.Certificate:
    """Issue the nats-server certificate for exactly these host names (DNS names or IP
    addresses) and lifetime, replacing the one in `directory` (`xbusd cert generate`)."""
    if days < 1:
        raise CertificateError("a certificate must be valid for at least a day")
    for host in hosts:
        if not host or any(c.isspace() or c in ",/" for c in host):
            raise CertificateError(f"invalid host name {host!r}")
    tls = _server_files(directory)
    key, pem = ca.issue_key_pair("nats-server", days, server_hosts=sorted(set(hosts)))
    _write_private(tls.server_key, key)
    tls.server_cert.write_bytes(pem)
    return x509.load_pem_x509_certificate(pem)


def ensure_server_tls(
    ca: CertificateAuthority, directory: Path, hosts: list[str], days: int = 825
) -> ServerTls:
    """(Re)issue the nats-server certificate when missing, expiring within 30 days, or not
    valid for one of `hosts` (names it holds beyond those, from `xbusd cert generate`, are
    kept); and xbusd's client certificate."""
    tls = _server_files(directory)
    names = set(hosts)
    reissue = True
    if tls.server_cert.exists():
        held = set(certificate_hosts(x509.load_pem_x509_certificate(tls.server_cert.read_bytes())))
        reissue = not (_fresh(tls.server_cert) and names <= held)
        names |= held
    if reissue:
        generate_server_certificate(ca, directory, sorted(names), days)
    if not _fresh(tls.client_cert):
        key, cert = ca.issue_key_pair(SERVER_CLIENT_NAME, days)
        _write_private(tls.client_key, key)
        tls.client_cert.write_bytes(cert)
    return tls


def _fresh(cert_path: Path) -> bool:
    if not cert_path.exists():
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc - _now() > dt.timedelta(days=30)
