"""`gpuhub project records` after a month of processing (DUA, a member added, a server start, an export approved by
two stewards over a failed check and released, an import): what a steward files with the PIPA records, in JSON,
CSV and a standalone HTML page rendered by real Chromium (screenshot tests/artifacts/projects/records.png).

On SQLite and PostgreSQL, with real Docker volumes for the airlock (the service reads the files itself).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.airlock.conftest import make_volume  # noqa: F401 (fixture)
from tests.browser.kit import browser  # noqa: F401 (fixture)
from tests.projects.recordskit import WHY, gpuhub, scenario, site_of, write_site

pytestmark = pytest.mark.docker
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "projects"


@pytest.fixture
def processed(tmp_path, db_url, engine, clock, docker_client, make_volume):  # noqa: F811
    path = write_site(tmp_path, db_url)
    facts = scenario(engine, site_of(path), clock, docker_client, make_volume)
    return path, facts


def test_records_list_the_export_with_both_reviewers_and_its_checks(processed, clock):
    path, facts = processed
    rc, out, err = gpuhub(path, clock, "project", "records", "cohort", "--format", "json", "--month", "2026-12")
    assert rc == 0, err
    r = json.loads(out)
    assert r["project"]["purpose"].startswith("2015–2020 코호트")
    assert (r["project"]["legal_basis"], r["project"]["records_kept_until"]) == ("pipa-28-2-research", "2029-12-31")
    assert [d["name"] for d in r["items"]] == ["registry"]
    [export] = r["exports"]
    assert (export["id"], export["state"], export["why"]) == (facts["export"], "released", WHY)
    assert export["approved_by"] == ["steve", "sara"]
    assert [v["reason"] for v in export["reviews"]] == ["3 counts hospitals, not people", "agreed: hospitals"]
    assert export["checks_failed"] == ["cell-count"]
    assert any(c["rule"] == "cell-count" and not c["passed"] and "patients" in c["location"] for c in export["checks"])
    [imp] = r["imports"]
    assert (imp["approved_by"], imp["state"]) == (["steve"], "approved")
    people = r["people"]
    assert [(a["user"], a["current_text"], a["source"]) for a in people["dua_acceptances"]] == [
        ("alice", True, "10.0.0.7")
    ]
    assert ("carol", "added", "steve") in [(c["user"], c["action"], c["by"]) for c in people["membership_changes"]]
    assert {m["user"]: m["dua"] for m in people["members"]}["alice"] == "accepted"
    assert [e["action"] for e in r["accesses"]] == ["server.started", "dataset.mounted", "server.stopped"]
    assert r["destruction"] == []
    review = r["review"]
    assert review["month"] == "2026-12" and review["chain"]["ok"]
    alice = next(a for a in review["by_account"] if a["account"] == "alice")
    assert alice["sources"] == ["10.0.0.7"] and alice["actions"]["airlock.export.submitted"] == 1
    assert [q["id"] for q in review["requests"]] == [facts["export"], facts["import"]]
    # default month: the last full one before now (2026-11: nothing happened in it)
    rc, out, _ = gpuhub(path, clock, "project", "records", "cohort", "--format", "json")
    assert json.loads(out)["review"]["month"] == "2026-11" and json.loads(out)["review"]["events"] == 0


def test_records_csv_parses_and_names_reviewers_and_findings(processed, clock):
    path, facts = processed
    rc, out, err = gpuhub(path, clock, "project", "records", "cohort", "--format", "csv", "--month", "2026-12")
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["section", "at", "who", "action", "subject", "detail"]
    reviews = [(x["who"], x["action"]) for x in rows if x["section"] == "export-review"]
    assert reviews == [("steve", "approve"), ("sara", "approve")]
    assert any(x["section"] == "export-check" and "FAIL" in x["detail"] for x in rows if x["action"] == "cell-count")
    [export] = [x for x in rows if x["section"] == "export"]
    assert (json.loads(export["detail"])["why"], export["action"], export["who"]) == (WHY, "released", "alice")


def test_records_html_renders_in_chromium(processed, clock, tmp_path, browser):  # noqa: F811
    path, facts = processed
    page_file = tmp_path / "records.html"
    rc, out, err = gpuhub(
        path, clock, "project", "records", "cohort", "--month", "2026-12", "--lang", "ko", "-o", str(page_file)
    )
    assert rc == 0, err
    dialogs = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(page_file.as_uri())
    assert page.title() == "처리 기록: cohort"
    exports = page.locator("h2", has_text="반출").first.locator("xpath=following-sibling::table[1]")
    text = exports.inner_text()
    assert "steve" in text and "sara" in text and "cell-count" in text and "3 counts hospitals" in text
    assert WHY in text and dialogs == []  # the markup in "why" is text, not a script
    assert page.locator("h2", has_text="월간 접속기록 점검").count() == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "records.png", full_page=True)
    page.close()


def test_records_refuse_a_bad_month_and_an_unknown_project(processed, clock):
    path, _ = processed
    rc, _, err = gpuhub(path, clock, "project", "records", "cohort", "--month", "2026-13")
    assert rc == 2 and "YYYY-MM" in err
    rc, _, err = gpuhub(path, clock, "project", "records", "nope")
    assert rc == 2 and "projects.nope" in err


def test_records_retention_is_at_least_three_years():
    from gpuhub.core.siteconfig_reader import SiteConfigError
    from tests.projects.projectkit import make_site

    with pytest.raises(SiteConfigError, match=r"audit\.records_retention_days.*>= 1095"):
        make_site(audit={"records_retention_days": 365})
