"""The airlock pages' boundaries through the real hub, its OAuth and a real Chromium (issue 14 tests): the requester
cannot approve their own request (403, and no form on the page), a member who is not a steward sees no review
controls and not the review page of someone else's request, a steward of another project sees nothing of this one,
and a rejected file is reachable by no path. Screenshots: tests/artifacts/airlock/pages/."""

from __future__ import annotations

import docker
import pytest
import requests

from tests.airlock.conftest import read_file
from tests.airlock.hubkit import airlock_hub  # noqa: F401 - the module's hub
from tests.airlock.test_airlock_e2e import ARTIFACTS, signed_in
from tests.browser.kit import browser, fresh_shots  # noqa: F401 - one chromium for the module

pytestmark = pytest.mark.docker
NOTES = b"model AUC 0.81 on the held-out fold\n"


def export(hub, user: str, path: str, why: str = "results") -> dict:
    r = requests.post(
        f"{hub.service}api/exports",
        json={"project": "cohort", "path": path, "why": why},
        headers={"Authorization": f"token {hub.tokens[user]}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return r.json()


def rest(hub, user: str, method: str, path: str, body=None) -> requests.Response:
    auth = {"Authorization": f"token {hub.tokens[user]}"}
    return requests.request(method, f"{hub.service}api/exports{path}", json=body, headers=auth, timeout=60)


@pytest.fixture(scope="module")
def shots():
    return fresh_shots(ARTIFACTS / "pages")


@pytest.fixture(scope="module")
def requests_made(airlock_hub):  # noqa: F811
    hub = airlock_hub
    vols = hub.volumes
    for user in ("alice", "sam"):
        hub.volume(vols.project_home(user, "cohort"), {"notes.txt": NOTES})
        hub.volume(vols.home(user))
    return {"alice": export(hub, "alice", "notes.txt"), "sam": export(hub, "sam", "notes.txt")}


def test_the_requester_cannot_approve_their_own_request(airlock_hub, requests_made, browser, shots):  # noqa: F811
    hub, own = airlock_hub, requests_made["sam"]  # sam is a member and a steward of cohort
    r = rest(hub, "sam", "POST", f"/{own['id']}/reviews", {"decision": "approve", "reason": "fine"})
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (403, "airlock-own-request")
    page = signed_in(browser, hub, "sam")
    page.goto(f"{hub.service}requests/{own['id']}")
    page.wait_for_selector("#gpuhub-request")
    assert page.locator("form.gpuhub-review").count() == 0 and page.locator(".gpuhub-no-preview").count() == 1
    page.goto(hub.service)  # sam still reviews alice's request: a steward, not its requester
    page.wait_for_selector(f".gpuhub-request[data-request='{requests_made['alice']['id']}'][data-reviewable='1']")
    assert page.get_attribute(f".gpuhub-request[data-request='{own['id']}']", "data-reviewable") == "0"
    page.screenshot(path=shots / "01-steward-own-request-no-form.png", full_page=True)
    # the form posted anyway (a crafted request) is refused and says why
    xsrf = page.get_attribute("#gpuhub-language input[name=_xsrf]", "value")
    r = page.request.post(f"{hub.service}requests/{own['id']}/review", form={"_xsrf": xsrf, "decision": "approve",
                          "reason": "mine"})  # fmt: skip
    assert r.status == 403 and "airlock-own-request" in r.text()


def test_a_member_who_is_not_a_steward_gets_no_review_page(airlock_hub, requests_made, browser, shots):  # noqa: F811
    hub, other = airlock_hub, requests_made["alice"]
    page = signed_in(browser, hub, "mona")
    page.goto(hub.service)
    page.wait_for_selector(".gpuhub-own")
    assert page.locator(".gpuhub-airlock-project, form.gpuhub-review, .gpuhub-request").count() == 0
    assert "notes.txt" not in page.inner_text("main")
    page.screenshot(path=shots / "02-member-no-review.png", full_page=True)
    for path in (f"requests/{other['id']}", f"requests/{other['id']}/file"):
        assert page.goto(f"{hub.service}{path}").status == 404
    assert rest(hub, "mona", "GET", f"/{other['id']}").status_code == 404
    assert rest(hub, "mona", "GET", "").json()["requests"] == []


def test_a_steward_of_another_project_sees_nothing_of_this_one(airlock_hub, requests_made, browser, shots):  # noqa: F811
    hub, req = airlock_hub, requests_made["alice"]
    page = signed_in(browser, hub, "olga")
    page.goto(hub.service)
    page.wait_for_selector(".gpuhub-airlock-project[data-project='other']")
    text = page.inner_text("main")
    assert "cohort" not in text and "Cancer cohort" not in text and "notes.txt" not in text
    page.screenshot(path=shots / "03-other-steward.png", full_page=True)
    for path in (f"requests/{req['id']}", f"requests/{req['id']}/file"):
        assert page.goto(f"{hub.service}{path}").status == 404
    assert rest(hub, "olga", "GET", f"/{req['id']}").status_code == 404
    assert rest(hub, "olga", "GET", "?project=cohort").json()["requests"] == []
    r = rest(hub, "olga", "POST", f"/{req['id']}/reviews", {"decision": "reject", "reason": "no"})
    assert r.status_code == 404


def test_a_rejected_file_is_reachable_by_no_path(airlock_hub, requests_made, browser, docker_client, shots):  # noqa: F811
    hub, req = airlock_hub, requests_made["alice"]
    page = signed_in(browser, hub, "steve")
    page.goto(f"{hub.service}requests/{req['id']}")
    page.wait_for_selector(".gpuhub-preview[data-kind='text'] li")
    assert page.goto(f"{hub.service}requests/{req['id']}/file").status == 200  # while it awaits review
    page.goto(f"{hub.service}requests/{req['id']}")
    page.fill("textarea[name=reason]", "the fold is identifying")
    page.click("button[name=decision][value=reject]")
    page.wait_for_selector("#gpuhub-request[data-state='rejected']")
    assert page.locator(".gpuhub-no-preview").count() == 1
    page.screenshot(path=shots / "04-rejected.png", full_page=True)
    assert page.goto(f"{hub.service}requests/{req['id']}/file").status == 404  # the steward: no longer
    r = rest(hub, "sara", "POST", f"/{req['id']}/reviews", {"decision": "approve", "reason": "late"})
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (409, "airlock-not-reviewable")
    view = rest(hub, "alice", "GET", f"/{req['id']}").json()
    assert view["state"] == "rejected" and view["released_to"] is None
    with pytest.raises(docker.errors.NotFound):
        read_file(docker_client, hub.volumes.home("alice"), "exports/cohort/notes.txt")
    mine = signed_in(browser, hub, "alice")
    assert mine.goto(f"{hub.service}requests/{req['id']}/file").status == 404
