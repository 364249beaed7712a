"""gpuhub-airlock: the airlock's REST API (issue 14 item 1), a JupyterHub service (contract: the OpenAPI file beside),
registered by :func:`gpuhub.hub.hubconfig.apply_services` on a site with projects.

    POST {prefix}api/exports              {"project", "path", "why", "sha256"?}  -> 201 the request
    GET  {prefix}api/exports?project=&state=                                    -> {"requests": [...]}
    GET  {prefix}api/exports/{id}                                               -> the request
    POST {prefix}api/exports/{id}/reviews {"decision": "approve"|"reject", "reason"}
    POST {prefix}api/exports/{id}/cancel
    POST {prefix}api/exports/{id}/revoke  {"reason"}
    ... and the same under api/imports.

Any hub token whose owner may access the service (``access:services!service=gpuhub-airlock``) works, a server's
own token included; what it may do is decided by the owner's role in the project (:mod:`quota.airlock`): the
requester, a steward of the project, or nobody (404). The path is relative to the requester's project home (an
export) or ordinary home (an import); the service copies the file from that volume itself, so an ``sha256`` the
client sends is only compared (a mismatch is a finding), never trusted. When a review completes the approvals, the
service releases the file at once (export: ``~/exports/PROJECT/NAME`` in the ordinary home; import:
``~/imports/NAME`` in the project home), unless ``airlock.export_release`` is ``download``: then an approved export
stays ``approved`` until its requester downloads it once from the page. The stewards' page is
:mod:`gpuhub.hub.airlock_pages` (same app, same store calls, signed in with the hub's OAuth). Refusals are JSON
``{"status", "rule", "message"}`` with the rule id also in the ``X-Gpuhub-Rule`` header.
Store calls (Docker, database) run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth
from tornado import web

from gpuhub.hub.service_auth import token_owner
from quota import airlock as al
from quota.airlock_store import AirlockStore

log = logging.getLogger("gpuhub.airlock")
SERVICE = "gpuhub-airlock"
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Volumes:
    """Where a user's files are: ``home(user)`` the ordinary home volume, ``project_home(user, key)`` the project
    home volume, ``uid(user)`` the UID files are released as."""

    home: Callable[[str], str]
    project_home: Callable[[str, str], str]
    uid: Callable[[str], int]


def hub_volumes(site, quota_store) -> Volumes:
    """The volume names the spawner uses (DockerSpawner's home template, gpuhub.hub.projects.home_volume)."""
    from dockerspawner.dockerspawner import DockerSpawner  # its username escaping, only for the real service

    from gpuhub.hub.projects import home_volume

    instance = site.hub.instance
    escape = DockerSpawner._escape  # a staticmethod: {prefix}-home-{username} is escaped with it
    return Volumes(
        home=lambda user: f"{instance}-home-{escape(user)}",
        project_home=lambda user, key: home_volume(instance, key, quota_store.uid_for(user)),
        uid=quota_store.uid_for,
    )


class _Base(web.RequestHandler):
    def initialize(self, store: AirlockStore, auth, volumes: Volumes):
        self.store, self.auth, self.volumes = store, auth, volumes

    def check_xsrf_cookie(self) -> None:  # token-authenticated JSON API: no cookies are accepted
        return

    async def prepare(self):
        model = await token_owner(self.auth, self.request)
        if (
            not model
            or model.get("kind", "user") != "user"
            or not self.auth.check_scopes(self.auth.access_scopes, model)
        ):
            self._refuse(
                403,
                "airlock-token",
                f"a user's hub token with access:services!service={SERVICE} is "
                "required in 'Authorization: token ...'; use your server's JUPYTERHUB_API_TOKEN",
            )
            return
        self.user, self.groups = model["name"], frozenset(model.get("groups") or ())

    def _refuse(self, status: int, rule: str, message: str) -> None:
        self.set_status(status)
        self.set_header("X-Gpuhub-Rule", rule)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status, "rule": rule, "message": message}))

    def _json_body(self) -> dict:
        if len(self.request.body) > MAX_BODY:
            self._refuse(413, "airlock-json", f"the body is over {MAX_BODY} bytes; send only the JSON fields")
            return None
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._refuse(
                400,
                "airlock-json",
                "the body must be a JSON object, e.g. "
                '{"project": "cohort", "path": "results/table.csv", "why": "table 2"}',
            )
            return None
        return body

    def _send(self, view, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(_public(view)))

    async def _call(self, fn, *args, **kw):
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except al.AirlockRefusal as e:
            self._refuse(e.status, e.rule, e.message)
            return None

    def _visible(self, direction: str, request_id: str):
        view = self.store.get(int(request_id), self.user)
        if view.direction != direction:
            raise al.AirlockRule.NOT_FOUND.refuse(direction=direction, id=request_id)
        return view


def _public(view) -> dict:
    d = view.as_dict()
    d["checks"] = [{k: c[k] for k in ("rule", "passed", "detail", "location")} for c in d["checks"]]
    d["history"] = [{k: h[k] for k in ("state", "previous", "actor", "reason", "at")} for h in d["history"]]
    return d


class CollectionHandler(_Base):
    async def get(self, direction: str):
        direction = direction[:-1]
        state, project = self.get_argument("state", None), self.get_argument("project", None)
        views = await self._call(self.store.list, self.user, project=project, state=state, direction=direction)
        if views is not None:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"requests": [_public(v) for v in views]}))

    async def post(self, direction: str):
        direction = direction[:-1]
        body = self._json_body()
        if body is None:
            return
        key, path, why, sha = body.get("project"), body.get("path"), body.get("why"), body.get("sha256")
        if not isinstance(key, str) or key not in self.store.site.projects:
            yours = ", ".join(self.store.site.projects_of(self.user, self.groups)) or "(none)"
            self._refuse(400, "airlock-unknown-project", f"project {key!r} does not exist; yours: {yours}")
            return
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            self._refuse(400, "airlock-sha256", "'sha256' is optional; if given, the file's sha256 as 64 hex digits")
            return
        source = await asyncio.to_thread(
            self.volumes.project_home if direction == al.EXPORT else (lambda u, _k: self.volumes.home(u)),
            self.user,
            key,
        )
        view = await self._call(
            self.store.submit,
            key,
            self.user,
            direction,
            path,
            why,
            source_volume=source,
            groups=self.groups,
            client_sha256=sha,
            source=self.request.remote_ip,
        )
        if view is not None:
            self._send(view, 201)


class RequestHandler(_Base):
    async def get(self, direction: str, request_id: str):
        view = await self._call(self._visible, direction[:-1], request_id)
        if view is not None:
            self._send(view)


class ActionHandler(_Base):
    async def post(self, direction: str, request_id: str, action: str):
        direction = direction[:-1]
        body = self._json_body()
        if body is None or await self._call(self._visible, direction, request_id) is None:
            return
        rid, ip = int(request_id), self.request.remote_ip
        if action == "reviews":
            decision, reason = body.get("decision"), body.get("reason")
            view = await self._call(review_and_release, self.store, self.volumes, rid, self.user, decision, reason, ip)
        elif action == "cancel":
            view = await self._call(self.store.cancel, rid, self.user, ip)
        else:
            view = await self._call(self.store.revoke, rid, self.user, body.get("reason"), ip)
        if view is not None:
            self._send(view, 201 if action == "reviews" else 200)


def review_and_release(store: AirlockStore, volumes: Volumes, rid: int, user: str, decision, reason, ip=None):
    """``user``'s review (the REST API and the page take the same path); the review that completes the approvals
    releases the file at once. A failed release (Docker) leaves the request approved and logged: the answer is
    still the approved request, and the release can be retried."""
    view = store.review(rid, user, decision, reason, ip)
    if view.state != al.APPROVED or (view.direction == al.EXPORT and store.settings.export_release == "download"):
        return view  # airlock.export_release: download keeps it approved until the requester downloads it once
    target = volumes.home(view.requester) if view.direction == al.EXPORT else volumes.project_home(
        view.requester, view.project)  # fmt: skip
    try:
        return store.release(view.id, target_volume=target, uid=volumes.uid(view.requester))
    except al.AirlockRefusal:
        raise
    except Exception:
        log.exception("release of %s %s failed; it stays approved", view.direction, view.id)
        return store.get(view.id)


def make_app(
    store: AirlockStore, auth, volumes: Volumes, prefix: str = f"/services/{SERVICE}/", hub_prefix: str = "/hub/"
) -> web.Application:
    """The REST API and the pages (:mod:`gpuhub.hub.airlock_pages`); ``auth`` a HubOAuth (the pages sign in with
    it; the API reads tokens with it). The cookie secret is per process: a restart only means a silent re-login."""
    from gpuhub.hub import airlock_pages

    args = {"store": store, "auth": auth, "volumes": volumes}
    api = prefix + r"api/(exports|imports)"
    return web.Application(
        [
            (api, CollectionHandler, args),
            (api + r"/([0-9]{1,12})", RequestHandler, args),
            (api + r"/([0-9]{1,12})/(reviews|cancel|revoke)", ActionHandler, args),
            *airlock_pages.handlers(prefix, {**args, "hub_prefix": hub_prefix}),
        ],
        cookie_secret=secrets.token_bytes(32),
        xsrf_cookies=True,
    )


async def amain() -> None:
    from gpuhub.host.dockerenv import docker_client  # the real engine, only in the running service
    from gpuhub.hub import runtime

    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s gpuhub-airlock] %(message)s")
    site = runtime.site(os.environ["GPUHUB_SITE_CONFIG"])
    quota = runtime.quota_store(site.path)
    store = AirlockStore(quota.engine, site, docker_client=docker_client())
    auth = HubOAuth.instance(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=60)  # the callback's too
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE}/")
    hub_prefix = os.environ.get("JUPYTERHUB_BASE_URL", "/") + "hub/"
    app = make_app(store, auth, hub_volumes(site, quota), prefix, hub_prefix)
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10103"))
    app.listen(url.port, url.hostname)
    log.info("serving %sapi on %s", prefix, url.geturl())
    await asyncio.Event().wait()


def main() -> None:
    from gpuhub.hub.quota_service import bind_to_hub  # the same parent-death rule as gpuhub-quota

    bind_to_hub(name=SERVICE)
    asyncio.run(amain())


if __name__ == "__main__":
    main()
