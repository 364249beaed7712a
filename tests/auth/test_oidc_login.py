"""Login through a real OIDC provider (node oidc-provider) into a real JupyterHub subprocess.

Each test uses its own IdP accounts, so they share one hub (`auth_hub`).
"""

from __future__ import annotations

import time
from pathlib import Path

import requests

from gpuhub.core import naming
from gpuhub.core.site import parse_site
from tests.auth.hubproc import idp_login, tamper_state
from tests.auth.sites import site_dict

SITE = parse_site(site_dict(), Path("site.yaml"))  # the organizations of the hub under test


def orgs(hub, name):
    model = hub.user(name)
    return SITE.orgs_of(name, frozenset(model["groups"]))


def login(hub, oidc, login_name, **kw):
    s = requests.Session()
    r = idp_login(s, hub.url, login_name, oidc.accounts[login_name]["password"], **kw)
    return s, r


def assert_logged_in(r, hub):
    assert r.status_code == 302, (r.status_code, r.text[:2000])
    assert r.headers["Location"].startswith("/hub/")


def test_login_syncs_groups_and_maps_the_org(auth_hub, oidc):
    oidc.set_account(
        "minsu",
        preferred_username="김민수",
        groups=["gist-ai-lab", "reading-club"],
        email="minsu@example.com",
        email_verified=True,
    )
    s, r = login(auth_hub, oidc, "minsu")
    assert_logged_in(r, auth_hub)
    name = naming.normalize_username("김민수")
    assert name.startswith("gimminsu--")
    model = auth_hub.user(name)
    assert sorted(model["groups"]) == ["gist-ai-lab", "reading-club"]
    assert model["admin"] is False
    assert orgs(auth_hub, name) == ["gist-ai"]
    # the session works on hub pages
    home = s.get(f"{auth_hub.url}/hub/home", timeout=10)
    assert home.status_code == 200 and name in home.text


def test_admin_group_grants_and_revokes_admin(auth_hub, oidc):
    oidc.set_account("ops1", groups=["hub-admins"])
    _, r = login(auth_hub, oidc, "ops1")
    assert_logged_in(r, auth_hub)
    assert auth_hub.user("ops1")["admin"] is True
    assert orgs(auth_hub, "ops1") == []  # admin, but in no org: no GPUs
    oidc.update_claims("ops1", groups=["cnuh-rad"])
    _, r = login(auth_hub, oidc, "ops1")
    assert_logged_in(r, auth_hub)
    model = auth_hub.user("ops1")
    assert model["admin"] is False and model["groups"] == ["cnuh-rad"]
    assert orgs(auth_hub, "ops1") == ["cnuh-radiology"]


def test_group_removal_takes_effect_at_next_login(auth_hub, oidc):
    oidc.set_account("jiwoo", groups=["gist-ai-lab"])
    _, r = login(auth_hub, oidc, "jiwoo")
    assert_logged_in(r, auth_hub)
    assert orgs(auth_hub, "jiwoo") == ["gist-ai"]
    oidc.update_claims("jiwoo", groups=["cnuh-rad-staff"])
    _, r = login(auth_hub, oidc, "jiwoo")
    assert_logged_in(r, auth_hub)
    assert orgs(auth_hub, "jiwoo") == ["cnuh-radiology"]
    # out of every allowed group: refused, and the old groups are gone from the hub too
    oidc.update_claims("jiwoo", groups=[])
    _, r = login(auth_hub, oidc, "jiwoo")
    assert r.status_code == 403
    assert auth_hub.user("jiwoo")["groups"] == []
    assert orgs(auth_hub, "jiwoo") == []


def test_refresh_user_follows_the_idp_within_a_session(auth_hub, oidc):
    oidc.set_account("rhea", groups=["gist-ai-lab"])
    s, r = login(auth_hub, oidc, "rhea")
    assert_logged_in(r, auth_hub)
    oidc.update_claims("rhea", groups=["cnuh-rad"])
    time.sleep(2.5)  # auth_refresh_age of the test hub is 2 s
    assert s.get(f"{auth_hub.url}/hub/home", timeout=10).status_code == 200
    assert auth_hub.user("rhea")["groups"] == ["cnuh-rad"]
    assert orgs(auth_hub, "rhea") == ["cnuh-radiology"]
    oidc.update_claims("rhea", groups=["unrelated"])
    time.sleep(2.5)
    r = s.get(f"{auth_hub.url}/hub/home", allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/login" in r.headers["Location"]  # must log in again
    assert auth_hub.user("rhea")["groups"] == ["unrelated"]
    assert orgs(auth_hub, "rhea") == []


def test_account_in_no_allowed_group_gets_a_readable_403(auth_hub, oidc):
    oidc.set_account("outsider", groups=["some-other-team"], email="o@gist.ac.kr", email_verified=False)
    _, r = login(auth_hub, oidc, "outsider")
    assert r.status_code == 403
    assert "not a member of any organization on this GPU hub" in r.text
    assert "<html" in r.text.lower()
    assert auth_hub.user("outsider") is None  # never created


def test_unverified_email_in_a_trusted_domain_gives_no_org(auth_hub, oidc):
    oidc.set_account("unverified", groups=["cnuh-rad"], email="unverified@gist.ac.kr", email_verified=False)
    _, r = login(auth_hub, oidc, "unverified")
    assert_logged_in(r, auth_hub)
    assert auth_hub.user("unverified")["groups"] == ["cnuh-rad"]
    assert orgs(auth_hub, "unverified") == ["cnuh-radiology"]
    # "true" as a string is not a verification either
    oidc.set_account("stringy", groups=[], email="stringy@GIST.ac.kr", email_verified="true")
    _, r = login(auth_hub, oidc, "stringy")
    assert r.status_code == 403


def test_verified_email_in_a_trusted_domain_grants_the_org(auth_hub, oidc):
    oidc.set_account(
        "verified",
        preferred_username="Kim.Min-Su@GIST.ac.kr",
        groups=[],
        email="Kim.Min-Su@GIST.ac.kr",
        email_verified=True,
    )
    _, r = login(auth_hub, oidc, "verified")
    assert_logged_in(r, auth_hub)
    name = naming.normalize_username("Kim.Min-Su@GIST.ac.kr")
    assert auth_hub.user(name)["groups"] == ["gpuhub-org-gist-ai"]
    assert orgs(auth_hub, name) == ["gist-ai"]
    # the IdP cannot hand out gpuhub's own org groups
    oidc.set_account("forger", groups=["gpuhub-org-gist-ai"], email="f@other.kr", email_verified=True)
    _, r = login(auth_hub, oidc, "forger")
    assert r.status_code == 403


def test_case_variants_are_different_hub_users(auth_hub, oidc):
    oidc.set_account("lower", preferred_username="sora", groups=["gist-ai-lab"])
    oidc.set_account("upper", preferred_username="Sora", groups=["cnuh-rad"])
    for login_name in ("lower", "upper"):
        _, r = login(auth_hub, oidc, login_name)
        assert_logged_in(r, auth_hub)
    assert orgs(auth_hub, "sora") == ["gist-ai"]
    assert orgs(auth_hub, naming.normalize_username("Sora")) == ["cnuh-radiology"]


def test_recycled_username_for_another_subject_is_refused(auth_hub, oidc):
    oidc.set_account("dave", sub="subject-dave-1", groups=["gist-ai-lab"])
    _, r = login(auth_hub, oidc, "dave")
    assert_logged_in(r, auth_hub)
    # the IdP gives the name "dave" to a different person
    oidc.set_account("dave", sub="subject-dave-2", groups=["gist-ai-lab"])
    _, r = login(auth_hub, oidc, "dave")
    assert r.status_code == 403
    assert "belongs to a different person" in r.text
    # the original subject still gets in
    oidc.set_account("dave", sub="subject-dave-1", groups=["gist-ai-lab"])
    _, r = login(auth_hub, oidc, "dave")
    assert_logged_in(r, auth_hub)


def test_tampered_state_fails_closed(auth_hub, oidc):
    oidc.set_account("mallory", groups=["gist-ai-lab"])
    s, r = login(auth_hub, oidc, "mallory", on_callback=tamper_state)
    assert r.status_code == 400 and "OAuth state mismatch" in r.text
    assert auth_hub.user("mallory") is None
    assert s.get(f"{auth_hub.url}/hub/home", allow_redirects=False, timeout=10).status_code == 302


def test_callback_replayed_in_another_browser_fails_closed(auth_hub, oidc):
    oidc.set_account("replay", groups=["gist-ai-lab"])
    captured = []

    def steal(url):
        captured.append(url)
        return url + "&x=1"  # the victim's own request is spoiled below

    s = requests.Session()
    idp_login(s, auth_hub.url, "replay", oidc.accounts["replay"]["password"], on_callback=steal)
    r = requests.get(captured[0], allow_redirects=False, timeout=10)  # no state cookie
    assert r.status_code == 400 and "OAuth state missing from cookies" in r.text


def test_wrong_client_secret_fails_closed(alt_hub, oidc):
    hub = alt_hub(secret="not-the-client-secret")
    oidc.set_account("wrongsecret", groups=["gist-ai-lab"])
    _, r = login(hub, oidc, "wrongsecret")
    assert r.status_code == 502
    assert "refused this hub" in r.text
    assert hub.user("wrongsecret") is None


def test_missing_client_secret_stops_the_hub(alt_hub):
    hub = alt_hub(secret=None, start=False)
    assert hub.run_until_exit() != 0
    assert "environment variable GPUHUB_TEST_OIDC_SECRET is not set" in hub.logs()


def test_unreachable_issuer_stops_the_hub(alt_hub):
    from tests.auth.hubproc import free_port

    issuer = f"http://127.0.0.1:{free_port()}"
    hub = alt_hub(start=False, issuer=issuer)
    assert hub.run_until_exit() != 0
    assert f"cannot read the OpenID configuration at {issuer}/.well-known/openid-configuration" in hub.logs()
