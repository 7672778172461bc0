"""The registry's certificates and credentials, made with `cryptography` and `bcrypt`.

Everything lives in ``.evc/registry/`` (0700): private keys and the password
file are 0600; nothing here is ever printed unless the user asks.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from evc.errors import UsageError
from evc.keys import write_private

CA_DAYS = 3650
USER = "evc"


@dataclass(frozen=True)
class RegistryFiles:
    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def htpasswd(self) -> Path:
        return self.root / "htpasswd"

    @property
    def password(self) -> Path:
        return self.root / "password"


def subject_alt_names(hosts: list[str]):
    from cryptography import x509

    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c.isspace() for c in host) or "/" in host:
                raise UsageError(
                    f"--host {host!r}: expected an IP address or a DNS name."
                ) from None
            names.append(x509.DNSName(host.lower()))
    if not names:
        raise UsageError("The registry needs at least one --host that the nodes will use.")
    return names


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EVC"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(files: RegistryFiles, days: int = CA_DAYS) -> None:
    """A new CA key and self-signed certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(f"EVC registry CA {now:%Y-%m-%d %H:%M}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
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
            ),  # fmt: skip
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    write_private(
        files.ca_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    files.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_server_cert(files: RegistryFiles, hosts: list[str], days: int) -> None:
    """A server key and certificate signed by the CA, with a SAN for every host."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if not 1 <= days <= 3650:
        raise UsageError(f"--days {days}: a server certificate lasts 1 to 3650 days.")
    sans = subject_alt_names(hosts)
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(
        files.server_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_credentials(files: RegistryFiles, password: str | None = None) -> None:
    """The password file (generated unless given) and an htpasswd line with bcrypt."""
    import bcrypt

    if password is not None and len(password) < 12:
        raise UsageError("The registry password must be at least 12 characters.")
    password = password or secrets.token_urlsafe(24)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    write_private(files.password, password.encode())
    write_private(files.htpasswd, f"{USER}:{hashed.replace('$2b$', '$2y$', 1)}\n".encode())


def certificate_info(path: Path) -> dict:
    """Subject, SANs and validity of a PEM certificate."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in sans]
    except x509.ExtensionNotFound:
        names = []
    now = dt.datetime.now(dt.UTC)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": names,
        "not_before": cert.not_valid_before_utc.timestamp(),
        "not_after": cert.not_valid_after_utc.timestamp(),
        "days_left": (cert.not_valid_after_utc - now).days,
    }
