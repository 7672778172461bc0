"""schemathesis against `evc serve`'s OpenAPI document: for generated requests to every
operation, with an admin token and with none, no answer is a 5xx and every answer
matches the document (status, content type, body schema). A bounded number of
examples per operation keeps it to about a minute."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.unit import api_support as api

EXAMPLES = 4  # per operation and caller
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
SKIP = {("GET", "/api/events")}  # a stream that does not end: test_api follows it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from evc.config import init_workspace

    ws = init_workspace(tmp_path_factory.mktemp("ws"))
    shared = tmp_path_factory.mktemp("shared")
    with api.running(ws, "--data-root", str(shared)) as s:
        yield s


@pytest.mark.parametrize("role", ["admin", None])
def test_generated_requests_get_no_5xx_and_match_the_document(server, role):
    schema = schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")
    headers = {"Authorization": f"Bearer {server.tokens[role]}"} if role else {}
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) > 30
    failures, statuses = [], set()
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIP:
            continue

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def check(case):
            if case.query and "wait" in case.query:
                case.query["wait"] = 0  # actions answer at once; they run in the worker
            # sent with requests itself: schemathesis' own sending trips over the
            # urllib3-future that shadows urllib3 in this venv
            kwargs = case.as_transport_kwargs(base_url=server.url, headers=headers)
            with requests.Session() as session:
                response = session.request(**kwargs, timeout=30)
            statuses.add(response.status_code)
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - gathered, to name every failing route
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    assert {200, 401 if role is None else 404} <= statuses, statuses
