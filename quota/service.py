"""gpuhub-quota: the hub-managed service that keeps the ledger honest while servers run.

Every ``quota.enforce_interval_seconds`` it heartbeats open intervals, charges usage and
applies :mod:`quota.budget` (warnings at 80/95/100 %, stops after the grace); every
``quota.reconcile_interval_seconds`` (and once at start) it compares Docker's containers with
the ledger (:mod:`quota.reconcile`). It also serves the read-only status JSON to holders of a
token with ``access:services!service=gpuhub-quota`` (the exporters).

Why a managed service and not a loop inside the hub: stops go through the hub's public REST
API (route removal, spawner.stop, release — the same path as a user's stop), a crash or a slow
Docker call here never stalls the hub's event loop, and the hub restarts it with itself.
It exits when its parent hub dies so a ``kill -9`` of the hub never leaves two enforcers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from datetime import timedelta
from urllib.parse import quote, urlparse

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from gpuhub import labels as lb
from quota import budget, reconcile
from quota.periods import utcnow

log = logging.getLogger("gpuhub.quota")


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


def docker_view(client, instance: str) -> list[reconcile.ContainerView]:
    """Our labelled containers as the reconciler sees them (read BEFORE the database)."""
    from gpuhub.dockerenv import docker_time

    out = []
    for c in client.containers.list(all=True, filters={"label": [f"{lb.HUB}={instance}", f"{lb.MANAGED}=1"]}):
        state = c.attrs.get("State", {})
        out.append(reconcile.ContainerView(
            name=c.name, labels=c.labels, running=bool(state.get("Running")),
            started_at=docker_time(state.get("StartedAt")), finished_at=docker_time(state.get("FinishedAt")),
        ))
    return out


class QuotaService:
    """The periodic work; each step is a plain method so tests can drive it with a fake clock."""

    def __init__(self, site, store, hub: HubClient | None, docker_client, clock=utcnow):
        self.site, self.store, self.hub, self.docker, self.clock = site, store, hub, docker_client, clock
        self.messages: dict[str, str] = {}

    async def enforce(self) -> list[str]:
        """Heartbeat, then warn and stop per org; returns the server keys it asked the hub to stop."""
        now = self.clock()
        await asyncio.to_thread(self.store.heartbeat, now)
        open_rows = await asyncio.to_thread(self.store.open_intervals)
        usage = await asyncio.to_thread(self.store.usage_by_org, now)  # one query for every org
        stopped = []
        for key, org in self.site.organizations.items():
            running = [
                budget.RunningServer(r["server_key"], r["user"], int(r["gpus"] or 0), float(r["weight"] or 0.0))
                for r in open_rows if r.get("org") == key
            ]
            used = usage.get(key, 0.0)
            announced = await asyncio.to_thread(self.store.announced_warnings, key, now)
            verdict = budget.evaluate(
                key, org.gpu_hours_per_month, used, running, now, announced=announced,
                warn_fractions=self.site.quota.warn_fractions, grace_seconds=self.site.quota.grace_seconds,
            )
            for fraction in verdict.warnings_due:
                log.warning("budget %d %% reached: %s", round(fraction * 100), verdict.message)
                await asyncio.to_thread(self.store.announce_warning, key, fraction, now, verdict.message)
            for server_key in verdict.stop:
                user, _, server = server_key.partition("/")
                log.warning("stopping %s: %s", server_key, verdict.message)
                if self.hub:
                    await self.hub.stop_server(user, server)
                stopped.append(server_key)
        return stopped

    async def reconcile(self) -> reconcile.Plan:
        """Make the ledger match Docker: close dead servers' intervals, stop or adopt strangers."""
        containers = await asyncio.to_thread(docker_view, self.docker, self.site.hub.instance)
        rows = await asyncio.to_thread(self.store.open_intervals)
        now = self.clock()
        since = now - timedelta(seconds=2 * self.site.quota.reconcile_interval_seconds + 60)
        closed = await asyncio.to_thread(self.store.recently_closed, since)
        plan = reconcile.plan(
            containers, [reconcile.IntervalView.from_row(r) for r in rows], now,
            unknown=self.site.quota.unknown_containers, hub_id=self.site.hub.instance,
            pending_grace_seconds=max(120.0, 2 * self.site.quota.reconcile_interval_seconds),
            recently_closed=[reconcile.IntervalView.from_row(r) for r in closed],
            held_devices=[r_dev for r in rows for r_dev in (r.get("device_uuids") or "").split(",") if r_dev],
        )
        for c in plan.close:
            log.info("closing %s at %s (%s)", c.server_key, c.at.isoformat(), c.reason)
        for a in plan.adopt:
            log.warning("adopting container %s as %s/%s", a.container, a.user, a.server_name)
        applied = await asyncio.to_thread(self.store.apply_plan, plan)  # the ledger side: closes, adoptions
        for container, why in applied["refused"]:
            log.warning("not adopting %s: %s", container, why)
        for s in plan.stop:
            log.warning("stopping container %s (%s)", s.container, s.reason)
            await asyncio.to_thread(self._remove_container, s.container)
        for note in plan.notes:
            log.warning("reconcile: %s", note)
        return plan

    def _remove_container(self, name: str) -> None:
        import docker

        try:
            c = self.docker.containers.get(name)
            c.stop(timeout=self.site.containers.stop_timeout_seconds)
            c.remove(force=True)
        except docker.errors.NotFound:
            pass


class StatusHandler(web.RequestHandler):
    """GET <prefix>status: the same JSON as ``gpuhub quota status --format json``."""

    def initialize(self, store, auth):
        self.store, self.auth = store, auth

    async def get(self):
        header = self.request.headers.get("Authorization", "")
        token = header.split(None, 1)[1] if header.lower().startswith(("token ", "bearer ")) else ""
        model = await self.auth.user_for_token(token, use_cache=True, sync=False) if token else None
        if not model or not self.auth.check_scopes(self.auth.access_scopes, model):
            raise web.HTTPError(403, "a token with access:services!service=gpuhub-quota is required")
        status = await asyncio.to_thread(self.store.status, utcnow())
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(status, default=str))


async def _every(seconds: float, fn, name: str) -> None:
    while True:
        try:
            await fn()
        except Exception:
            log.exception("%s failed; retrying in %s s", name, seconds)
        await asyncio.sleep(seconds)


async def _watch_parent(ppid: int) -> None:
    while os.getppid() == ppid:
        await asyncio.sleep(1)
    log.warning("parent hub %s is gone; exiting", ppid)
    os._exit(0)


async def amain() -> None:
    from jupyterhub.services.auth import HubAuth

    from gpuhub.dockerenv import docker_client
    from gpuhub.runtime import quota_store, site as load

    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s gpuhub-quota] %(message)s")
    site = load(os.environ["GPUHUB_SITE_CONFIG"])
    store = quota_store(site.path)
    hub = HubClient(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    service = QuotaService(site, store, hub, docker_client())
    auth = HubAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=60)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gpuhub-quota/")
    app = web.Application([(prefix + "status", StatusHandler, {"store": store, "auth": auth})])
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    app.listen(url.port, url.hostname)
    log.info("serving %sstatus on %s", prefix, url.geturl())
    await asyncio.gather(
        _watch_parent(os.getppid()),
        _every(site.quota.reconcile_interval_seconds, service.reconcile, "reconcile"),
        _every(site.quota.enforce_interval_seconds, service.enforce, "enforce"),
    )


def main() -> None:
    try:
        asyncio.run(amain())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
