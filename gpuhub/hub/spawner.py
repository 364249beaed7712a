"""GpuhubSpawner: DockerSpawner that gives each server exactly the GPUs it was allocated.

A thin adapter: ``user_options`` are parsed by :mod:`gpuhub.hub.options`, the request is decided by
:mod:`quota.policy` and devices are taken by the quota store in one transaction; then DockerSpawner
creates the container with our labels, limits, hardening and (for ``runtime: nvidia``) a device
request by UUID, merged over the operator's own DockerSpawner config (:mod:`gpuhub.hub.container`).
A refusal answers with its HTTP status, the sentence as the message and the rule id in the
``X-Gpuhub-Rule`` header (JupyterHub's API copies an ``HTTPError``'s ``headers`` onto the answer).
Docker API calls run on a shared thread pool instead of DockerSpawner's single worker thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from datetime import UTC, datetime

import docker
from dockerspawner import DockerSpawner
from jupyterhub.utils import maybe_future
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Bool, Dict, Float, Instance, Integer, List, Unicode, default

from gpuhub.core.keys import server_key
from gpuhub.core.naming import container_name
from gpuhub.host.dockerenv import docker_time
from gpuhub.hub import courses, i18n, lab_locale, projects, queue_wait, runtime, volumes
from gpuhub.hub.container import (
    HOME_VOLUME,
    OperatorConfigError,
    configured_in,
    deep_merge,
    operator_layer,
    our_layer,
)
from gpuhub.hub.form import render_options_form
from gpuhub.hub.options import options_from_form, validate_options
from gpuhub.hub.pages import group_names
from quota.policy import AllocationRequest, Refusal
from quota.store import Grant, QuotaUnavailable

RULE_HEADER = "X-Gpuhub-Rule"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def refusal_error(refusal: Refusal) -> web.HTTPError:
    """The HTTP answer to a refusal: its status, its sentence, its rule id in the ``X-Gpuhub-Rule`` header."""
    error = web.HTTPError(refusal.status, refusal.message, reason=refusal.rule)
    error.headers = {RULE_HEADER: refusal.rule}  # JupyterHub's write_error sets these (User.spawn resets reason)
    return error


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

    cpu_shares = Integer(
        help="""Docker CPU shares (relative CPU weight under contention) of each user container.
        Default: the site config's ``containers.cpu_shares`` (512: a user container weighs half of
        the hub and the system services, which run at Docker's 1024).""",
    ).tag(config=True)

    # -- per-server state (one spawner per server); gpu_uuids is persisted with get_state/load_state
    gpu_uuids = List(Unicode(), help="UUIDs of the devices this server holds (the quota store's grant).")
    spawn_request = Instance(
        AllocationRequest,
        allow_none=True,
        help="This start's request as quota.policy checked it (org and image resolved).",
    )
    grant = Instance(Grant, allow_none=True, help="What the quota store granted this start.")
    uid = Integer(None, allow_none=True, help="The user's numeric UID (quota store), for the container and volumes.")
    course_plan = Instance(
        courses.ContainerPlan,
        allow_none=True,
        help="The user's course mounts, groups and env for this server (gpuhub.hub.courses).",
    )
    project_plan = Instance(projects.ProjectPlan, allow_none=True, help="A project server's room (hub.projects).")
    project_key = Unicode("", help="This server's project ('' for an ordinary one); persisted with get_state.")
    project_route = Unicode("", help="A project server's prefix in the download filter's routes (persisted).")
    operator_container = Dict(
        help="""This start's operator layer: the evaluated ``extra_create_kwargs``
        (``create``) and ``extra_host_config`` (``host``), checked by gpuhub.hub.container.operator_problems."""
    )
    progress_events = List(Dict(), help="Spawn progress events of this start, for progress().")

    _pool: ThreadPoolExecutor | None = None
    _start_gate: asyncio.Semaphore | None = None
    _queued = 0  # spawns waiting for a start slot, for the progress message
    _noted: set[str] = set()  # operator settings already logged (once per process)

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

    @default("mem_limit")
    def _default_mem_limit(self):
        return self.site.containers.mem_limit

    @default("cpu_limit")
    def _default_cpu_limit(self):
        return self.site.containers.cpu_limit

    @default("cpu_shares")
    def _default_cpu_shares(self):
        return self.site.containers.cpu_shares

    @property
    def site(self):
        return runtime.site(self.site_config)

    @property
    def quota(self):
        return runtime.quota_store(self.site_config)

    @property
    def server_key(self) -> str:
        return server_key(self.user.name, self.name)

    def _groups(self) -> frozenset[str]:
        return group_names(self.user)

    def emit(self, progress: int, message: str) -> None:
        """Add a spawn progress event (shown on the progress page) and log it."""
        self.log.info("%s: %s", self._log_name, message)
        # in the language of the request that started the spawn (gpuhub.hub.i18n); the log stays English
        self.progress_events.append({"progress": progress, "message": i18n.progress_for(self.handler, message)})

    async def _quota_call(self, fn, *args):
        """Run a quota-store call off the event loop; an unreachable DB fails GPU spawns closed."""
        try:
            return await asyncio.to_thread(fn, *args)
        except Refusal as e:
            raise refusal_error(e) from None
        except QuotaUnavailable as e:
            raise web.HTTPError(503, str(e)) from None

    # ------------------------------------------------------------ form

    @default("options_form")
    def _default_options_form(self):
        return render_options_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # start() parses and applies user_options itself (gpuhub.hub.options); nothing to map here
        return lambda spawner, options: None

    @default("options_from_form")
    def _default_options_from_form(self):
        # JupyterHub calls options_from_form(formdata, spawner=...)
        return lambda formdata, spawner=None: options_from_form(formdata)

    # ------------------------------------------------------------ state

    def load_state(self, state):
        super().load_state(state)
        self.gpu_uuids = list(state.get("gpu_uuids", []))
        self.project_key, self.project_route = state.get("project", ""), state.get("project_route", "")

    def get_state(self):
        state = super().get_state()
        if self.object_id:
            state["gpu_uuids"] = list(self.gpu_uuids)
            if self.project_key:
                state.update(project=self.project_key, project_route=self.project_route)
        return state

    def clear_state(self):
        super().clear_state()
        self.gpu_uuids = []
        self.spawn_request = self.grant = self.uid = self.course_plan = self.project_plan = None
        self.project_key = self.project_route = ""
        self.operator_container = {}

    def get_env(self):
        env = super().get_env()
        uuids = list(self.gpu_uuids)
        # Ours alone: the container env overrides any image ENV, and users cannot pass env.
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(uuids) if uuids else "void"
        # Inside the container the granted GPUs are numbered 0..n-1; an image's own value is replaced.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(uuids)))
        env["GPUHUB_GPUS"] = ",".join(uuids)
        env["GPUHUB_ORG"] = (self.spawn_request.org or "") if self.spawn_request else ""
        if self.course_plan is not None:  # courses hook: JUPYTER_CONFIG_PATH, GPUHUB_COURSES
            env.update(self.course_plan.env)
        env.update(projects.airlock_env(self))  # GPUHUB_AIRLOCK_URL beside the hub API (gpuhub-import)
        if self.project_plan is not None:  # projects hook: GPUHUB_PROJECT, GPUHUB_AIRLOCK_URL, JUPYTER_CONFIG_PATH
            env.update(self.project_plan.env)
        return env

    # ------------------------------------------------------------ operator config

    @property
    def volume_binds(self):
        """DockerSpawner's binds from ``volumes`` / ``read_only_volumes``, and always the user's home volume
        at ``notebook_dir`` (config that replaces ``volumes`` adds to it instead of dropping the home). A project
        server gets its plan's binds only: the project home, the datasets read-only, the lab config."""
        if self.project_plan is not None:
            return dict(self.project_plan.binds)
        binds = super().volume_binds
        return {**binds, **self._volumes_to_binds({HOME_VOLUME: self.notebook_dir}, {})}

    async def _check_operator_config(self) -> None:
        """The operator's layer for this start, or refuse the start (500: the hub's config is wrong, not the
        user's request) naming each key that cannot be merged with ours."""
        try:
            self.operator_container = await operator_layer(self)
        except OperatorConfigError as e:
            self.log.error("%s: the JupyterHub config cannot be merged with gpuhub's: %s", self._log_name, e)
            message = f"this hub's JupyterHub config is refused; ask an operator to fix it: {e}"
            raise web.HTTPError(500, message) from None
        for name in ("mem_limit", "cpu_limit", "cpu_shares"):
            source = configured_in(self, name)
            if source and source not in GpuhubSpawner._noted:
                GpuhubSpawner._noted.add(source)
                self.log.info(
                    "%s = %r from the JupyterHub config is used instead of the site config's containers.%s",
                    source,
                    getattr(self, name),
                    name,
                )

    def _our_container(self) -> tuple[dict, dict]:
        """Our create arguments and host config for this start (gpuhub.hub.container.our_layer)."""
        period = self.operator_container.get("host", {}).get("cpu_period", 100_000)
        return our_layer(
            self.site,
            self.spawn_request,
            self.grant,
            hub_instance=self.hub_instance,
            user=self.user.name,
            server_name=self.name,
            uid=self.uid,
            network=self.project_plan.network.name if self.project_plan else self.network_name,
            mem_limit=self.mem_limit,
            cpu_limit=self.cpu_limit,
            cpu_shares=self.cpu_shares,
            cpu_period=period,
            plan=self.course_plan,
            project=self.project_plan,
        )

    async def create_object(self):
        """The container: DockerSpawner's arguments, the operator's layer (checked in start), ours last."""
        ours_create, ours_host = self._our_container()
        create = dict(
            image=self.image,
            environment=self.get_env(),
            volumes=self.volume_mount_points,
            name=self.container_name,
            command=await self.get_command(),
            ports={f"{self.port}/tcp": None},
        )
        host = dict(binds=self.volume_binds, links=self.links, mounts=self.mount_binds)
        if not self.use_internal_ip:
            host["port_bindings"] = {self.port: (self.host_ip,)}
        deep_merge(create, self.operator_container.get("create", {}))
        deep_merge(create, ours_create)
        deep_merge(host, projects.operator_host(self.project_plan, host, self.operator_container.get("host", {})))
        deep_merge(host, ours_host)
        self.log.debug("Creating %s with host config %s", self.object_name, host)
        create["host_config"] = self.client.create_host_config(**host)
        return await self.docker("create_container", **create)

    # ------------------------------------------------------------ lifecycle

    async def start(self):
        self.progress_events = queue_wait.events_of_this_spawn(self)  # GPU queue hook: its place-in-line events
        site = self.site
        self.emit(5, "Checking your request")
        await self._check_operator_config()
        try:
            options, project = await projects.admit_options(self, self.user_options)  # projects hook, before allocating
            request = validate_options(options, site, user=self.user.name, server_name=self.name, groups=self._groups())
        except Refusal as e:
            org = self.user_options.get("org") if isinstance(self.user_options, dict) else None
            await self._record_refusal(e, org)
            raise refusal_error(e) from None
        self.spawn_request = request
        spec = site.images[request.image]
        self.image = spec.image
        what = f"{request.gpus} GPU{'s' if request.gpus != 1 else ''}"
        self.emit(15, f"Allocating {what} for {request.org or 'no organization'}")
        grant = await self._quota_call(queue_wait.take_grant, self, request)  # GPU queue hook (direct or granted)
        runtime.forget_status(self.site_config)
        self.grant, self.gpu_uuids = grant, list(grant.devices)
        if grant.devices:
            self.emit(25, f"Allocated {grant.model} {', '.join(grant.devices)} to {request.org}")
        for warning in grant.warnings:
            self.emit(27, warning)
        try:
            self.uid = await self._quota_call(self.quota.uid_for, self.user.name)
            if project is not None:  # projects hook: the room instead of the home, courses and user network
                await projects.prepare(self, project, self.uid)
            await self._ensure_home(self.uid, self.project_plan.labels if self.project_plan else None)
            if project is None:
                await self._prepare_courses(self.uid)  # courses hook (gpuhub.hub.courses)
            await self._take_start_slot()
            try:
                self.emit(35, f"Creating and starting container from {spec.display_name}")
                try:
                    ip, port = await super().start()
                except docker.errors.APIError as e:
                    if site.gpus.runtime == "nvidia" and grant.devices:
                        raise web.HTTPError(
                            503,
                            f"Docker could not hand GPUs {', '.join(grant.devices)} to the container "
                            f"({e.explanation or e}); this host needs the NVIDIA container toolkit for "
                            "gpus.runtime: nvidia — ask an operator (or use runtime: none for simulated GPUs)",
                        ) from None
                    raise
                if self.wait_ready:
                    self.emit(70, "Waiting for JupyterLab to answer")
                    await self._wait_until_ready(ip, port)
                    await lab_locale.select(self, ip, port)  # i18n hook: JupyterLab in the hub language
            finally:
                self.start_gate.release()
            if self.project_plan is not None:  # projects hook: CHP reaches the server only through the filter
                ip, port = await projects.after_start(self, self.project_plan, ip, port)
            self.emit(90, "Server is ready")
            return ip, port
        except BaseException:
            await self._remove_failed_container()
            await self._release("spawn-failed")
            await projects.after_stop(self, self.project_key, self.project_route, "spawn-failed", audit=False)
            raise

    async def run_pre_spawn_hook(self):
        await queue_wait.before_start(self)  # GPU queue hook: waits in line here, before start_timeout's clock
        return await maybe_future(super().run_pre_spawn_hook())

    async def run_post_stop_hook(self):
        await queue_wait.after_stop(self)  # GPU queue hook: a stopped or cancelled pending server leaves the line
        return await maybe_future(super().run_post_stop_hook())

    async def _ensure_home(self, uid: int, labels: dict | None) -> None:
        await volumes.ensure_home(self, uid, labels)  # GpuhubSwarmSpawner: on the server's node instead

    async def _take_start_slot(self) -> None:
        gate = self.start_gate
        if gate.locked():
            self.emit(
                33,
                f"Waiting for a start slot: {GpuhubSpawner._queued} other server(s) queued, "
                "servers start a few at a time so each is ready sooner",
            )
        GpuhubSpawner._queued += 1
        try:
            await gate.acquire()
        finally:
            GpuhubSpawner._queued -= 1

    # ------------------------------------------------------------ courses hook (gpuhub.hub.courses)

    async def _prepare_courses(self, uid: int) -> None:
        """nbgrader courses: sync the user's course groups, plan the course volumes and the instructors'
        course GIDs for this container (:meth:`_our_container`), and prepare the volumes."""
        site = self.site
        self.course_plan = None
        if not site.courses:
            return
        added, removed = courses.sync_hub_groups(self.user, site, self._groups())
        if added or removed:
            self.log.info("%s: course groups +%s -%s", self._log_name, sorted(added), sorted(removed))
        self.course_plan = courses.container_plan(
            site, self.user.name, uid, self._groups(), self.hub_instance, self.spawn_request.org, server_name=self.name
        )
        if self.course_plan is not None:
            await volumes.ensure_course_volumes(self, self.course_plan)

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
            except (TimeoutError, OSError):
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

    async def _generate_progress(self):
        """JupyterHub's progress stream, its own first event ("Server requested") in the user's language too."""
        async with aclosing(super()._generate_progress()) as events:
            async for event in events:
                if event.get("message") == "Server requested":
                    event = {**event, "message": i18n.progress_for(self.handler, event["message"])}
                yield event

    async def progress(self):
        sent = 0
        while self._spawn_pending or sent < len(self.progress_events):
            events = self.progress_events
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
        key, route = self.project_key, self.project_route
        try:
            if self.object_id:
                await super().stop(now=now)
            else:
                self.clear_state()
        finally:
            await self._release("stopped")
            self.gpu_uuids = []
            await projects.after_stop(self, key, route, "stopped")  # projects hook: route removed, audited

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

    async def _record_refusal(self, refusal: Refusal, org) -> None:
        try:
            org = org if isinstance(org, str) else None
            await asyncio.to_thread(self.quota.record_refusal, org, refusal, self.user.name)  # + this month's event
        except Exception:
            self.log.warning("could not count refusal %s for %s", refusal.rule, self.server_key)
