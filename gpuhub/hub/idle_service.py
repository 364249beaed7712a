"""gpuhub-idle: the hub-managed service that gives idle GPUs back (definition: :mod:`quota.idle`).

Every ``idle.check_interval_seconds`` (default: one window) :class:`IdleCuller` reads

- the GPU side from the GPU exporter(s) of ``idle.gpu_exporters``: their ``/metrics`` series
  ``gpuhub_gpu_idle_seconds{org,user,server,uuid}``, made by the exporter's own NVML sampler and
  attribution (bearer token ``metrics_token_env``, as Prometheus uses); no second NVML reader;
- the ledger's open GPU intervals (who holds which devices since when);
- each candidate's kernels (``execution_state``) from its single-user server's API through the
  hub's proxy, with this service's token (scope ``access:servers``), only for servers whose GPUs
  are idle;
- the operators' exemptions (``gpuhub idle exempt``, the file ``<state_dir>/idle-exemptions.json``).

It warns (log, the hub home page through :class:`IdleBanner`, ``<state_dir>/idle-status.json``
for ``gpuhub idle status``, and inside JupyterLab: :class:`LabNotice` POSTs the notice to the
server's ``gpuhub/notice``, which the image's gpuhub-lab extension shows; DELETE once active again
or culled), then stops the server through the hub REST API (home volume kept:
the spawner's normal stop), and once that stop has closed the interval (``stopped``) it sets
the ledger's end_reason to ``gpu-idle`` (:meth:`quota.store.QuotaStore.set_end_reason`). Servers
culled by jupyterhub-idle-culler (CPU-only) get ``http-idle`` the same way, from the intents its
arbiter (:mod:`gpuhub.hub.idle_http`) writes.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from gpuhub.hub import runtime
from gpuhub.hub.idle_state import (
    EXEMPTIONS_FILE,
    GPU_IDLE,
    HTTP_CULLS_FILE,
    HTTP_IDLE,
    KEEP_CULLED_SECONDS,
    STATUS_FILE,
    read_json,
    write_json,
)
from gpuhub.hub.quota_service import HubClient, _watch_parent, bind_to_hub
from quota import idle
from quota.store import CLOSED_BY_A_HUB_STOP
from quota.usage_records import IdleReading, record_idle

log = logging.getLogger("gpuhub.idle")


def exemption_until(exemptions: dict, key: str, org: str | None) -> float | None:
    """The latest of the server's, its user's (``USER/*``) and its org's exemption (Unix seconds), or None."""
    servers = exemptions.get("servers", {})
    times = [servers.get(key), servers.get(key.split("/", 1)[0] + "/*"), exemptions.get("orgs", {}).get(org or "")]
    times = [float(t) for t in times if t]
    return max(times) if times else None


# ---------------------------------------------------------------- sources


class StopsServers(Protocol):
    async def stop_server(self, user: str, server: str) -> None: ...


class ExporterIdleSource:
    """``gpuhub_gpu_idle_seconds`` from each GPU exporter's /metrics: {uuid: (user, server, seconds)}."""

    def __init__(self, urls, token: str | None, timeout: float = 5.0):
        self.urls, self.token, self.timeout = list(urls), token, timeout
        self.http = AsyncHTTPClient()

    async def device_idle(self) -> dict[str, tuple[str, str, float]]:
        out: dict[str, tuple[str, str, float]] = {}
        for url in self.urls:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            try:
                resp = await self.http.fetch(
                    HTTPRequest(url + "/metrics", headers=headers, request_timeout=self.timeout)
                )
            except Exception as e:  # an exporter away: its devices have no data, never idle
                log.warning("GPU exporter %s unreadable (%s); its GPUs count as having no data", url, e)
                continue
            for fam in text_string_to_metric_families(resp.body.decode()):
                if fam.name == "gpuhub_gpu_idle_seconds":
                    for s in fam.samples:
                        out[s.labels["uuid"]] = (s.labels["user"], s.labels["server"], float(s.value))
        return out


def server_url(public_url: str, user: str, server: str, path: str) -> str:
    """``path`` on a single-user server, through the hub's proxy."""
    return public_url.rstrip("/") + f"/user/{quote(user)}/" + (f"{quote(server)}/" if server else "") + path


class KernelState:
    """Whether a server has a busy kernel, from its ``/api/kernels`` through the hub's proxy."""

    def __init__(self, public_url: str, token: str, timeout: float = 10.0):
        self.public_url, self.token, self.timeout = public_url.rstrip("/"), token, timeout
        self.http = AsyncHTTPClient()

    async def busy(self, user: str, server: str) -> bool | None:
        req = HTTPRequest(
            server_url(self.public_url, user, server, "api/kernels"),
            headers={"Authorization": f"token {self.token}"},
            request_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            resp = await self.http.fetch(req, raise_error=False)
            if resp.code != 200:
                log.warning("kernels of %s/%s: HTTP %s; not culling on a guess", user, server, resp.code)
                return None
            return any(k.get("execution_state") == "busy" for k in json.loads(resp.body))
        except Exception as e:
            log.warning("kernels of %s/%s unreadable (%s); not culling on a guess", user, server, e)
            return None


def notice_payload(v: idle.Verdict, devices: tuple[str, ...] | list[str], now: float) -> dict:
    """What gpuhub-lab shows (``images/base-notebook/gpuhub-lab``): the GPUs, since when idle, when it stops."""
    return {
        "gpus": list(devices),
        "idle_since": now - (v.idle_seconds or 0.0),
        "cull_at": v.cull_at if v.cull_at is not None else now,
        "server": v.key.split("/", 1)[1],
    }


class LabNotice:
    """The warning inside JupyterLab: POST/DELETE the server's ``gpuhub/notice`` through the hub's proxy,
    with this service's token (scope ``access:servers``, which the single-user server accepts)."""

    def __init__(self, public_url: str, token: str, timeout: float = 5.0):
        self.public_url, self.token, self.timeout = public_url.rstrip("/"), token, timeout
        self.http = AsyncHTTPClient()

    async def send(self, user: str, server: str, notice: dict | None) -> bool:
        """Set ``notice`` (None: clear it). True once the server answered for good (a server without
        gpuhub-lab answers 404: nothing to retry); False when it could not be reached (retry next tick)."""
        req = HTTPRequest(
            server_url(self.public_url, user, server, "gpuhub/notice"),
            method="DELETE" if notice is None else "POST",
            body=None if notice is None else json.dumps(notice),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            request_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            resp = await self.http.fetch(req, raise_error=False)
        except Exception as e:
            log.warning("JupyterLab notice for %s/%s not sent (%s); retrying next tick", user, server, e)
            return False
        if resp.code >= 500:
            log.warning("JupyterLab notice for %s/%s: HTTP %s; retrying next tick", user, server, resp.code)
            return False
        if resp.code >= 300:  # 404: an image without gpuhub-lab; 403: this token lacks access:servers
            log.info("JupyterLab notice for %s/%s: HTTP %s (the home page still warns)", user, server, resp.code)
        return True


# ---------------------------------------------------------------- the work


class IdleCuller:
    """One tick at a time (tests drive :meth:`tick` with their own clock and sources)."""

    def __init__(self, site, store, hub: StopsServers | None, gpu_source, kernels, clock=time.time, lab=None):
        self.site, self.store, self.hub, self.clock = site, store, hub, clock
        self.gpu, self.kernels = gpu_source, kernels
        self.lab: LabNotice | None = lab
        self.lab_noticed: set[str] = set()  # servers whose JupyterLab took the notice
        self.state_dir = Path(site.hub.state_dir)
        self.planner = idle.Planner(warn_seconds=60.0 * site.idle.warn_minutes)
        self.pending: dict[int, str] = {}  # interval id -> end_reason to set once the spawner closed it
        self.culled: list[dict] = read_json(self.state_dir / STATUS_FILE, {}).get("culled", [])

    async def tick(self) -> list[idle.Verdict]:
        now = self.clock()
        rows = [r for r in await asyncio.to_thread(self.store.open_intervals) if int(r.get("gpus") or 0) > 0]
        seen = await self.gpu.device_idle()
        exemptions = read_json(self.state_dir / EXEMPTIONS_FILE, {})
        views = []
        for r in rows:
            user, server = r["user"], r["server_name"] or ""
            devices = tuple(d for d in (r.get("device_uuids") or "").split(",") if d)
            device_idle = {}
            for uuid in devices:
                holder = seen.get(uuid)  # the exporter must see the same holder, or it has no data for it
                device_idle[uuid] = holder[2] if holder and holder[:2] == (user, server) else None
            gpu_side = min((s for s in device_idle.values() if s is not None), default=None)
            busy = False
            if gpu_side and None not in device_idle.values():
                busy = await self.kernels.busy(user, server)
            views.append(
                idle.ServerView(
                    key=r["server_key"],
                    user=user,
                    org=r.get("org"),
                    devices=devices,
                    started_at=r["started_at"].timestamp(),
                    device_idle=device_idle,
                    kernels_busy=busy,
                    timeout_seconds=idle.gpu_timeout_seconds(self.site, user, r.get("org")),
                    exempt_until=exemption_until(exemptions, r["server_key"], r.get("org")),
                )
            )
        verdicts = self.planner.tick(views, now)
        by_key = {r["server_key"]: r for r in rows}
        for v in verdicts:
            if v.action == idle.CULL:
                await self._notify_lab(v, by_key[v.key], now)  # before the stop: the server is there to clear it
            await self._act(v, by_key[v.key], now)
        await self._relabel(now)
        await self._record_idle(rows, views, now)
        self._write_status(views, verdicts, now)
        # after the home page's status: a slow server must not delay the others' warnings
        await asyncio.gather(*(self._notify_lab(v, by_key[v.key], now) for v in verdicts if v.action != idle.CULL))
        self.lab_noticed &= set(by_key)
        return verdicts

    async def _act(self, v: idle.Verdict, row: dict, now: float) -> None:
        gpus = row.get("device_uuids") or ""
        if v.action == idle.WARN:
            log.warning(
                "%s: GPUs %s idle for %s; stopping at %s unless they are used",
                v.key,
                gpus,
                idle.describe(v.idle_seconds),
                time.strftime("%H:%M:%S", time.gmtime(v.cull_at)),
            )
        elif v.action == idle.CLEAR:
            log.info("%s: active again; warning withdrawn", v.key)
        elif v.action == idle.CULL:
            log.warning(
                "stopping %s: GPUs %s idle for %s (timeout %s)",
                v.key,
                gpus,
                idle.describe(v.idle_seconds),
                idle.describe(v.timeout_seconds),
            )
            retry = int(row["id"]) in self.pending  # the hub did not stop it last time: ask again, note once
            self.pending[int(row["id"])] = GPU_IDLE
            if not retry:
                self.culled.append(
                    {
                        "key": v.key,
                        "user": row["user"],
                        "server": row["server_name"] or "",
                        "org": row.get("org"),
                        "devices": gpus,
                        "at": now,
                        "interval_id": row["id"],
                        "idle_seconds": v.idle_seconds,
                        "kind": "gpu",
                    }
                )
            if self.hub:
                await self.hub.stop_server(row["user"], row["server_name"] or "")

    async def _notify_lab(self, v: idle.Verdict, row: dict, now: float) -> None:
        """Set the notice while the server is warned (again next tick until its server took it); clear it
        when the warning clears or the server is culled."""
        if self.lab is None:
            return
        user, server = row["user"], row["server_name"] or ""
        if v.action in (idle.CLEAR, idle.CULL):
            if v.key in self.lab_noticed:
                self.lab_noticed.discard(v.key)
                await self.lab.send(user, server, None)
        elif self.planner.clocks[v.key].warned_at is not None and v.key not in self.lab_noticed:
            devices = tuple(d for d in (row.get("device_uuids") or "").split(",") if d)
            if await self.lab.send(user, server, notice_payload(v, devices, now)):
                self.lab_noticed.add(v.key)

    async def _record_idle(self, rows: list[dict], views: list[idle.ServerView], now: float) -> None:
        """Each held device's idle seconds into the ledger's idle spans (this month's idle-allocated GPU-hours on
        /hub/operators and in ``gpuhub quota status``); a database fault is logged and never stops culling."""
        readings = [
            IdleReading(r["id"], uuid, r["server_key"], r["user"], r.get("org"), r.get("model"), r["started_at"], s)
            for r, view in zip(rows, views, strict=True)
            for uuid, s in view.device_idle.items()
        ]
        try:
            await asyncio.to_thread(record_idle, self.store, readings, _dt(now))
        except Exception as e:  # noqa: BLE001 (bookkeeping: the next check records the run again)
            log.warning("idle spans not recorded this check: %s", e)

    async def _relabel(self, now: float) -> None:
        """A stop the hub carried out closes as ``stopped`` (or ``container-exited`` when the reconciler saw
        the container go first); once it has closed, the ledger gets the real reason."""
        intents = [i for i in read_json(self.state_dir / HTTP_CULLS_FILE, []) if now - float(i.get("at", 0)) < 3600]
        if intents:  # one read for all of them: the intervals a hub stop closed after the culler decided
            closed = await asyncio.to_thread(self.store.recently_closed, _dt(min(float(i["at"]) for i in intents) - 5))
            for intent in intents:
                for r in closed:
                    if (
                        r["server_key"] == intent["key"]
                        and r["end_reason"] in CLOSED_BY_A_HUB_STOP
                        and r["ended_at"].timestamp() >= float(intent["at"]) - 5
                    ):
                        self.pending.setdefault(int(r["id"]), HTTP_IDLE)
        for interval_id, reason in list(self.pending.items()):
            state = await asyncio.to_thread(self.store.set_end_reason, interval_id, reason)
            if state != "open":  # done, or closed for another reason (e.g. the container died first)
                del self.pending[interval_id]
        self.culled = [c for c in self.culled if now - c["at"] < KEEP_CULLED_SECONDS][-200:]

    def _write_status(self, views, verdicts, now: float) -> None:
        servers = {}
        for view, v in zip(views, verdicts, strict=True):
            if v.action == idle.CULL:
                continue  # being stopped: the home page tells why from ``culled``
            servers[v.key] = {
                **asdict(v),
                "user": view.user,
                "org": view.org,
                "devices": list(view.devices),
                "warned": self.planner.clocks[v.key].warned_at is not None,
            }
        write_json(
            self.state_dir / STATUS_FILE,
            {"at": now, "interval": self.site.idle.interval, "servers": servers, "culled": self.culled},
        )


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


# ---------------------------------------------------------------- hub home page


class IdleBanner:
    """``template_vars['announcement_home']``: the user's idle warnings and why a server was stopped."""

    def __init__(self, site_path: str):
        self.site_path = site_path

    def __call__(self, user) -> str:
        if user is None:
            return ""
        try:
            site = runtime.site(self.site_path)
            status = read_json(Path(site.hub.state_dir) / STATUS_FILE, {})
        except Exception:  # a page must render even when the file is away
            return ""
        return banner_html(user.name, status, time.time())


def banner_html(user: str, status: dict, now: float) -> str:
    lines = []
    running = status.get("servers", {})
    for key, s in sorted(running.items()):
        if s.get("user") == user and s.get("warned") and s.get("cull_at"):
            name = key.split("/", 1)[1] or "default"
            lines.append(
                f"Your server <b>{html.escape(name)}</b> holds GPUs {html.escape(', '.join(s['devices']))} that have "
                f"been idle for {idle.describe(s['idle_seconds'])}; it will be stopped at "
                f"{time.strftime('%H:%M:%S UTC', time.gmtime(s['cull_at']))} (in {idle.describe(s['cull_at'] - now)}) "
                "unless a GPU or a kernel is busy again. Your files in the home folder are kept."
            )
    for c in status.get("culled", []):
        if c.get("user") == user and c["key"] not in running and now - c["at"] < KEEP_CULLED_SECONDS:
            name = c["server"] or "default"
            lines.append(
                f"Your server <b>{html.escape(name)}</b> was stopped at "
                f"{time.strftime('%H:%M UTC', time.gmtime(c['at']))} because "
                + (
                    f"its GPUs {html.escape(c['devices'])} were idle for {idle.describe(c['idle_seconds'])}"
                    if c.get("kind") == "gpu"
                    else "it was inactive"
                )
                + "; its GPUs were given back. Your home folder is kept: start it again when you need it."
            )
    return "<br>".join(lines)


# ---------------------------------------------------------------- entry point


async def amain(hub_pid: int) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s gpuhub-idle] %(message)s")
    site = runtime.site(os.environ["GPUHUB_SITE_CONFIG"])
    store = runtime.quota_store(site.path)
    token = os.environ["JUPYTERHUB_API_TOKEN"]
    metrics_token = os.environ.get(site.metrics_token_env) if site.metrics_token_env else None
    public_url = os.environ.get("GPUHUB_PUBLIC_URL", site.hub.bind_url)
    culler = IdleCuller(
        site,
        store,
        HubClient(os.environ["JUPYTERHUB_API_URL"], token),
        ExporterIdleSource(site.idle.gpu_exporters, metrics_token),
        KernelState(public_url, token),
        lab=LabNotice(public_url, token),
    )
    log.info(
        "GPU idle culling: timeout %s min, warning %s min before, windows of %g s at <= %g; exporters: %s",
        site.idle.timeout_minutes,
        site.idle.warn_minutes,
        site.idle.window_seconds,
        site.idle.gpu_threshold,
        ", ".join(site.idle.gpu_exporters) or "none (no GPU server is ever culled for idleness)",
    )

    async def loop():
        while True:
            try:
                await culler.tick()
            except Exception:
                log.exception("idle tick failed; retrying in %s s", site.idle.interval)
            await asyncio.sleep(site.idle.interval)

    await asyncio.gather(_watch_parent(hub_pid), loop())


def main() -> None:
    ppid = os.getppid()  # first, before any work: the hub that started us (see quota_service.bind_to_hub)
    hub_pid = bind_to_hub(ppid, name="gpuhub-idle")
    try:
        asyncio.run(amain(hub_pid))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
