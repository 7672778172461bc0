"""Registry certificates and credentials, checked with openssl and bcrypt themselves."""

import subprocess

import bcrypt
import pytest

from evc import pki
from evc.errors import UsageError


@pytest.fixture
def files(tmp_path):
    f = pki.RegistryFiles(tmp_path)
    pki.make_ca(f)
    return f


def test_server_cert_verifies_against_the_ca_with_every_san(files):
    pki.make_server_cert(files, ["172.28.0.1", "Registry.Example.com"], days=30)
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca_cert), "-purpose", "sslserver",
         str(files.server_cert)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for host, flag in (("172.28.0.1", "-verify_ip"), ("registry.example.com", "-verify_hostname")):
        ok = subprocess.run(
            ["openssl", "verify", "-CAfile", str(files.ca_cert), flag, host,
             str(files.server_cert)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
    wrong = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca_cert), "-verify_ip", "10.9.9.9",
         str(files.server_cert)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert wrong.returncode != 0
    info = pki.certificate_info(files.server_cert)
    assert info["sans"] == ["172.28.0.1", "registry.example.com"] and 28 <= info["days_left"] <= 30


def test_private_files_are_0600(files):
    pki.make_server_cert(files, ["10.0.0.1"], days=30)
    pki.make_credentials(files)
    for path in (files.ca_key, files.server_key, files.password, files.htpasswd):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert not list(files.root.glob(".*.tmp"))


def test_htpasswd_is_bcrypt_of_the_stored_password(files):
    pki.make_credentials(files)
    password = files.password.read_text()
    user, hashed = files.htpasswd.read_text().strip().split(":", 1)
    assert user == "evc" and hashed.startswith("$2y$") and len(password) >= 24
    assert bcrypt.checkpw(password.encode(), hashed.replace("$2y$", "$2b$").encode())
    assert password not in files.htpasswd.read_text()


@pytest.mark.parametrize(
    "hosts, days, match",
    [
        ([], 30, "at least one --host"),
        (["bad host"], 30, "expected an IP"),
        (["10.0.0.1"], 0, "1 to 3650 days"),
        (["10.0.0.1"], 99999, "1 to 3650 days"),
    ],
)
def test_bad_certificate_requests(files, hosts, days, match):
    with pytest.raises(UsageError, match=match):
        pki.make_server_cert(files, hosts, days)
    assert not files.server_cert.exists()


def test_short_password_is_refused(files):
    with pytest.raises(UsageError, match="at least 12"):
        pki.make_credentials(files, "short")
    assert not files.password.exists()
