"""apply_auth only sets config: checked against a plain traitlets Config."""

from __future__ import annotations

import re

import pytest
from traitlets.config import Config

from gpuhub.core import naming
from gpuhub.hub.auth import AuthConfigError, allowed_groups_of, apply_auth
from tests.auth.sites import OIDC, make_site, site_dict


def test_shared_password_uses_the_builtin_authenticator():
    c = Config()
    apply_auth(c, make_site(site_dict()), demo_password="demo-pass-123")
    assert c.JupyterHub.authenticator_class == "shared-password"
    cfg = c.SharedPasswordAuthenticator
    assert cfg.user_password == "demo-pass-123"
    assert cfg.allow_all is True
    assert cfg.admin_users == {"operator"}
    assert cfg.username_pattern == naming.SAFE_USERNAME_PATTERN
    assert "admin_password" not in cfg
    assert "GpuhubOIDCAuthenticator" not in c


def test_shared_password_admin_password_is_optional_and_checked():
    c = Config()
    apply_auth(c, make_site(site_dict()), demo_password="demo-pass-123", admin_password="A" * 32)
    assert c.SharedPasswordAuthenticator.admin_password == "A" * 32
    for bad in ("short-admin-pw", "demo-pass-123"):
        with pytest.raises(AuthConfigError, match="at least 32"):
            apply_auth(Config(), make_site(site_dict()), demo_password="demo-pass-123", admin_password=bad)


@pytest.mark.parametrize("password", [None, "", "1234567"])
def test_shared_password_needs_eight_characters(password):
    with pytest.raises(AuthConfigError, match="at least 8 characters.*GPUHUB_DEMO_PASSWORD"):
        apply_auth(Config(), make_site(site_dict()), demo_password=password)


def test_shared_password_matches_the_builtin_minimum():
    from jupyterhub.authenticators.shared import SharedPasswordAuthenticator

    from gpuhub.hub.auth import ADMIN_PASSWORD_MIN_LENGTH, SHARED_PASSWORD_MIN_LENGTH

    assert SharedPasswordAuthenticator._USER_PASSWORD_MIN_LENGTH == SHARED_PASSWORD_MIN_LENGTH
    assert SharedPasswordAuthenticator._ADMIN_PASSWORD_MIN_LENGTH == ADMIN_PASSWORD_MIN_LENGTH


def test_shared_password_config_loads_into_the_builtin_class():
    from jupyterhub.authenticators.shared import SharedPasswordAuthenticator

    c = Config()
    apply_auth(c, make_site(site_dict()), demo_password="demo-pass-123")
    a = SharedPasswordAuthenticator(config=c)
    assert a.user_password == "demo-pass-123" and a.allow_all
    assert a.validate_username("kim.minsu") and not a.validate_username("kim@x") and not a.validate_username("a--b")
    assert a.normalize_username("Alice") == "alice"  # JupyterHub lowercases typed names


def test_oidc_sets_the_gpuhub_authenticator():
    c = Config()
    apply_auth(c, make_site(site_dict(auth=OIDC, bind_url="https://gpu.example.kr/")))
    assert c.JupyterHub.authenticator_class == "gpuhub.hub.auth.GpuhubOIDCAuthenticator"
    cfg = c.GpuhubOIDCAuthenticator
    assert cfg.issuer == "http://127.0.0.1:9999"
    assert cfg.client_id == "gpuhub"
    assert cfg.client_secret_env_var == "GPUHUB_TEST_OIDC_SECRET"
    assert "client_secret" not in cfg  # never in config; read from the environment at start
    assert cfg.oauth_callback_url == "https://gpu.example.kr/hub/oauth_callback"
    assert cfg.scope == ["openid", "profile", "email"]
    assert cfg.enable_pkce is True
    assert cfg.username_claim == "preferred_username"
    assert cfg.groups_claim == "groups"
    assert cfg.manage_groups is True
    assert cfg.enable_auth_state is True
    assert cfg.admin_groups == {"hub-admins"}
    assert cfg.admin_users == {"operator"}
    assert cfg.allowed_groups == {
        "gist-ai-lab",
        "cnuh-rad",
        "cnuh-rad-staff",
        "hub-admins",
        "gpuhub-org-gist-ai",
        "gpuhub-org-cnuh-radiology",
    }
    assert cfg.allowed_users == {"alice"}
    assert cfg.allow_all is False and cfg.allow_existing_users is False
    assert cfg.trusted_email_domains == {"gist.ac.kr": "gist-ai"}
    assert cfg.username_pattern == naming.USERNAME_PATTERN


def test_oidc_reads_no_environment(monkeypatch):
    monkeypatch.delenv("GPUHUB_TEST_OIDC_SECRET", raising=False)
    apply_auth(Config(), make_site(site_dict(auth=OIDC)))  # no error: the secret is read at hub start


def test_allowed_groups_cover_every_way_into_an_org():
    site = make_site(site_dict(auth=OIDC))
    groups = allowed_groups_of(site)
    for key, org in site.organizations.items():
        assert set(org.idp_groups) <= groups
        assert f"gpuhub-org-{key}" in groups


def test_trusted_domain_must_name_an_org():
    auth = {**OIDC, "trusted_email_domains": {"gist.ac.kr": "no-such-org"}}
    with pytest.raises(AuthConfigError, match=r"hub\.auth\.trusted_email_domains\.gist\.ac\.kr: 'no-such-org'"):
        apply_auth(Config(), make_site(site_dict(auth=auth)))


@pytest.mark.parametrize("admins", [["Operator"], ["kim@gist.ac.kr"], ["a--b"]])
def test_usernames_in_the_site_must_be_hub_usernames(admins):
    with pytest.raises(AuthConfigError, match=re.escape("hub.admin_users[0]")):
        apply_auth(Config(), make_site(site_dict(admin_users=admins)), demo_password="demo-pass-123")


def test_escaped_usernames_may_be_listed():
    name = naming.normalize_username("김민수")
    apply_auth(Config(), make_site(site_dict(auth=OIDC, admin_users=[name])))


def test_project_members_and_stewards_may_log_in_without_being_in_the_org():
    """A hospital's IRB-approved researcher may be in a project only, not in the org it charges."""
    data = site_dict(auth=OIDC)
    org = next(iter(data["organizations"]))
    data["projects"] = {
        "cohort": {
            "org": org,
            "stewards": ["steve"],
            "members": ["yuna"],
            "members_idp_groups": ["irb-2026-042"],
            "purpose": "survival analysis",
            "legal_basis": "pipa-28-2-research",
            "starts": "2026-12-01",
            "expires": "2026-12-31",
            "dua": "Use the data for the stated purpose only.",
        }
    }
    c = Config()
    apply_auth(c, make_site(data))
    assert "irb-2026-042" in c.GpuhubOIDCAuthenticator.allowed_groups
    assert {"yuna", "steve"} <= c.GpuhubOIDCAuthenticator.allowed_users
