"""gpuhub's login layer: :func:`apply_auth` and the OIDC authenticator.

``apply_auth(c, site, demo_password=...)`` only sets config values; it reads no environment and
does no I/O, so it can be unit-tested against a plain ``traitlets.config.Config()``.

``hub.auth.type: shared-password`` (quickstart)
    JupyterHub's built-in ``SharedPasswordAuthenticator``: anyone with the demo password logs
    in under any safe username (``allow_all``); names are lowercased by JupyterHub and must be
    safe names (:data:`gpuhub.core.naming.SAFE_USERNAME_PATTERN`). ``hub.admin_users`` log in with
    the separate admin password (>= 32 characters) when the caller provides one.

``hub.auth.type: oidc``
    :class:`GpuhubOIDCAuthenticator` (``gpuhub.hub.auth.GpuhubOIDCAuthenticator``). At hub start
    it reads the client secret from the environment variable named by
    ``hub.auth.client_secret_env`` and fetches ``<issuer>/.well-known/openid-configuration``;
    either failing stops the hub with a message naming the variable or the URL.

    Who may log in: members of any org's ``idp_groups``, of ``admin_groups``, users listed in an
    org's ``members``, and users whose verified email is in ``trusted_email_domains``. Everyone
    else gets a 403 page that says why. The IdP groups (``groups_claim``) become JupyterHub
    groups of the same names at every login and every auth refresh (``manage_groups``), so
    leaving an IdP group leaves the org; refresh of a user who is no longer allowed forces a
    new login, which is then refused.

    Email rule: the JupyterHub group ``gpuhub-org-<org>`` is added only when the ``email``
    claim's domain is exactly a key of ``trusted_email_domains`` *and* ``email_verified`` is the
    JSON boolean ``true``. IdP groups that start with ``gpuhub-org-`` are dropped, so that group
    is granted by this rule only.

    Identity binding: a hub username belongs to one IdP subject (``iss`` + ``sub``, kept in the
    encrypted auth state). If the IdP later gives the same username claim to a different subject
    (a recycled account name), the login is refused until an administrator resolves it.
    auth_state needs ``JUPYTERHUB_CRYPT_KEY`` (``openssl rand -hex 32``) in the hub environment.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from urllib.parse import urlparse

from jupyterhub import orm, roles
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Dict, Float, Unicode, default

from gpuhub.core import naming
from gpuhub.core.site import ORG_GROUP_PREFIX, Site

OIDC_SCOPES = ("openid", "profile", "email")
SHARED_PASSWORD_MIN_LENGTH = 8  # SharedPasswordAuthenticator._USER_PASSWORD_MIN_LENGTH
ADMIN_PASSWORD_MIN_LENGTH = 32  # SharedPasswordAuthenticator._ADMIN_PASSWORD_MIN_LENGTH
AUTHENTICATOR_CLASS = "gpuhub.hub.auth.GpuhubOIDCAuthenticator"

REFUSED_MESSAGE = (
    "You signed in, but your account is not a member of any organization on this GPU hub. "
    "Ask your lab or department administrator to add you to your organization's group in "
    "the sign-in service, then sign in again."
)


class AuthConfigError(ValueError):
    """The login configuration cannot work; the message says what to fix."""


# ---------------------------------------------------------------- apply_auth


def apply_auth(c, site: Site, *, demo_password: str | None = None, admin_password: str | None = None) -> None:
    """Set the hub's authentication config from the site config.

    ``demo_password`` (required for ``shared-password``; the caller reads GPUHUB_DEMO_PASSWORD
    or generates one) is the users' shared password; ``admin_password`` (optional, at least 32
    characters) lets ``hub.admin_users`` log in as admins. Both are ignored for ``oidc``.
    """
    _check_usernames(site)
    kind = site.hub.auth.type
    if kind == "shared-password":
        _apply_shared_password(c, site, demo_password, admin_password)
    elif kind == "oidc":
        _apply_oidc(c, site)
    else:  # site.py only admits the two above
        raise AuthConfigError(f"hub.auth.type: unknown type {kind!r}; allowed: shared-password | oidc")


def _check_usernames(site: Site) -> None:
    where = [(f"hub.admin_users[{i}]", n) for i, n in enumerate(site.hub.admin_users)]
    for key, org in site.organizations.items():
        where += [(f"organizations.{key}.members[{i}]", n) for i, n in enumerate(org.members)]
    naming.check_listed_usernames(where, AuthConfigError)


def _apply_shared_password(c, site: Site, demo_password: str | None, admin_password: str | None) -> None:
    if not demo_password or len(demo_password) < SHARED_PASSWORD_MIN_LENGTH:
        raise AuthConfigError(
            f"hub.auth: shared-password needs a demo password of at least {SHARED_PASSWORD_MIN_LENGTH} "
            "characters (set GPUHUB_DEMO_PASSWORD, or leave it unset to have one generated)"
        )
    c.JupyterHub.authenticator_class = "shared-password"
    cfg = c.SharedPasswordAuthenticator
    cfg.user_password = demo_password
    if admin_password:
        if len(admin_password) < ADMIN_PASSWORD_MIN_LENGTH or admin_password == demo_password:
            raise AuthConfigError(
                f"hub.admin_users: the admin password must be at least {ADMIN_PASSWORD_MIN_LENGTH} "
                "characters and differ from the demo password"
            )
        cfg.admin_password = admin_password
    cfg.allow_all = True
    cfg.admin_users = set(site.hub.admin_users)
    cfg.username_pattern = naming.SAFE_USERNAME_PATTERN


def allowed_groups_of(site: Site) -> set[str]:
    """JupyterHub groups whose members may log in (OIDC)."""
    groups = set(site.hub.auth.admin_groups)
    for key, org in site.organizations.items():
        groups.update(org.idp_groups)
        groups.add(f"{ORG_GROUP_PREFIX}{key}")
    for project in site.projects.values():  # project members need not be in the org the project charges
        groups.update(project.members_idp_groups)
    return groups


def allowed_users_of(site: Site) -> set[str]:
    """Users who may log in by name (OIDC): organization members, project members and stewards."""
    users = {m for org in site.organizations.values() for m in org.members}
    for project in site.projects.values():
        users.update(project.members, project.stewards)
    return users


def _apply_oidc(c, site: Site) -> None:
    auth = site.hub.auth
    trusted = {}
    for domain, org in auth.trusted_email_domains.items():
        if not isinstance(org, str) or org not in site.organizations:
            raise AuthConfigError(
                f"hub.auth.trusted_email_domains.{domain}: {org!r} is not an organization key; "
                f"declared: {', '.join(site.organizations) or '(none)'}"
            )
        trusted[str(domain).strip().rstrip(".").lower()] = org
    c.JupyterHub.authenticator_class = AUTHENTICATOR_CLASS
    cfg = c.GpuhubOIDCAuthenticator
    cfg.issuer = auth.issuer
    cfg.client_id = auth.client_id
    cfg.client_secret_env_var = auth.client_secret_env
    cfg.oauth_callback_url = site.hub.bind_url.rstrip("/") + "/hub/oauth_callback"
    cfg.scope = list(OIDC_SCOPES)
    cfg.enable_pkce = True
    cfg.username_claim = auth.username_claim
    cfg.groups_claim = auth.groups_claim
    cfg.manage_groups = True
    cfg.admin_groups = set(auth.admin_groups)
    cfg.admin_users = set(site.hub.admin_users)
    cfg.allowed_groups = allowed_groups_of(site)
    cfg.allowed_users = allowed_users_of(site)
    cfg.allow_all = False
    cfg.allow_existing_users = False
    cfg.trusted_email_domains = trusted
    cfg.enable_auth_state = True
    cfg.username_pattern = naming.USERNAME_PATTERN


# ---------------------------------------------------------------- the authenticator


def verified_email_org(user_info: dict, trusted_email_domains: dict[str, str]) -> str | None:
    """The org granted by a verified email in a trusted domain, else None.

    Only the JSON boolean ``email_verified: true`` counts (not "true", not 1); the domain must
    equal a trusted domain exactly (case-insensitive; subdomains are not trusted).
    """
    if user_info.get("email_verified") is not True:
        return None
    email = user_info.get("email")
    if not isinstance(email, str):
        return None
    local, at, domain = email.rpartition("@")
    if not at or not local or "@" in local or not domain or any(ch.isspace() or ord(ch) < 32 for ch in email):
        return None
    return trusted_email_domains.get(domain.rstrip(".").lower())


class GpuhubOIDCAuthenticator(GenericOAuthenticator):
    """OpenID Connect login for gpuhub (see the module docstring for the rules)."""

    issuer = Unicode(
        config=True,
        help="""OIDC issuer URL. Endpoints come from <issuer>/.well-known/openid-configuration,
        fetched once when the hub starts; the hub does not start if that fails.""",
    )
    client_secret_env_var = Unicode(
        config=True,
        help="""Name of the environment variable holding the client secret (read at hub start).""",
    )
    groups_claim = Unicode(
        "groups",
        config=True,
        help="""Userinfo claim listing the user's IdP groups; they become JupyterHub groups.""",
    )
    trusted_email_domains = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""{email domain: org key}. A verified email in one of these domains adds the
        JupyterHub group gpuhub-org-<org>.""",
    )
    discovery_timeout = Float(10.0, config=True, help="Seconds to wait for the discovery document.")
    course_groups = Dict(
        config=True,
        help="""Course groups added at every login so that manage_groups keeps them:
        ``{"users": {username: [group, ...]}, "idp_groups": {IdP group: [group, ...]}}`` (the
        ``formgrade-<course>`` / ``nbgrader-<course>`` groups nbgrader reads). Set by
        ``gpuhub.hub.hubconfig.apply_courses`` from the site's courses.""",
    )

    @default("login_service")
    def _login_service_default(self):
        host = urlparse(self.issuer).hostname or "single sign-on"
        return f"SSO ({host})"

    @default("custom_403_message")
    def _custom_403_message_default(self):
        return REFUSED_MESSAGE

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # hub start: fail now, with a message that names what to fix
        self._load_client_secret()
        self._discover()

    # -- start-up

    def _load_client_secret(self) -> None:
        var = self.client_secret_env_var
        if not var:
            raise AuthConfigError(
                "hub.auth.client_secret_env: name the environment variable that holds the client secret"
            )
        secret = os.environ.get(var, "")
        if not secret:
            raise AuthConfigError(
                f"hub.auth.client_secret_env: environment variable {var} is not set (or empty); "
                f"set {var} to the OIDC client secret of client {self.client_id!r} before starting the hub"
            )
        self.client_secret = secret

    def _discover(self) -> None:
        if not self.issuer:
            raise AuthConfigError("hub.auth.issuer: the issuer URL is required for oidc")
        issuer = self.issuer.rstrip("/")
        url = issuer + "/.well-known/openid-configuration"
        context = None
        if url.startswith("https:"):
            context = ssl.create_default_context(cafile=self.http_request_kwargs.get("ca_certs"))
            if not self.validate_server_cert:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        try:
            request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "gpuhub"})
            with urllib.request.urlopen(request, timeout=self.discovery_timeout, context=context) as resp:
                doc = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise AuthConfigError(
                f"hub.auth.issuer: {url} answered HTTP {e.code}; check the issuer URL "
                f"(for Keycloak: https://HOST/realms/REALM)"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise AuthConfigError(
                f"hub.auth.issuer: cannot read the OpenID configuration at {url} ({reason}); "
                "check the issuer URL and that the hub can reach it"
            ) from None
        if not isinstance(doc, dict):
            raise AuthConfigError(f"hub.auth.issuer: {url} did not return a JSON object")
        if str(doc.get("issuer", "")).rstrip("/") != issuer:
            raise AuthConfigError(
                f"hub.auth.issuer: {url} says its issuer is {doc.get('issuer')!r}, not {self.issuer!r}; "
                "set hub.auth.issuer to exactly the provider's issuer"
            )
        missing = [k for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint") if not doc.get(k)]
        if missing:
            raise AuthConfigError(f"hub.auth.issuer: {url} lacks {', '.join(missing)}")
        methods = doc.get("code_challenge_methods_supported")
        if methods is not None and "S256" not in methods:
            self.log.warning("OIDC provider %s does not list PKCE S256 (lists %s)", issuer, methods)
        self.authorize_url = doc["authorization_endpoint"]
        self.token_url = doc["token_endpoint"]
        self.userdata_url = doc["userinfo_endpoint"]
        self.log.info(
            "OIDC provider %s: authorize %s, token %s, userinfo %s",
            issuer,
            self.authorize_url,
            self.token_url,
            self.userdata_url,
        )

    # -- usernames

    def normalize_username(self, username):
        # hub usernames (already normalized) stay as they are; anything else is normalized
        if naming.is_normalized_username(username):
            return username
        return naming.normalize_username(username)

    def user_info_to_username(self, user_info):
        claim = user_info.get(self.username_claim)
        if not isinstance(claim, str) or not claim:
            self.log.error("userinfo has no usable %r claim (keys: %s)", self.username_claim, sorted(user_info))
            raise web.HTTPError(
                403,
                f"The sign-in service did not send a {self.username_claim!r} for your account, so the hub "
                "cannot name your account. Please contact the hub administrator.",
            )
        return naming.normalize_username(claim)

    # -- auth state, groups

    def build_auth_state_dict(self, token_info, user_info):
        auth_state = super().build_auth_state_dict(token_info, user_info)
        sub = user_info.get("sub")
        if not isinstance(sub, str) or not sub:
            raise web.HTTPError(
                403,
                "The sign-in service did not identify your account (no 'sub'). Please contact the hub administrator.",
            )
        auth_state["gpuhub_identity"] = {"iss": self.issuer.rstrip("/"), "sub": sub}
        return auth_state

    def idp_groups(self, user_info: dict) -> set[str]:
        value = user_info.get(self.groups_claim)
        if value is None:
            return set()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.log.error("claim %r is not a list of group names: %r", self.groups_claim, value)
            return set()
        groups = set()
        for group in value:
            if not isinstance(group, str) or not group:
                self.log.warning("ignoring group %r in claim %r", group, self.groups_claim)
            elif group.startswith(ORG_GROUP_PREFIX):
                self.log.warning(
                    "ignoring IdP group %r: %s* groups are granted by gpuhub only", group, ORG_GROUP_PREFIX
                )
            else:
                groups.add(group)
        return groups

    async def get_user_groups(self, auth_state: dict):
        user_info = auth_state.get(self.user_auth_state_key) or {}
        groups = self.idp_groups(user_info)
        org = verified_email_org(user_info, self.trusted_email_domains)
        if org:
            groups.add(f"{ORG_GROUP_PREFIX}{org}")
        if self.course_groups:
            from gpuhub.hub.courses import derived_groups

            name = self.user_info_to_username(user_info)
            groups |= derived_groups(
                self.course_groups.get("users", {}), self.course_groups.get("idp_groups", {}), name, groups
            )
        return groups

    # -- token errors become readable pages (and fail closed)

    async def get_token_info(self, handler, params):
        try:
            return await super().get_token_info(handler, params)
        except HTTPClientError as e:
            self.log.error("OIDC token request to %s failed: %s", self.token_url, e)
            raise web.HTTPError(
                502,
                "The sign-in service refused this hub's login request. If this keeps happening, "
                "tell the hub administrator (the hub's client credentials may be wrong).",
            ) from None

    # -- identity binding

    async def run_post_auth_hook(self, handler, auth_model):
        auth_model = await super().run_post_auth_hook(handler, auth_model)
        ident = (auth_model.get("auth_state") or {}).get("gpuhub_identity")
        user = handler.find_user(auth_model["name"]) if handler is not None and ident else None
        if user is not None:
            old = (await user.get_auth_state() or {}).get("gpuhub_identity")
            if old and (old.get("iss"), old.get("sub")) != (ident["iss"], ident["sub"]):
                self.log.warning(
                    "refusing login as %s: the hub account belongs to subject %s at %s, this login is %s at %s",
                    auth_model["name"],
                    old.get("sub"),
                    old.get("iss"),
                    ident["sub"],
                    ident["iss"],
                )
                raise web.HTTPError(
                    403,
                    f"The hub account {auth_model['name']!r} belongs to a different person at the sign-in "
                    "service. Ask the hub administrator to resolve the account before signing in.",
                )
        return auth_model

    # -- refusal: a user who is no longer allowed loses the IdP-derived groups and admin now

    async def check_allowed(self, username, auth_model):
        allowed = await super().check_allowed(username, auth_model)
        if not allowed and auth_model is not None:
            self._revoke(username, auth_model)
        return allowed

    def _revoke(self, username: str, auth_model: dict) -> None:
        """Bring a refused, existing user's groups and admin flag in line with the IdP, so the
        hub database (read by the spawner, quota and exporters) no longer shows the old org."""
        app = self.parent
        db, users = getattr(app, "db", None), getattr(app, "users", None)
        if db is None or users is None:
            return
        orm_user = orm.User.find(db, username)
        if orm_user is None:
            return
        user = users[orm_user]
        user.sync_groups(auth_model.get("groups") or [])
        if user.admin:
            user.admin = False
            roles.assign_default_roles(db, entity=user)
            db.commit()
        self.log.info(
            "%s refused: groups now %s, admin %s", username, sorted(auth_model.get("groups") or []), user.admin
        )

    # -- refresh: a user who is no longer allowed must log in again (and is refused then)

    async def refresh_user(self, user, handler=None, **kwargs):
        model = await super().refresh_user(user, handler, **kwargs)
        if isinstance(model, dict):
            if model.get("name") != user.name:
                self.log.info("username claim of %s changed to %s; login required", user.name, model.get("name"))
                return False
            if not await self.check_allowed(user.name, model):
                self.log.info("%s is no longer allowed (groups %s); login required", user.name, model.get("groups"))
                return False
        return model
