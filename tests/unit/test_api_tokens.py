"""API tokens (`evc token`): shown once, stored only as a hash, refused once revoked or
expired, ordered roles."""

import json
import time

import pytest

from evc import db as evcdb
from evc.api import tokens
from evc.errors import UsageError
from tests.conftest import evc, files_holding


def test_a_token_is_printed_once_and_stored_only_as_its_hash(workspace):
    env = {"EVC_HOME": str(workspace.root)}
    created = evc("token", "create", "ci", "--role", "operator", "--expires", "30d", env=env,
                  check=0)  # fmt: skip
    secret = created.stdout.strip()
    assert secret.startswith("evc_") and len(secret) == 4 + 43  # 256 random bits
    assert "not shown again" in created.stderr
    listed = json.loads(evc("token", "list", "--json", env=env, check=0).stdout)
    assert [(t["name"], t["role"], t["state"]) for t in listed] == [("ci", "operator", "active")]
    assert 29 * 86400 < listed[0]["expires"] - listed[0]["created"] <= 30 * 86400
    assert secret not in json.dumps(listed)
    assert files_holding(workspace, secret, secret[4:]) == []  # database, audit log, inventory
    db = evcdb.workspace_db(workspace)
    assert tokens.verify(db, secret).name == "ci"
    assert tokens.verify(db, secret + "x") is None and tokens.verify(db, "evc_" + "A" * 43) is None
    assert tokens.verify(db, "evc_" + "x" * 10_000) is None


def test_revoked_and_expired_tokens_are_refused_and_a_name_is_taken_once(workspace):
    db = evcdb.workspace_db(workspace)
    secret, _ = tokens.create(workspace, tokens.CreateOptions(name="ci", role="viewer"))
    with pytest.raises(UsageError, match="exists; revoke it first"):
        tokens.create(workspace, tokens.CreateOptions(name="ci"))
    assert tokens.revoke(workspace, "ci").state == "revoked"
    assert tokens.verify(db, secret) is None
    again, token = tokens.create(workspace, tokens.CreateOptions(name="ci", role="admin"))
    assert token.role == "admin" and tokens.verify(db, again).name == "ci"
    assert tokens.verify(db, secret) is None  # the old secret stays dead
    with pytest.raises(UsageError, match="No token named 'nope'. Tokens: ci"):
        tokens.revoke(workspace, "nope")
    old, _ = tokens.create(workspace, tokens.CreateOptions(name="short", expires="1h"))
    db.execute("UPDATE api_tokens SET expires = ? WHERE name = 'short'", [time.time() - 1])
    db.conn.commit()
    assert tokens.verify(db, old) is None
    assert {t.name: t.state for t in tokens.list_tokens(workspace)}["short"] == "expired"


def test_roles_are_ordered_and_bad_values_are_refused(workspace):
    viewer = tokens.Token("v", "viewer", 0, None, None, None)
    admin = tokens.Token("a", "admin", 0, None, None, None)
    assert viewer.allows("viewer") and not viewer.allows("operator")
    assert admin.allows("operator") and admin.allows("admin")
    for bad in ({"name": "x", "role": "root"}, {"name": "../x"}, {"name": "x", "expires": "soon"}):
        with pytest.raises(UsageError):
            tokens.CreateOptions.of(**bad)
