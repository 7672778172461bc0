"""Registry certificates and credentials, checked with openssl and bcrypt themselves."""

import datetime as dt
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


def _openssl_verify(ca, cert, *extra) -> subprocess.CompletedProcess:
    """`openssl verify`; what it says (its verdicts go to stderr) is in ``.stderr``."""
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), *extra, str(cert)],
        capture_output=True, text=True,
    )  # fmt: skip


def test_server_cert_verifies_against_the_ca_with_every_san(files):
    pki.make_server_cert(files, ["172.28.0.1", "Registry.Example.com"], days=30)
    out = _openssl_verify(files.ca_cert, files.server_cert, "-purpose", "sslserver")
    assert out.returncode == 0, out.stderr
    for host, flag in (("172.28.0.1", "-verify_ip"), ("registry.example.com", "-verify_hostname")):
        ok = _openssl_verify(files.ca_cert, files.server_cert, flag, host)
        assert ok.returncode == 0, ok.stderr
    wrong = _openssl_verify(files.ca_cert, files.server_cert, "-verify_ip", "10.9.9.9")
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
    assert hashed.startswith("$2y$05$")  # generated: random, a low cost (pki.py says why)


def test_a_chosen_password_keeps_a_slow_hash(files):
    pki.make_credentials(files, "correct horse battery")
    user, hashed = files.htpasswd.read_text().strip().split(":", 1)
    assert hashed.startswith("$2y$10$")
    assert bcrypt.checkpw(b"correct horse battery", hashed.replace("$2y$", "$2b$").encode())


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


def test_explicit_validity_makes_expired_and_not_yet_valid_certificates(files):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    pki.make_server_cert(files, ["10.0.0.1"], 10, valid_from=now - dt.timedelta(days=40))
    info = pki.certificate_info(files.server_cert)
    assert info["not_before"] == (now - dt.timedelta(days=40)).timestamp()
    assert info["not_after"] == (now - dt.timedelta(days=30)).timestamp()
    assert "certificate has expired" in _openssl_verify(files.ca_cert, files.server_cert).stderr
    pki.make_server_cert(files, ["10.0.0.1"], 10, valid_from=now + dt.timedelta(days=2))
    out = _openssl_verify(files.ca_cert, files.server_cert)
    assert "certificate is not yet valid" in out.stderr


def test_next_ca_signs_and_is_promoted_in_place_of_the_old(files):
    old_pem = files.ca_cert.read_bytes()
    nxt = files.next_ca()
    assert nxt.ca_cert.name == "ca-next.crt" and nxt.server_cert == files.server_cert
    pki.make_ca(nxt)
    assert pki.certificate_info(nxt.ca_cert)["subject"] != pki.certificate_info(old_pem)["subject"]
    pki.make_server_cert(nxt, ["10.0.0.1"], 30)
    assert pki.signed_by(files.server_cert, nxt.ca_cert)
    assert not pki.signed_by(files.server_cert, files.ca_cert)
    assert _openssl_verify(nxt.ca_cert, files.server_cert).returncode == 0
    new_pem = nxt.ca_cert.read_bytes()
    pki.promote_next_ca(files)
    assert files.ca_cert.read_bytes() == new_pem and not nxt.ca_cert.exists()
    assert not nxt.ca_key.exists() and files.ca_key.stat().st_mode & 0o777 == 0o600
    assert pki.signed_by(files.server_cert, files.ca_cert)


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("Request failed: <urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
         "failed: certificate has expired (_ssl.c:1006)>",
         "server certificate expired on 2020-01-11 00:00 UTC (renew it: `evc registry rotate`)"),
        ("x509: certificate is valid for 10.9.9.9, not 172.30.64.1",
         "certificate is for other names (10.9.9.9, reg.example), not 172.30.64.1"),
        ("... certificate verify failed: unable to get local issuer certificate (_ssl.c:1006)>",
         "unknown authority: the registry's certificate (issued by CN=other) is not signed by "
         "a CA the node trusts; run `evc cert push`"),
        ("Request failed: <urlopen error [Errno 111] Connection refused>",
         "registry not answering at 172.30.64.1:5000 (connection refused)"),
        ("Status code was 200 and not [401]: OK (0 bytes)",
         "https://172.30.64.1:5000/v2/ answered HTTP 200, not 401: is it the EVC registry?"),
        ("Request failed: <urlopen error [Errno 2] No such file or directory>",
         "the node lacks the registry CA file: run `evc cert push`"),
        ("something else entirely", "something else entirely"),
    ],
)  # fmt: skip
def test_failure_reasons_in_plain_words(raw, reason):
    from evc.certs import reason as explain

    served = {
        "sans": ["10.9.9.9", "reg.example"],
        "issuer": "CN=other",
        "not_before": dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp(),
        "not_after": dt.datetime(2020, 1, 11, tzinfo=dt.UTC).timestamp(),
    }
    assert explain(raw, "172.30.64.1:5000", lambda: served) == reason


def test_expired_by_the_nodes_clock_only_says_so():
    from evc.certs import reason as explain

    now = dt.datetime.now(dt.UTC).timestamp()
    served = {"sans": [], "issuer": "", "not_before": now - 86400, "not_after": now + 86400}
    msg = explain("certificate has expired", "10.0.0.1:5000", lambda: served)
    assert msg.startswith("server certificate is expired by the node's clock")
    assert msg.endswith("check the node's clock")
