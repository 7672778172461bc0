"""The registry's certificates and credentials, made with `cryptography` and `bcrypt`.

Everything lives in ``.evc/registry/`` (0700): private keys and the password
file are 0600; nothing here is ever printed unless the user asks.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from evc.errors import UsageError
from evc.keys import write_private

CA_DAYS = 3650
USER = "evc"


@dataclass(frozen=True)
class RegistryFiles:
    """The files of one registry. ``ca`` names the CA pair: ``ca``, or ``ca-next`` for the
    CA that a ``rotate --new-ca`` brings in (see :meth:`next_ca`)."""

    root: Path
    ca: str = "ca"

    @property
    def ca_key(self) -> Path:
        return self.root / f"{self.ca}.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / f"{self.ca}.crt"

    def next_ca(self) -> RegistryFiles:
        """The same files, with the incoming CA in place of the current one."""
        return RegistryFiles(self.root, "ca-next")

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

    @property
    def pull_dir(self) -> Path:
        """The folder the read-only endpoint mounts at /auth: a folder, not the file, so
        that an atomic replace of its htpasswd is seen (a file mount keeps the old inode)."""
        return self.root / "pull"

    @property
    def pull_htpasswd(self) -> Path:
        return self.pull_dir / "htpasswd"

    @property
    def pull_key(self) -> Path:
        return self.root / "pull-key"

    @property
    def pull_nonces(self) -> Path:
        return self.root / "pull-devices.json"


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
    """A new CA key and self-signed certificate (at ``files.next_ca()`` for a rotation)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # Unique: the incoming CA of a rotation must not share the current one's name.
    name = _name(f"EVC registry CA {now:%Y-%m-%d %H:%M:%S} {secrets.token_hex(3)}")
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


def check_days(days: int) -> None:
    """Refuse a server certificate lifetime outside 1 to 3650 days."""
    if not 1 <= days <= 3650:
        raise UsageError(f"--days {days}: a server certificate lasts 1 to 3650 days.")


def make_server_cert(
    files: RegistryFiles,
    hosts: list[str],
    days: int,
    valid_from: dt.datetime | None = None,
    *,
    key_path: Path | None = None,
    cert_path: Path | None = None,
) -> None:
    """A server key and certificate signed by ``files``' CA, with a SAN for every host,
    written to ``files``' server files (or ``key_path``/``cert_path``: the same CA signs
    other servers' certificates, `evc serve --tls`).

    Valid from ``valid_from`` (default: five minutes ago, for clock skew) for ``days``;
    an explicit start makes expired or not-yet-valid certificates for tests.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    check_days(days)
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
        .not_valid_before(valid_from or now - dt.timedelta(minutes=5))
        .not_valid_after((valid_from or now) + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(
        key_path or files.server_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    (cert_path or files.server_cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_server_cert(
    files: RegistryFiles, names: list[str], days: int, key: Path, cert: Path, renew_days: int
) -> bool:
    """Keep ``key``/``cert`` (another server's pair signed by ``files``' CA) while they fit:
    same CA, every name in ``names``, more than ``renew_days`` left; else make them again.
    Whether they were made."""
    if cert.exists() and key.exists() and signed_by(cert, files.ca_cert):
        info = certificate_info(cert)
        if set(names) <= set(info["sans"]) and info["days_left"] > renew_days:
            return False
    make_server_cert(files, names, days, key_path=key, cert_path=cert)
    return True


# The registry checks an htpasswd bcrypt hash on every request (distribution keeps no
# cache): 68 ms of CPU at cost 10 against 2 ms at cost 5 (measured with `bcrypt`), and a
# push or a pull makes tens of requests. A generated password (192 or 256 random bits)
# needs no slow hash to resist guessing; a password someone chose keeps cost 10.
RANDOM_PASSWORD_ROUNDS = 5


def bcrypt_hash(password: str, rounds: int = 10) -> str:
    """An htpasswd bcrypt hash (``$2y$``, the prefix distribution's htpasswd reads)."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return hashed.replace("$2b$", "$2y$", 1)


def read_htpasswd(path: Path) -> dict[str, str]:
    """user -> hash; an absent file is empty."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split(":", 1) for line in lines if ":" in line)


def write_htpasswd(path: Path, entries: dict[str, str]) -> None:
    """Replace ``path`` atomically (0600): the registry never reads half a file, and the
    new mtime makes it read the file again on its next request."""
    for user in entries:
        if not user or any(c in user for c in ":\n\r"):
            raise ValueError(f"{user!r} cannot be an htpasswd user")
    text = "".join(f"{user}:{hashed}\n" for user, hashed in sorted(entries.items()))
    write_private(path, text.encode())


def make_credentials(files: RegistryFiles, password: str | None = None) -> None:
    """The password file (generated unless given) and an htpasswd line with bcrypt
    (:data:`RANDOM_PASSWORD_ROUNDS` for a generated one)."""
    if password is not None and len(password) < 12:
        raise UsageError("The registry password must be at least 12 characters.")
    rounds = 10 if password else RANDOM_PASSWORD_ROUNDS
    password = password or secrets.token_urlsafe(24)
    write_private(files.password, password.encode())
    write_htpasswd(files.htpasswd, {USER: bcrypt_hash(password, rounds)})


def certificate_info(cert: Path | bytes) -> dict:
    """Subject, SANs, validity and SHA-256 fingerprint of a PEM certificate (file or bytes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(cert if isinstance(cert, bytes) else cert.read_bytes())
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
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def signed_by(cert: Path, ca_cert: Path) -> bool:
    """Whether ``ca_cert`` signed ``cert`` (signature checked, not just names)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        x509.load_pem_x509_certificate(cert.read_bytes()).verify_directly_issued_by(
            x509.load_pem_x509_certificate(ca_cert.read_bytes())
        )
    except (InvalidSignature, ValueError, TypeError, OSError):
        return False
    return True


def promote_next_ca(files: RegistryFiles) -> None:
    """Make the incoming CA the current one; the old CA's key and certificate are gone."""
    nxt = files.next_ca()
    os.replace(nxt.ca_key, files.ca_key)
    os.replace(nxt.ca_cert, files.ca_cert)
