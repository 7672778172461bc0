"""The web console in headless Chromium against a real `evc serve` with the fake fleet:
every page draws without a script error or a Content-Security-Policy violation, a job
started from the Jobs page is followed live to 100 %, its results show their boxes,
and a viewer gets no controls. The same against the lab: tests/lab/test_console_lab.py."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect

from evc import db as evcdb
from tests.unit import api_support as api

REPO_SAMPLES = api.REPO / "run_cfg" / "samples"
PAGES = ("fleet", "models", "jobs", "results", "runs")


@pytest.fixture
def server(workspace, fleet, tmp_path):
    root = tmp_path / "shared"
    shutil.copytree(REPO_SAMPLES, root / "samples")
    with api.running(
        workspace, "--data-root", str(root), env={"EVC_FAKE_SHARD_S": "0.3"}
    ) as s:  # fmt: skip
        yield s


def test_pages_draw_and_a_job_started_from_the_jobs_page_is_followed_to_its_boxes(
    server, workspace, tmp_path
):
    with api.console(server, tmp_path / "screens") as ui:
        ui.login("operator")
        for page in PAGES:
            took = ui.open(page, page)
            assert took < 5, f"{page} took {took:.1f} s"
        ui.open("fleet")
        rows = ui.page.locator("#view tbody tr[data-key]")
        assert rows.count() == 3
        assert ui.page.get_attribute("tr[data-key=node3] .status", "data-status") == "offline"

        ui.open("jobs")
        ui.page.select_option("#job-form select[name=model]", "faces:1.0")
        ui.page.fill("#job-form input[name=target]", "node1,node2")
        ui.page.fill("#job-form input[name=data]", "samples")
        ui.page.click("#job-form button[type=submit]")
        ui.page.wait_for_selector("#job[data-job]")  # the job's page, updated live
        ui.page.wait_for_selector("#job[data-state=complete][data-percent='100']", timeout=60_000)
        ui.shot("job")
        job_id = ui.page.get_attribute("#job", "data-job")

        ui.open(f"results/{job_id}", "results-job")
        figure = ui.page.locator("figure[data-item='astronaut.jpg']")
        assert figure.locator("li.box[data-label=face]").get_attribute("data-box") == (
            "177,66,95,95"  # what the fake fleet answers
        )
        assert ui.page.locator("figure.result").count() == 6
        ui.page.select_option("#label", "person")
        expect(ui.page.locator("figure.result")).to_have_count(3)  # page's CSP: no eval
        assert ui.errors == []

    items = evcdb.workspace_db(workspace).execute(
        "SELECT COUNT(*) FROM results WHERE job_id = ? AND state = 'ok'", [job_id]
    )
    assert items.fetchone()[0] == 6


def test_a_viewer_sees_no_controls_and_a_bad_token_is_turned_back(server, tmp_path):
    with api.console(server, tmp_path / "screens") as ui:
        ui.page.goto(server.url + "/")
        ui.page.fill("#token", "evc_" + "A" * 43)
        ui.page.click("#login-form button[type=submit]")
        ui.page.wait_for_selector("#login-error:has-text('unknown, revoked or expired')")
        ui.errors.clear()  # the browser logs the 401 it was meant to get
        ui.login("viewer")
        ui.open("jobs")
        assert ui.page.locator("#job-form").count() == 0
        ui.open("runs")
        assert ui.page.locator("#view button:has-text('Run')").count() == 0
        assert ui.errors == []
