"""GpuhubSpawner: DockerSpawner that gives each server exactly the GPUs it was allocated.

A thin adapter: the request is checked by :mod:`gpuhub.hub.options`, devices are taken by the
quota store in one transaction, and then DockerSpawner creates the container with our
labels, hardening and (for ``runtime: nvidia``) a device request by UUID. Docker API calls
run on a shared thread pool instead of DockerSpawner's single worker thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import docker
from dockerspawner import DockerSpawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Bool, Float, Integer, Unicode, default

from gpuhub.core import labels as lb
from gpuhub.hub import runtime
from gpuhub.host.dockerenv import docker_time
from gpuhub.core.naming import container_name
from gpuhub.hub.options import OptionsError, options_from_form, validate_options
from gpuhub.hub.pages import group_names



def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class GpuhubSpawner(DockerSpawner):
    """Spawns one Docker container per server with the GPUs the quota store granted."""

    site_config = Unicode(
        "",
        help="""Path of the gpuhub site config (YAML) whose catalog, organizations and GPUs
        this spawner enforces. Set by ``gpuhub.hub.hubconfig.apply_spawner``; every spawner,
        service and CLI reads the same file so they agree on the rules.""",
    ).tag(config=True)

    docker_api_threads = Integer(
        32,
        help="""Threads shared by all spawners for Docker API calls. Stock DockerSpawner uses
        one, which serialises a class's concurrent stops and starts; Docker itself handles
        these calls concurrently. A ``docker stop`` holds its thread until the container has
        exited, so this is also how many servers can be stopping at once.""",
    ).tag(config=True)

    wait_ready = Bool(
        True,
        help="""Return from start() only once the single-user server answers HTTP, polling every
        ``ready_poll_interval`` seconds. The hub's own exponential back-off then succeeds on
        its first try instead of sleeping up to a second past readiness.""",
    ).tag(config=True)

    ready_poll_interval = Float(
        0.05, help="Seconds between readiness probes while waiting for a new server (see wait_ready)."
    ).tag(config=True)

    start_concurrency = Integer(
        0,
        help="""How many servers may be in their CPU-bound start phase (container start until the
        server answers) at once; the rest wait their turn, with their place shown in the spawn
        progress. Starting every server of a class at once makes them all share the CPUs and all
        finish late; letting a few through at a time finishes most of them sooner at the same total
        cost. 0 means twice the number of CPU cores.""",
    ).tag(config=True)

    hub_instance = Unicode(
        "gpuhub",
        help="""Value of the ``gpuhub.hub`` label on every container, so several hubs can share an
        engine and each reconciler only touches its own containers.""",
    ).tag(config=True)

    _pool: ThreadPoolExecutor | None = None
    _start_gate: asyncio.Semaphore | None = None
    _queued = 0  # spawns waiting for a start slot, for the progress message

    # ------------------------------------------------------------ plumbing

    @property
    def executor(self) -> ThreadPoolExecutor:
        cls = GpuhubSpawner
        if cls._pool is None:
            cls._pool = ThreadPoolExecutor(self.docker_api_threads, thread_name_prefix="gpuhub-docker")
        return cls._pool

    @property
    def start_gate(self) -> asyncio.Semaphore:
        cls = GpuhubSpawner
        if cls._start_gate is None:
            cls._start_gate = asyncio.Semaphore(self.start_concurrency or 2 * (os.cpu_count() or 1))
        return cls._start_gate

    @default("object_name")
    def _object_name_default(self):
        """The container's name from :func:`gpuhub.core.naming.container_name`: unambiguous for escaped
        usernames and named servers, where DockerSpawner's ``{prefix}-{username}--{servername}``
        is not (escaped usernames contain ``--``). DockerSpawner re-renders it through this method."""
        return container_name(self.user.name, self.name, prefix=self.prefix)

    @default("client_kwargs")
    def _default_client_kwargs(self):
        return {"max_pool_size": self.docker_api_threads}

    @property
    def site(self):
        return runtime.site(self.site_config)

    @property
    def quota(self):
        return runtime.quota_store(self.site_config)

    @property
    def server_key(self) -> str:
        return f"{self.user.name}/{self.name}"

    def _groups(self) -> frozenset[str]:
        return group_names(self.user)

    def _emit(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})

    async def _quota_call(self, fn, *args):
        """Run a quota-store call off the event loop; an unreachable DB fails GPU spawns closed."""
        from quota.store import QuotaRefused, QuotaUnavailable

        try:
            return await asyncio.to_thread(fn, *args)
        except QuotaRefused as e:
            raise web.HTTPError(e.status, e.message, reason=e.rule) from None
        except QuotaUnavailable as e:
            raise web.HTTPError(503, str(e)) from None

    # ------------------------------------------------------------ form

    @default("options_form")
    def _default_options_form(self):
        from gpuhub.hub.form import render_options_form

        return render_options_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # start() validates and applies user_options itself (gpuhub.hub.options); nothing to map here
        return lambda spawner, options: None

    @default("options_from_form")
    def _default_options_from_form(self):
        # JupyterHub calls options_from_form(formdata, spawner=...)
        return lambda formdata, spawner=None: options_from_form(formdata)

    # ------------------------------------------------------------ lifecycle

    def load_state(self, state):
        super().load_state(state)
        self.gpu_uuids = list(state.get("gpu_uuids", []))

    def get_state(self):
        state = super().get_state()
        if self.object_id:
            state["gpu_uuids"] = list(getattr(self, "gpu_uuids", []))
        return state

    def get_env(self):
        env = super().get_env()
        uuids = list(getattr(self, "gpu_uuids", []))
        # Ours alone: the container env overrides any image ENV, and users cannot pass env.
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(uuids) if uuids else "void"
        # Inside the container the granted GPUs are numbered 0..n-1; an image's own value is replaced.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(uuids)))
        env["GPUHUB_GPUS"] = ",".join(uuids)
        request = getattr(self, "_request", None)
        env["GPUHUB_ORG"] = (request.org or "") if request else ""
        env.update(getattr(self, "_course_env", {}))  # courses hook: JUPYTER_CONFIG_PATH, GPUHUB_COURSES
        return env

    async def start(self):
        self._events = []
        site = self.site
        self._emit(5, "Checking your request")
        try:
            request = validate_options(
                self.user_options, site, user=self.user.name, server_name=self.name, groups=self._groups()
            )
        except OptionsError as e:
            await self._record_refusal(e.rule, self.user_options.get("org") if isinstance(self.user_options, dict) else None)
            raise web.HTTPError(e.status, e.message, reason=e.rule) from None
        self._request = request
        spec = site.images[request.image]
        self.image = spec.image
        what = f"{request.gpus} GPU{'s' if request.gpus != 1 else ''}"
        self._emit(15, f"Allocating {what} for {request.org or 'no organization'}")
        grant = await self._quota_call(self.quota.allocate, request, self._groups())
        runtime.forget_status(self.site_config)
        self.gpu_uuids = list(grant.devices)
        if grant.devices:
            self._emit(25, f"Allocated {grant.model} {', '.join(grant.devices)} to {request.org}")
        for warning in grant.warnings:
            self._emit(27, warning)
        try:
            self._configure_container(request, grant)
            uid = await self._quota_call(self.quota.uid_for, self.user.name)
            self.extra_create_kwargs["user"] = f"{uid}:{uid}"
            await self._ensure_home(uid)
            await self._prepare_courses(uid)  # courses hook (gpuhub.hub.courses)
            await self._take_start_slot()
            try:
                self._emit(35, f"Creating and starting container from {spec.display_name}")
                try:
                    ip, port = await super().start()
                except docker.errors.APIError as e:
                    if site.gpus.runtime == "nvidia" and grant.devices:
                        raise web.HTTPError(
                            503, f"Docker could not hand GPUs {', '.join(grant.devices)} to the container "
                            f"({e.explanation or e}); this host needs the NVIDIA container toolkit for "
                            "gpus.runtime: nvidia — ask an operator (or use runtime: none for simulated GPUs)",
                        ) from None
                    raise
                if self.wait_ready:
                    self._emit(70, "Waiting for JupyterLab to answer")
                    await self._wait_until_ready(ip, port)
            finally:
                self.start_gate.release()
            self._emit(90, "Server is ready")
            return ip, port
        except BaseException:
            await self._remove_failed_container()
            await self._release("spawn-failed")
            raise

    def _configure_container(self, request, grant) -> None:
        site = self.site
        labels = {
            lb.MANAGED: "1",
            lb.HUB: self.hub_instance,
            lb.USER: self.user.name,
            lb.SERVER: self.name,
            lb.ORG: request.org or "",
            lb.IMAGE: request.image,
            lb.GPUS: ",".join(grant.devices),
            lb.GPU_MODEL: grant.model or "",
        }
        self.extra_create_kwargs = {"labels": labels}
        box = site.containers
        host = {
            # Keep a dead container until we have read its FinishedAt (stop() still removes it):
            # the ledger closes the interval at Docker's own finish time, even after a hub outage.
            "auto_remove": False,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": box.pids_limit,
            "privileged": False,
            "read_only": box.read_only_root,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=1g"},
        }
        if site.gpus.runtime == "nvidia" and grant.devices:
            host["device_requests"] = [
                docker.types.DeviceRequest(driver="nvidia", device_ids=list(grant.devices), capabilities=[["gpu"]])
            ]
        self.extra_host_config = host
        self.mem_limit = box.mem_limit
        self.cpu_limit = box.cpu_limit

    async def _take_start_slot(self) -> None:
        gate = self.start_gate
        if gate.locked():
            self._emit(33, f"Waiting for a start slot: {GpuhubSpawner._queued} other server(s) queued, "
                           "servers start a few at a time so each is ready sooner")
        GpuhubSpawner._queued += 1
        try:
            await gate.acquire()
        finally:
            GpuhubSpawner._queued -= 1

    async def _ensure_home(self, uid: int) -> None:
        """Create the home volume owned by the user's UID (a one-shot root container chowns it).

        Runs only when the volume is new or was owned by another UID, so later starts cost nothing.
        It works the same with the hub on the host and in a container (docker.sock only).
        """
        volume = next((name for name, spec in self.volume_binds.items() if spec["bind"] == self.notebook_dir), None)
        if volume is None:
            return
        try:
            info = await self.docker("inspect_volume", volume)
            if (info.get("Labels") or {}).get(lb.UID) == str(uid):
                return
        except docker.errors.NotFound:
            pass
        self._emit(30, "Preparing your home folder")
        try:
            await self.docker("create_volume", volume, labels={lb.UID: str(uid), lb.USER: self.user.name,
                                                               lb.HUB: self.hub_instance})
        except docker.errors.APIError:
            pass  # exists (unlabelled, from an older setup): chown it below all the same
        # The marker file keeps the volume non-empty: Docker copies the image's folder (and its
        # owner) into an EMPTY volume at every mount, which would undo the chown.
        await self._run_as_root(
            ["sh", "-c", f'touch "$0/.gpuhub-home" && chown -R {uid}:{uid} "$0"', self.notebook_dir],
            binds={volume: {"bind": self.notebook_dir, "mode": "rw"}}, cap_add=["CHOWN", "FOWNER", "DAC_OVERRIDE"],
            what=f"the home volume {volume} for UID {uid}")

    async def _run_as_root(self, command: list[str], *, binds: dict, cap_add: list[str], what: str,
                           environment: dict | None = None) -> None:
        """A one-shot root container of the server's image that prepares volumes: no network, only
        the capabilities named, removed afterwards. Its failure fails the spawn with its log."""
        host = self.client.create_host_config(binds=binds, network_mode="none", cap_drop=["ALL"], cap_add=cap_add,
                                              security_opt=["no-new-privileges"])
        box = await self.docker("create_container", image=self.image, user="0", host_config=host, command=command,
                                environment=environment, labels={lb.HUB: self.hub_instance, lb.INIT: "1"})
        try:
            await self.docker("start", box["Id"])
            result = await self.docker("wait", box["Id"], timeout=120)
            if result.get("StatusCode") != 0:
                logs = (await self.docker("logs", box["Id"], tail=20)).decode(errors="replace")
                self.log.error("%s: preparing %s failed: %s", self._log_name, what, logs)
                raise web.HTTPError(500, f"could not prepare {what}")
        finally:
            await self.docker("remove_container", box["Id"], force=True)

    # ------------------------------------------------------------ courses hook (gpuhub.hub.courses)

    async def _prepare_courses(self, uid: int) -> None:
        """nbgrader courses: sync the user's course groups, mount the course volumes, add the
        instructors' course GIDs, and prepare the volumes (:meth:`_ensure_course_volumes`)."""
        from gpuhub.hub import courses

        site = self.site
        self._course_env = {}
        if not site.courses:
            return
        added, removed = courses.sync_hub_groups(self.user, site, self._groups())
        if added or removed:
            self.log.info("%s: course groups +%s -%s", self._log_name, sorted(added), sorted(removed))
        plan = courses.container_plan(site, self.user.name, uid, self._groups(), self.hub_instance, self._request.org,
                                      server_name=self.name)
        if plan is None:
            return
        self.extra_host_config.setdefault("binds", {}).update(plan.binds)  # merged with the home bind
        if plan.group_add:
            self.extra_host_config["group_add"] = plan.group_add
        self._course_env = dict(plan.env)
        await self._ensure_course_volumes(plan)

    async def _ensure_course_volumes(self, plan) -> None:
        """One-shot root container (no network; CHOWN, FOWNER, DAC_OVERRIDE, FSETID only) that lays
        out the course volumes with their owners and modes, registers the user's UID in each
        exchange and writes the nbgrader config. Idempotent; runs at every course member's start."""
        from gpuhub.hub.courses import INIT_CAPS

        self._emit(32, f"Preparing course files ({', '.join(sorted(plan.courses))})")
        for volume, labels in plan.volume_labels.items():
            try:
                await self.docker("create_volume", volume, labels=labels)
            except docker.errors.APIError:
                pass  # exists
        await self._run_as_root(plan.init_command, binds=plan.init_binds, cap_add=INIT_CAPS,
                                environment=plan.init_env,
                                what=f"the course volumes for {', '.join(sorted(plan.courses))}")

    async def _wait_until_ready(self, ip: str, port: int) -> None:
        """Probe with a bare TCP connect (cheap while refused), then one HTTP GET once the port is open.

        Twenty servers starting at once on two cores are CPU-bound, so the probe itself must cost
        next to nothing; a full HTTP request every 50 ms per server would not.
        """
        url = f"http://{ip}:{port}{self.server.base_url}api"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 1)
                writer.close()
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(self.ready_poll_interval)
                continue
            try:
                await client.fetch(url, request_timeout=5, follow_redirects=False)
                return
            except HTTPClientError as e:
                if e.code < 599:  # any HTTP answer means the server is up
                    return
            except OSError:
                pass
            await asyncio.sleep(self.ready_poll_interval)
        # Let the hub's own wait_up report the timeout in its usual words.

    async def stop_object(self):
        """``docker stop`` with the site's grace period (DockerSpawner waits Docker's default 10 s)."""
        try:
            await self.docker("stop", self.container_id, timeout=self.site.containers.stop_timeout_seconds)
        except docker.errors.NotFound:
            self.log.debug("container %s already removed", self.object_id)

    async def progress(self):
        sent = 0
        while self._spawn_pending or sent < len(getattr(self, "_events", [])):
            events = getattr(self, "_events", [])
            while sent < len(events):
                yield events[sent]
                sent += 1
            await asyncio.sleep(0.1)

    async def poll(self):
        obj = await self.get_object()
        if not obj:
            await self._release("container-missing")
            return 0
        state = obj["State"]
        if state["Running"]:
            return None
        await self._release("container-exited", at=docker_time(state.get("FinishedAt")))
        return f"ExitCode={state.get('ExitCode')}, Error='{state.get('Error', '')}'"

    async def stop(self, now=False):
        try:
            if self.object_id:
                await super().stop(now=now)
            else:
                self.clear_state()
        finally:
            await self._release("stopped")
            self.gpu_uuids = []

    async def _remove_failed_container(self) -> None:
        """A container that was created but never ran is not "running", so JupyterHub's stop
        path (which polls first) would leave it behind; remove it here (dockerspawner#182)."""
        if not self.object_id:
            return
        try:
            await self.docker("remove_container", self.object_id, v=True, force=True)
        except docker.errors.APIError as e:
            self.log.warning("could not remove failed container %s: %s", self.object_name, e)
        self.object_id = ""

    async def _release(self, reason: str, at: datetime | None = None) -> None:
        try:
            await asyncio.to_thread(self.quota.release, self.server_key, at or _utcnow(), reason)
            runtime.forget_status(self.site_config)
        except Exception:
            # The reconciler closes it from Docker's own times once the database is back.
            self.log.exception("could not release %s (%s); the reconciler will close it", self.server_key, reason)

    async def _record_refusal(self, rule: str, org) -> None:
        try:
            await asyncio.to_thread(self.quota.record_refusal, org if isinstance(org, str) else None, rule)
        except Exception:
            self.log.warning("could not count refusal %s for %s", rule, self.server_key)
