"""Issue 14, first end-to-end test: through the real hub and a real Chromium.

alice (a member of cohort) asks with her own token for an export of a CSV with a cell count of 3; the checks flag
it; steward steve opens the airlock page (the hub's OAuth), sees the flagged cell marked in the preview, is refused
an approval without a reason, approves with one: the file is still not released; steward sara approves with a
reason on a 360 px wide phone: the file appears in alice's ordinary home with the same sha256. Each step is in the
audit chain and `gpuhub audit verify` passes. Screenshots: tests/artifacts/airlock/steward/.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import pytest
import requests

from gpuhub.hub.runtime import site as load_site
from quota.audit import AuditLog
from quota.db import make_engine
from tests.airlock.conftest import read_file
from tests.airlock.hubkit import airlock_hub  # noqa: F401 - the module's hub
from tests.browser.kit import browser, fresh_shots  # noqa: F401 - one chromium for the module

pytestmark = pytest.mark.docker
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "airlock"
SHOTS = ARTIFACTS / "steward"  # this module's; pages/ is test_airlock_pages.py's, hub/ and lab/ the export tests'
TABLE = b"region,patients\nseoul,120\nbusan,3\nulsan,45\n"


@pytest.fixture(scope="module")
def shots():
    return fresh_shots(SHOTS)


def signed_in(browser, hub, user: str, width: int = 1280, lang: str = "en-US"):  # noqa: F811
    """A browser page logged in to the hub as ``user`` (the shared-password form)."""
    ctx = browser.new_context(viewport={"width": width, "height": 900}, locale=lang, extra_http_headers={
        "Accept-Language": lang})  # fmt: skip
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", hub.password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(re.escape(hub.url) + r"/(hub|user)/"))
    return page


def airlock_rows(hub, project: str) -> list[list[str]]:
    engine = make_engine(load_site(hub.site_path).hub.database_url)
    try:
        now = datetime.now(UTC)
        rows = list(AuditLog(engine).export(project, now - timedelta(days=1), now + timedelta(days=1)))[1:]
    finally:
        engine.dispose()
    return [r for r in rows if r[4].startswith("airlock.")]


def test_two_stewards_release_a_flagged_table_into_the_home(airlock_hub, browser, shots, docker_client):  # noqa: F811
    hub = airlock_hub
    vols = hub.volumes
    hub.volume(vols.project_home("alice", "cohort"), {"results/table.csv": TABLE})
    home = hub.volume(vols.home("alice"))

    # --- alice asks with her own token; the checks flag the cell of 3
    r = requests.post(
        f"{hub.service}api/exports",
        json={"project": "cohort", "path": "results/table.csv", "why": "Table 2 of the paper"},
        headers={"Authorization": f"token {hub.tokens['alice']}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    req = r.json()
    rid = req["id"]
    assert req["state"] == "checks_done" and req["sha256"] == hashlib.sha256(TABLE).hexdigest()
    flagged = [c for c in req["checks"] if not c["passed"]]
    assert [(c["rule"], c["location"]) for c in flagged] == [("cell-count", "line 3, column 'patients'")]

    # --- steward 1 on the page: the request with its finding, the preview with the cell marked
    page = signed_in(browser, hub, "steve")
    page.goto(hub.service)
    page.wait_for_selector(f".gpuhub-request[data-request='{rid}']")
    card = page.locator(f".gpuhub-request[data-request='{rid}']")
    assert "cell-count" in card.inner_text() and "Table 2 of the paper" in card.inner_text()
    page.screenshot(path=shots / "01-steward-list.png", full_page=True)
    card.locator("a").first.click()
    page.wait_for_selector("#gpuhub-request")
    cells = page.locator(".gpuhub-preview td.gpuhub-flag")
    assert cells.count() == 1 and cells.inner_text() == "3"
    assert "below 10" in cells.get_attribute("title")
    page.screenshot(path=shots / "02-steward-request-preview.png", full_page=True)

    # approving over a failed check without a reason is refused, on the page, naming the rule
    page.click("button[name=decision][value=approve]")
    page.wait_for_selector(".gpuhub-error")
    refusal = page.inner_text(".gpuhub-error")
    assert "airlock-reason-required" in refusal and "needs a written reason" in refusal
    page.screenshot(path=shots / "03-steward-reason-required.png", full_page=True)
    page.fill("textarea[name=reason]", "Busan's 3 is a hospital count, not patients")
    page.click("button[name=decision][value=approve]")
    page.wait_for_selector("#gpuhub-request[data-state='in_review']")
    assert page.locator("form.gpuhub-review").count() == 0  # steve reviewed: no second vote
    page.screenshot(path=shots / "04-after-first-approval.png", full_page=True)
    with pytest.raises(docker.errors.NotFound):
        read_file(docker_client, home, "exports/cohort/table.csv")  # one approval of two: nothing released

    # --- steward 2, on a phone, in Korean: approves with a reason; the file is released
    phone = signed_in(browser, hub, "sara", width=360, lang="ko-KR")
    phone.goto(f"{hub.service}requests/{rid}")
    phone.wait_for_selector("form.gpuhub-review")
    assert "승인" in phone.inner_text("form.gpuhub-review")  # Approve, from the Korean catalog
    assert phone.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
    phone.screenshot(path=shots / "05-second-steward-phone-ko.png", full_page=True)
    phone.click("button[name=decision][value=approve]")  # no reason: refused, said in Korean
    phone.wait_for_selector(".gpuhub-error")
    assert "이유를 적으세요" in phone.inner_text(".gpuhub-error")
    phone.fill("textarea[name=reason]", "agreed: aggregated hospital counts")
    phone.click("button[name=decision][value=approve]")
    phone.wait_for_selector("#gpuhub-request[data-state='released']")
    phone.screenshot(path=shots / "06-released-phone-ko.png", full_page=True)
    phone.goto(hub.service)
    phone.wait_for_selector(f".gpuhub-decided tr[data-request='{rid}']")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 360
    phone.screenshot(path=shots / "06b-list-phone-ko.png", full_page=True)
    body, uid = read_file(docker_client, home, "exports/cohort/table.csv")
    assert hashlib.sha256(body).hexdigest() == req["sha256"] and uid == vols.uid("alice")

    # --- the requester sees the outcome (no preview, no form)
    mine = signed_in(browser, hub, "alice")
    mine.goto(hub.service)
    mine.wait_for_selector(f".gpuhub-own tr[data-request='{rid}'] .gpuhub-state[data-state='released']")
    assert mine.locator("form.gpuhub-review").count() == 0
    mine.screenshot(path=shots / "07-requester-list.png", full_page=True)

    # --- every step in the audit chain, and the chain verifies
    steps = [(row[0], row[4]) for row in airlock_rows(hub, "cohort") if row[3].startswith(f"export {rid}:")]
    assert steps == [
        ("alice", "airlock.export.submitted"),
        ("gpuhub-airlock", "airlock.export.checks_done"),
        ("steve", "airlock.export.in_review"),
        ("sara", "airlock.export.approved"),
        ("gpuhub-airlock", "airlock.export.released"),
    ], steps
    env = {**os.environ, "GPUHUB_SITE_CONFIG": str(hub.site_path)}
    out = subprocess.run([sys.executable, "-m", "gpuhub", "audit", "verify"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "audit log ok" in out.stdout, out.stdout + out.stderr
