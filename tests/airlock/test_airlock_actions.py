"""The airlock page's other actions through the real hub, its OAuth and a real Chromium (issue 14, second round), on a
site with ``airlock.export_release: download`` (an approved export waits for its requester's one-time download):

- the requester cancels on the page; a steward revokes an approval on the page (in Korean); both are the store calls
  of the REST API's POST .../cancel and .../revoke (the REST API then refuses the same step with the same rule), both
  show as history rows, and the file is reachable by no path afterwards;
- the requester downloads an approved export once (same sha256); the second GET is 410; the release is in the audit
  chain and the chain verifies;
- an import waits on the stewards' list (one approval needed) and lands in the project home once approved;
- the findings are said per rule in the page's language, the checker's English detail kept as the fact.
Screenshots: tests/artifacts/airlock/actions/.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import docker
import pytest
import requests

from gpuhub.hub.runtime import site as load_site
from quota import airlock as al
from quota.airlock_store import AirlockStore
from quota.db import make_engine
from tests.airlock.conftest import TEST_LABEL, read_file
from tests.airlock.hubkit import AirlockHub
from tests.airlock.test_airlock_e2e import ARTIFACTS, airlock_rows, signed_in
from tests.browser.kit import browser, fresh_shots  # noqa: F401 - one chromium for the module
from tests.procs import cleaned_up

pytestmark = pytest.mark.docker
NOTES = b"model AUC 0.81 on the held-out fold\n"
TABLE = b"region,patients\nseoul,120\nbusan,3\nulsan,45\n"
CONTACT = b"questions: kim.minji@example.org\n"
HELPER = b"def auc(y, p):\n    return 0.81\n"


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client):
    h = AirlockHub(tmp_path_factory.mktemp("airlock-actions"), airlock={"export_release": "download"})
    with cleaned_up(request, h):
        h.start()
        h.make_tokens()
        vols = h.volumes
        h.volume(vols.project_home("alice", "cohort"), {
            "notes.txt": NOTES, "results.txt": NOTES, "table.csv": TABLE, "contact.txt": CONTACT})  # fmt: skip
        h.volume(vols.home("alice"), {"code/helper.py": HELPER})
        yield h


@pytest.fixture(scope="module")
def shots():
    return fresh_shots(ARTIFACTS / "actions")


def rest(hub, user: str, method: str, path: str, body=None, kind: str = "exports") -> requests.Response:
    auth = {"Authorization": f"token {hub.tokens[user]}"}
    return requests.request(method, f"{hub.service}api/{kind}{path}", json=body, headers=auth, timeout=60)


def ask(hub, path: str, kind: str = "exports") -> dict:
    r = rest(hub, "alice", "POST", "", {"project": "cohort", "path": path, "why": "paper"}, kind)
    assert r.status_code == 201, r.text
    return r.json()


def approve_twice(hub, rid: int, reason: str = "") -> dict:
    for steward in ("steve", "sara"):
        r = rest(hub, steward, "POST", f"/{rid}/reviews", {"decision": "approve", "reason": reason})
        assert r.status_code == 201, r.text
    return r.json()


def test_the_requester_cancels_on_the_page(hub, browser, shots, docker_client):  # noqa: F811
    rid = ask(hub, "notes.txt")["id"]
    steve = signed_in(browser, hub, "steve")
    steve.goto(f"{hub.service}requests/{rid}")
    steve.wait_for_selector("form.gpuhub-review")
    assert steve.locator("form.gpuhub-cancel").count() == 0  # a steward does not cancel someone's request
    xsrf = steve.get_attribute("#gpuhub-language input[name=_xsrf]", "value")
    r = steve.request.post(f"{hub.service}requests/{rid}/cancel", form={"_xsrf": xsrf})
    assert r.status == 403 and "airlock-not-requester" in r.text()
    r = steve.request.post(f"{hub.service}requests/{rid}/cancel", form={})  # no xsrf: refused by tornado
    assert r.status == 403 and "airlock-not-requester" not in r.text()

    alice = signed_in(browser, hub, "alice")
    alice.goto(f"{hub.service}requests/{rid}")
    alice.wait_for_selector("form.gpuhub-cancel")
    alice.screenshot(path=shots / "01-requester-can-cancel.png", full_page=True)
    alice.click("form.gpuhub-cancel button")
    alice.wait_for_selector("#gpuhub-request[data-state='cancelled']")
    row = alice.locator(".gpuhub-history tr[data-state='cancelled']")
    assert row.count() == 1 and "alice" in row.inner_text()
    assert alice.locator("form.gpuhub-cancel").count() == 0
    alice.screenshot(path=shots / "02-cancelled-history.png", full_page=True)

    # reachable by no path: not previewed, not reviewable, not downloadable, not cancellable twice, not released
    assert steve.goto(f"{hub.service}requests/{rid}/file").status == 404
    steve.goto(f"{hub.service}requests/{rid}")
    assert steve.locator("form.gpuhub-review").count() == 0 and steve.locator(".gpuhub-no-preview").count() == 1
    r = rest(hub, "steve", "POST", f"/{rid}/reviews", {"decision": "approve", "reason": "late"})
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (409, "airlock-not-reviewable")
    r = rest(hub, "alice", "POST", f"/{rid}/cancel", {})
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (409, "airlock-not-cancellable")
    assert alice.goto(f"{hub.service}requests/{rid}/download").status == 410
    with pytest.raises(docker.errors.NotFound):
        read_file(docker_client, hub.volumes.home("alice"), "exports/cohort/notes.txt")


def test_a_steward_revokes_an_approval_before_the_download(hub, browser, shots, docker_client):  # noqa: F811
    rid = ask(hub, "results.txt")["id"]
    view = approve_twice(hub, rid)
    assert view["state"] == "approved" and view["released_to"] is None  # download mode: waits for alice
    alice = signed_in(browser, hub, "alice")
    alice.goto(f"{hub.service}requests/{rid}")
    alice.wait_for_selector(".gpuhub-download a")
    assert alice.locator("form.gpuhub-revoke").count() == 0  # the requester is no steward

    steve = signed_in(browser, hub, "steve", lang="ko-KR")
    steve.goto(f"{hub.service}requests/{rid}")
    steve.wait_for_selector("form.gpuhub-revoke")
    assert "승인 철회" in steve.inner_text("main") and steve.locator(".gpuhub-download").count() == 0
    steve.click("form.gpuhub-revoke button")  # no reason: refused, in Korean, naming the rule
    steve.wait_for_selector(".gpuhub-error")
    error = steve.inner_text(".gpuhub-error")
    assert "승인이 철회되지 않았습니다" in error and "이유를 적으세요" in error and "airlock-reason-required" in error
    steve.screenshot(path=shots / "03-revoke-needs-reason-ko.png", full_page=True)
    steve.fill("form.gpuhub-revoke textarea", "the fold id identifies the hospital")
    steve.click("form.gpuhub-revoke button")
    steve.wait_for_selector("#gpuhub-request[data-state='revoked']")
    row = steve.locator(".gpuhub-history tr[data-state='revoked']")
    assert "steve" in row.inner_text() and "identifies the hospital" in row.inner_text()
    steve.screenshot(path=shots / "04-revoked-history-ko.png", full_page=True)

    # reachable by no path: the download link, the preview, a release, the REST revoke again
    assert alice.goto(f"{hub.service}requests/{rid}/download").status == 410
    assert steve.goto(f"{hub.service}requests/{rid}/file").status == 404
    r = rest(hub, "sara", "POST", f"/{rid}/revoke", {"reason": "twice"})
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (409, "airlock-not-revocable")
    site = load_site(hub.site_path)
    engine = make_engine(site.hub.database_url)
    store = AirlockStore(engine, site, docker_client=docker_client, labels={TEST_LABEL: "1"})
    with pytest.raises(al.AirlockRefusal) as refused:
        store.release(rid, target_volume=hub.volumes.home("alice"), uid=hub.volumes.uid("alice"))
    assert refused.value.rule == "airlock-not-releasable"
    store.engine.dispose()
    with pytest.raises(docker.errors.NotFound):
        read_file(docker_client, hub.volumes.home("alice"), "exports/cohort/results.txt")


def test_the_requester_downloads_an_approved_export_once(hub, browser, shots):  # noqa: F811
    req = ask(hub, "table.csv")
    rid = req["id"]
    assert approve_twice(hub, rid, "hospital counts, not patients")["state"] == "approved"
    alice = signed_in(browser, hub, "alice")
    alice.goto(f"{hub.service}requests/{rid}")
    alice.wait_for_selector(".gpuhub-download a")
    alice.screenshot(path=shots / "05-download-once.png", full_page=True)
    with alice.expect_download() as got:
        alice.click(".gpuhub-download a")
    body = got.value.path().read_bytes()
    assert hashlib.sha256(body).hexdigest() == req["sha256"] and got.value.suggested_filename == "table.csv"
    again = alice.request.get(f"{hub.service}requests/{rid}/download")
    assert again.status == 410 and "airlock-not-releasable" in again.text()
    alice.goto(f"{hub.service}requests/{rid}")
    alice.wait_for_selector("#gpuhub-request[data-state='released']")
    assert alice.locator(".gpuhub-download").count() == 0
    assert "downloaded once" in alice.inner_text(".gpuhub-released-to")
    alice.screenshot(path=shots / "06-downloaded.png", full_page=True)
    sara = signed_in(browser, hub, "sara")  # a steward cannot take the link
    assert sara.goto(f"{hub.service}requests/{rid}/download").status == 403

    steps = [(row[0], row[4]) for row in airlock_rows(hub, "cohort") if row[3].startswith(f"export {rid}:")]
    assert steps[-2:] == [("sara", "airlock.export.approved"), ("alice", "airlock.export.released")], steps
    env = {**os.environ, "GPUHUB_SITE_CONFIG": str(hub.site_path)}
    out = subprocess.run([sys.executable, "-m", "gpuhub", "audit", "verify"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "audit log ok" in out.stdout, out.stdout + out.stderr


def test_stewards_approve_an_import_on_the_page(hub, browser, shots, docker_client):  # noqa: F811
    req = ask(hub, "code/helper.py", kind="imports")
    rid = req["id"]
    assert (req["state"], req["needed"], req["direction"]) == ("checks_done", 1, "import")
    steve = signed_in(browser, hub, "steve")
    steve.goto(hub.service)
    row = steve.locator(f".gpuhub-request[data-request='{rid}'][data-direction='import'][data-reviewable='1']")
    row.wait_for()
    assert "approvals: 0 of 1" in row.inner_text() and "import" in row.inner_text()
    steve.screenshot(path=shots / "07-import-pending.png", full_page=True)
    row.locator("a.gpuhub-open").click()
    steve.wait_for_selector(".gpuhub-preview[data-kind='text'] li")
    assert "return 0.81" in steve.inner_text(".gpuhub-preview")
    steve.click("button[name=decision][value=approve]")
    steve.wait_for_selector("#gpuhub-request[data-state='released']")
    steve.screenshot(path=shots / "08-import-released.png", full_page=True)
    body, uid = read_file(docker_client, hub.volumes.project_home("alice", "cohort"), "imports/helper.py")
    assert hashlib.sha256(body).hexdigest() == req["sha256"] and uid == hub.volumes.uid("alice")
    assert rest(hub, "alice", "GET", f"/{rid}", kind="imports").json()["state"] == "released"


def test_findings_are_said_per_rule_in_the_pages_language(hub, browser, shots):  # noqa: F811
    rid = ask(hub, "contact.txt")["id"]
    for lang, sentence in (("ko-KR", "파일에 이메일 주소가 있습니다."), ("en-US", "An e-mail address is in the file.")):
        page = signed_in(browser, hub, "steve", lang=lang)
        page.goto(f"{hub.service}requests/{rid}")
        finding = page.locator(".gpuhub-findings li[data-rule='email']")
        finding.wait_for()
        assert finding.locator(".gpuhub-finding-text").inner_text() == sentence
        detail = finding.locator(".gpuhub-finding-detail").inner_text()
        assert detail.startswith("line 1: e-mail address") and "kim.minji@example.org" not in detail  # masked fact
        flag = page.get_attribute(".gpuhub-preview li.gpuhub-flag[data-rule='email']", "title")
        assert flag.startswith(sentence) and "e-mail address kim" in flag  # the preview's marked line says the same
        page.screenshot(path=shots / f"09-findings-{lang}.png", full_page=True)
