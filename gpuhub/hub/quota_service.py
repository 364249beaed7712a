"""gpuhub-quota: the hub-managed service that keeps the ledger honest while servers run.

The work itself is :class:`quota.enforcer.QuotaService`; this module is its shell: the hub
REST client its stops go through, the read-only status JSON for holders of a token with
``access:services!service=gpuhub-quota`` (the exporters), and the entry point the hub starts
(``gpuhub service quota``), the GPU queue's listing (``GET <prefix>queue``) and its dispatcher loop
(:mod:`gpuhub.hub.queue_dispatch`, which starts re-attached servers through the hub: the ``servers`` scope), and
the class windows' watch (:mod:`gpuhub.hub.reservation_watch`: warns, then stops others' servers on reserved GPUs).

Why a managed service and not a loop inside the hub: stops go through the hub's public REST
API (route removal, spawner.stop, release — the same path as a user's stop), a crash or a slow
Docker call here never stalls the hub's event loop, and the hub restarts it with itself.
It dies with its hub so a stop or a ``kill -9`` of the hub never leaves two enforcers
(:func:`bind_to_hub`): the stale one would hold the port and enforce the old site config.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from urllib.parse import quote, urlparse

from jupyterhub.services.auth import HubAuth
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from gpuhub.core.keys import server_key
from gpuhub.core.periods import utcnow
from gpuhub.host.dockerenv import docker_client
from gpuhub.host.process import set_parent_death_signal
from gpuhub.hub import runtime
from gpuhub.hub.queue_dispatch import INTERVAL_SECONDS, Dispatcher
from gpuhub.hub.reservation_watch import INTERVAL_SECONDS as RESERVATION_SECONDS
from gpuhub.hub.reservation_watch import ReservationWatch
from gpuhub.hub.service_auth import token_owner
from quota.enforcer import QuotaService
from quota.project_expiry import INTERVAL_SECONDS as EXPIRY_SECONDS
from quota.project_expiry import for_site as project_expiry
from quota.queue_store import QueueStore

log = logging.getLogger("gpuhub.quota")

#: the hub's pid, set by the hub in each managed service's environment (gpuhub.hub.hubconfig.apply_services)
HUB_PID_ENV = "GPUHUB_HUB_PID"


class HubClient:
    """The few hub REST calls the service makes, with the service's own token."""

    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.http = AsyncHTTPClient()

    async def stop_server(self, user: str, server: str) -> None:
        path = f"/users/{quote(user)}/servers/{quote(server)}" if server else f"/users/{quote(user)}/server"
        req = HTTPRequest(self.api_url + path, method="DELETE", headers={"Authorization": f"token {self.token}"})
        resp = await self.http.fetch(req, raise_error=False)
        if resp.code not in (202, 204, 404):
            log.error("hub refused to stop %s/%s: %s %s", user, server, resp.code, resp.body[:200])

    def _server_path(self, user: str, server: str) -> str:
        return f"/users/{quote(user)}/servers/{quote(server)}" if server else f"/users/{quote(user)}/server"

    async def server_state(self, user: str, server: str) -> str:
        """The server as the hub sees it now: "pending", "running", "stopped" or "gone" (no such user)."""
        req = HTTPRequest(f"{self.api_url}/users/{quote(user)}", headers={"Authorization": f"token {self.token}"})
        resp = await self.http.fetch(req, raise_error=False)
        if resp.code == 404:
            return "gone"
        if resp.code != 200:
            raise RuntimeError(f"GET /users/{user}: {resp.code} {resp.body[:200]!r}")
        found = (json.loads(resp.body).get("servers") or {}).get(server)
        if not found:
            return "stopped"
        return "pending" if found.get("pending") else "running" if found.get("ready") else "stopped"

    async def pending_servers(self) -> set[str]:
        """Server keys whose spawn (or stop) is pending now, for the reconciler (raises if the hub does not answer)."""
        req = HTTPRequest(f"{self.api_url}/users?state=active", headers={"Authorization": f"token {self.token}"})
        resp = await self.http.fetch(req, raise_error=False)
        if resp.code != 200:
            raise RuntimeError(f"GET /users?state=active: {resp.code} {resp.body[:200]!r}")
        return {
            server_key(u["name"], name)
            for u in json.loads(resp.body)
            for name, srv in (u.get("servers") or {}).items()
            if srv.get("pending")
        }

    async def start_server(self, user: str, server: str, options: dict) -> bool:
        """Start a queued request's server with its stored ``user_options`` (needs the ``servers`` scope)."""
        req = HTTPRequest(
            self.api_url + self._server_path(user, server),
            method="POST",
            body=json.dumps(options),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        resp = await self.http.fetch(req, raise_error=False)
        if resp.code in (201, 202) or (resp.code == 400 and b"already running" in resp.body):
            return True
        log.error("hub refused to start %s/%s: %s %s", user, server, resp.code, resp.body[:200])
        return False


class StatusHandler(web.RequestHandler):
    """GET <prefix>status: the same JSON as ``gpuhub quota status --format json``."""

    def initialize(self, store, auth):
        self.store, self.auth = store, auth

    async def get(self):
        model = await token_owner(self.auth, self.request)
        if not model or not self.auth.check_scopes(self.auth.access_scopes, model):
            raise web.HTTPError(403, "a token with access:services!service=gpuhub-quota is required")
        status = await asyncio.to_thread(self.store.status, utcnow())
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(status, default=str))


class QueueHandler(web.RequestHandler):
    """GET <prefix>queue: the GPU queue (quota.queue_listing). A token with access to this service (operators,
    exporters) sees every request and the class windows; any other user's token sees only that user's requests
    (each with its place in the whole line)."""

    def initialize(self, queue, auth):
        self.queue, self.auth = queue, auth

    async def get(self):
        model = await token_owner(self.auth, self.request)
        if not model:
            raise web.HTTPError(403, "a hub API token is required (Authorization: token ...)")
        everyone = self.auth.check_scopes(self.auth.access_scopes, model)
        if not everyone and model.get("kind") != "user":
            raise web.HTTPError(403, "a token with access:services!service=gpuhub-quota is required")
        listing = await asyncio.to_thread(self.queue.listing, None, None if everyone else model["name"])
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(listing, default=str))


async def _every(seconds: float, fn, name: str) -> None:
    while True:
        try:
            await fn()
        except Exception:
            log.exception("%s failed; retrying in %s s", name, seconds)
        await asyncio.sleep(seconds)


def bind_to_hub(ppid_at_start: int | None = None, name: str = "gpuhub-quota") -> int:
    """Tie this service's life to its hub's; returns the hub's pid. Call it before any start-up work.

    The hub (pid in ``$GPUHUB_HUB_PID``; else ``ppid_at_start``, the parent read as the entry point's
    first statement) may already be gone when this runs: a service the hub (re)started while going
    away used to find pid 1 as its parent, watch it forever and hold the port, so the next hub's
    service died with "Address already in use". So: first the kernel's parent-death signal (SIGTERM
    when the hub dies from now on), then one check that the parent still is the hub (it died before).
    """
    hub_pid = int(os.environ.get(HUB_PID_ENV) or 0) or ppid_at_start or os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    parent = os.getppid()
    if parent != hub_pid:
        print(
            f"[W {name}] the hub (pid {hub_pid}) that started this service is gone (parent is now pid "
            f"{parent}); exiting so the next hub's own {name} can serve",
            file=sys.stderr,
            flush=True,
        )
        os._exit(0)
    return hub_pid


async def _watch_parent(ppid: int) -> None:
    """Backstop where there is no parent-death signal (not Linux): poll the parent once a second."""
    while os.getppid() == ppid:
        await asyncio.sleep(1)
    log.warning("parent hub %s is gone; exiting", ppid)
    os._exit(0)


async def amain(hub_pid: int) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s gpuhub-quota] %(message)s")
    site = runtime.site(os.environ["GPUHUB_SITE_CONFIG"])
    store = runtime.quota_store(site.path)
    hub = HubClient(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    docker = docker_client()  # one client for the enforcer and the project expiry
    service = QuotaService(site, store, hub, docker)
    auth = HubAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=60)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gpuhub-quota/")
    queue = QueueStore(store.engine, site, offers=store.offers)
    dispatcher = Dispatcher(queue, store.inventory, hub)
    app = web.Application(
        [
            (prefix + "status", StatusHandler, {"store": store, "auth": auth}),
            (prefix + "queue", QueueHandler, {"queue": queue, "auth": auth}),
        ]
    )
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    app.listen(url.port, url.hostname)
    log.info("serving %sstatus on %s", prefix, url.geturl())
    await asyncio.gather(
        _watch_parent(hub_pid),
        _every(site.quota.reconcile_interval_seconds, service.reconcile, "reconcile"),
        _every(site.quota.enforce_interval_seconds, service.enforce, "enforce"),
        _every(INTERVAL_SECONDS, dispatcher.tick, "queue dispatch"),
        _every(RESERVATION_SECONDS, ReservationWatch(site, store, hub).tick, "class reservations"),
        _every(EXPIRY_SECONDS, project_expiry(site, store.engine, docker).tick, "project expiry"),
    )


def main(ppid_at_start: int | None = None) -> None:
    """Run the service until the hub stops it; ``gpuhub service quota`` checks its environment, then calls this
    with the parent pid it read first (see :func:`bind_to_hub`)."""
    hub_pid = bind_to_hub(ppid_at_start)
    try:
        asyncio.run(amain(hub_pid))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    # `python -m gpuhub.hub.quota_service` is `gpuhub service quota` (gpuhub.cli, which this layer may not import):
    # re-executed in place, so the process id, and with it the parent hub that _watch_parent follows, stays the same.
    os.execv(sys.executable, [sys.executable, "-m", "gpuhub", "service", "quota", *sys.argv[1:]])
