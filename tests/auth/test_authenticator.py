"""GpuhubOIDCAuthenticator without a browser: start-up checks, claims -> name, groups, email rule."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tornado import web
from traitlets.config import Config

from gpuhub.core import naming
from gpuhub.hub.auth import AuthConfigError, GpuhubOIDCAuthenticator, apply_auth, verified_email_org
from tests.auth.sites import OIDC, make_site, site_dict
from tests.procs import free_port

SECRET_ENV = OIDC["client_secret_env"]


class Discovery:
    """A tiny HTTP server answering /.well-known/openid-configuration."""

    def __init__(self):
        self.status = 200
        self.doc: dict | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = json.dumps(outer.doc).encode()
                ok = self.path == "/.well-known/openid-configuration"
                self.send_response(outer.status if ok else 404)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.reset()
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def reset(self):
        self.status = 200
        self.doc = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/auth",
            "token_endpoint": self.issuer + "/token",
            "userinfo_endpoint": self.issuer + "/me",
            "code_challenge_methods_supported": ["S256"],
        }


@pytest.fixture(scope="module")
def discovery_server():
    d = Discovery()
    yield d
    d.server.shutdown()
    d.server.server_close()


@pytest.fixture
def discovery(discovery_server):
    discovery_server.reset()
    return discovery_server


def config_for(issuer: str) -> Config:
    c = Config()
    apply_auth(c, make_site(site_dict(auth={**OIDC, "issuer": issuer})))
    return c


def make_auth(issuer: str) -> GpuhubOIDCAuthenticator:
    return GpuhubOIDCAuthenticator(config=config_for(issuer))


def test_start_reads_the_secret_and_the_endpoints(discovery, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    a = make_auth(discovery.issuer)
    assert a.client_secret == "s3cret"
    assert (a.authorize_url, a.token_url, a.userdata_url) == (
        discovery.issuer + "/auth",
        discovery.issuer + "/token",
        discovery.issuer + "/me",
    )
    assert a.enable_pkce and a.manage_groups and a.enable_auth_state
    assert a.login_service == "SSO (127.0.0.1)"


@pytest.mark.parametrize("value", [None, ""])
def test_missing_secret_names_the_variable(discovery, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(SECRET_ENV, raising=False)
    else:
        monkeypatch.setenv(SECRET_ENV, value)
    with pytest.raises(AuthConfigError, match=f"environment variable {SECRET_ENV} is not set"):
        make_auth(discovery.issuer)


def test_unreachable_issuer_names_the_url(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    port = free_port()  # closed once it returns: nothing listens there
    url = f"http://127.0.0.1:{port}/.well-known/openid-configuration"
    with pytest.raises(AuthConfigError, match=f"cannot read the OpenID configuration at {url}"):
        make_auth(f"http://127.0.0.1:{port}")


def test_issuer_http_error_names_the_url(discovery, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    discovery.status = 404
    with pytest.raises(AuthConfigError, match="openid-configuration answered HTTP 404"):
        make_auth(discovery.issuer)


def test_issuer_mismatch_is_refused(discovery, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    discovery.doc["issuer"] = "https://evil.example"
    with pytest.raises(AuthConfigError, match="says its issuer is 'https://evil.example'"):
        make_auth(discovery.issuer)


def test_incomplete_discovery_is_refused(discovery, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    del discovery.doc["userinfo_endpoint"]
    with pytest.raises(AuthConfigError, match="lacks userinfo_endpoint"):
        make_auth(discovery.issuer)


@pytest.fixture
def auth(discovery, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    return make_auth(discovery.issuer)


# ---------------------------------------------------------------- email rule

TRUSTED = {"gist.ac.kr": "gist-ai"}
EMAILS = [
    ({"email": "kim@gist.ac.kr", "email_verified": True}, "gist-ai"),
    ({"email": "Kim.Min-Su@GIST.ac.kr", "email_verified": True}, "gist-ai"),  # domains are case-insensitive
    ({"email": "kim@gist.ac.kr.", "email_verified": True}, "gist-ai"),
    ({"email": "kim@gist.ac.kr", "email_verified": False}, None),
    ({"email": "kim@gist.ac.kr"}, None),  # no claim = unverified
    ({"email": "kim@gist.ac.kr", "email_verified": "true"}, None),  # only the JSON boolean
    ({"email": "kim@gist.ac.kr", "email_verified": 1}, None),
    ({"email": "kim@gist.ac.kr", "email_verified": [True]}, None),
    ({"email": "kim@student.gist.ac.kr", "email_verified": True}, None),  # no subdomains
    ({"email": "kim@gist.ac.kr.evil.com", "email_verified": True}, None),
    ({"email": "kim@evilgist.ac.kr", "email_verified": True}, None),
    ({"email": "gist.ac.kr", "email_verified": True}, None),
    ({"email": "@gist.ac.kr", "email_verified": True}, None),
    ({"email": "a@b@gist.ac.kr", "email_verified": True}, None),
    ({"email": "kim@gist.ac.kr\n", "email_verified": True}, None),
    ({"email": "kim @gist.ac.kr", "email_verified": True}, None),
    ({"email": ["kim@gist.ac.kr"], "email_verified": True}, None),
    ({"email_verified": True}, None),
]


@pytest.mark.parametrize("claims, org", EMAILS)
def test_verified_email_org(claims, org):
    assert verified_email_org(claims, TRUSTED) == org


# ---------------------------------------------------------------- groups and names

GROUPS = [
    ({"groups": ["gist-ai-lab", "x"]}, {"gist-ai-lab", "x"}),
    ({"groups": "gist-ai-lab"}, {"gist-ai-lab"}),
    ({}, set()),
    ({"groups": None}, set()),
    ({"groups": {"a": 1}}, set()),
    ({"groups": ["ok", 3, "", None]}, {"ok"}),
    ({"groups": ["gpuhub-org-gist-ai"]}, set()),  # reserved: only gpuhub grants it
    ({"groups": ["gpuhub-org-gist-ai"], "email": "k@gist.ac.kr", "email_verified": True}, {"gpuhub-org-gist-ai"}),
    ({"groups": ["cnuh-rad"], "email": "k@gist.ac.kr", "email_verified": True}, {"cnuh-rad", "gpuhub-org-gist-ai"}),
    ({"groups": ["cnuh-rad"], "email": "k@gist.ac.kr", "email_verified": False}, {"cnuh-rad"}),
]


@pytest.mark.parametrize("claims, groups", GROUPS)
async def test_groups_from_claims(auth, claims, groups):
    assert await auth.get_user_groups({"oauth_user": claims}) == groups


@pytest.mark.parametrize("claim", ["alice", "Alice", "김민수", "Kim.Min-Su@GIST.ac.kr", "user--foo"])
def test_username_from_claim(auth, claim):
    name = auth.user_info_to_username({"preferred_username": claim, "sub": "x"})
    assert name == naming.normalize_username(claim)
    # JupyterHub normalizes again after authenticate(): must be a fixed point
    assert auth.normalize_username(name) == name
    assert auth.validate_username(name)


@pytest.mark.parametrize("info", [{}, {"preferred_username": ""}, {"preferred_username": 7}])
def test_missing_username_claim_is_a_readable_403(auth, info):
    with pytest.raises(web.HTTPError) as e:
        auth.user_info_to_username(info)
    assert e.value.status_code == 403 and "preferred_username" in e.value.log_message


def test_auth_state_records_the_subject(auth):
    state = auth.build_auth_state_dict({"access_token": "t"}, {"sub": "abc", "preferred_username": "alice"})
    assert state["gpuhub_identity"] == {"iss": auth.issuer, "sub": "abc"}
    with pytest.raises(web.HTTPError):
        auth.build_auth_state_dict({"access_token": "t"}, {"preferred_username": "alice"})


async def test_admin_and_allowed_from_groups(auth):
    async def model(groups, name="someone"):
        m = {"name": name, "admin": None, "auth_state": {"oauth_user": {"groups": groups}}}
        m = await auth._apply_managed_groups(m)
        return m, await auth.check_allowed(name, m)

    m, ok = await model(["hub-admins"])
    assert m["admin"] is True and ok
    m, ok = await model(["gist-ai-lab"])
    assert m["admin"] is False and ok
    m, ok = await model(["unrelated"])
    assert not ok
    m, ok = await model([])
    assert not ok
    m, ok = await model([], name="alice")  # listed in organizations.gist-ai.members
    assert ok
