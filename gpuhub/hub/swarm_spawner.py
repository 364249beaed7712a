"""GpuhubSwarmSpawner: ``hub.engine: swarm`` — each server a Swarm service, on the node our allocator picked.

It is :class:`gpuhub.hub.spawner.GpuhubSpawner` (the same admission, quota grant, labels, env, operator layer and
``user_options`` contract) over dockerspawner's :class:`~dockerspawner.SwarmSpawner` (services instead of
containers). What differs, and why:

- **Placement.** The quota store, with the cluster's offers (:class:`quota.swarm_cluster.SwarmOffers`), picks the
  node and the UUIDs in the allocation transaction (``Grant.node_id``); the service is constrained to that node
  (``node.id==…``). Swarm's generic resources are not used: they reserve by count and pick the UUID themselves, so
  they could not agree with our ledger. A CPU server goes to an offering node chosen by its server key.
- **The service** (:func:`gpuhub.hub.swarm_service.service_spec`): our hardening translated to what services
  carry (the table there), restart condition ``none``, ``GPUHUB_NODE`` in the env and ``gpuhub.node`` in labels.
- **The home volume** lives on the node that runs the server: a one-shot job service on that node (root, only
  CHOWN/FOWNER/DAC_OVERRIDE, no network) gives it to the user's UID before the server starts. A node-local volume
  does not follow a user to another node: a production swarm mounts homes from shared storage (an NFS volume:
  ``volume_driver_options``), the same as SwarmSpawner's own advice.
- **Reaching the server**: the node's address and the port the task published in ``host`` mode
  (``server_address = "node-port"``, for a hub outside the overlay), or the task's own overlay address
  (``"overlay"``, for a hub that runs as a service on the overlay).
- **Isolation** (issue 19, item 4): with ``node-port`` a server joins no overlay — its task sits on its node's
  default bridge and is reached only through its published port, which each node's firewall (DOCKER-USER,
  written by ``scripts/swarm.sh up``) opens to the hub's host alone and which it closes between containers on
  the node. One shared overlay would let every server open every other server's port (overlays have no
  inter-container switch, moby/libnetwork#1858). With ``overlay`` the servers share ``hub.network`` and only
  the single-user server's token check stands between them: docs/scaling.md.
- **Not there yet** in swarm mode: project servers and course volumes (refused with the reason).
"""

from __future__ import annotations

import asyncio
import time
import zlib

import docker
from dockerspawner import SwarmSpawner
from tornado import web
from traitlets import Float, Unicode

from gpuhub.core import labels as lb
from gpuhub.hub import swarm_service
from gpuhub.hub.spawner import GpuhubSpawner
from quota.swarm_cluster import task_view

FAILED_TASK_STATES = frozenset({"failed", "rejected", "shutdown", "complete", "orphaned", "remove"})


class GpuhubSwarmSpawner(GpuhubSpawner, SwarmSpawner):
    """One Swarm service per server, constrained to the node that owns its GPUs."""

    server_address = Unicode(
        "node-port",
        help="""How the hub and proxy reach a server: ``node-port`` — the node's address and the port the task
        published in host mode (the hub outside the overlay, e.g. on a manager host); ``overlay`` — the task's
        address on the overlay network (the hub itself a service on that overlay).""",
    ).tag(config=True)

    home_job_timeout = Float(
        120.0, help="Seconds the one-shot job that gives a new home volume to the user's UID may take on its node."
    ).tag(config=True)

    node_id = Unicode("", help="The Swarm node this server runs on (persisted with get_state).")
    node = Unicode("", help="Its hostname (GPUHUB_NODE, label gpuhub.node).")

    # ------------------------------------------------------------ state

    def load_state(self, state):
        super().load_state(state)
        self.node_id, self.node = state.get("node_id", ""), state.get("node", "")

    def get_state(self):
        state = super().get_state()
        if self.object_id:
            state.update(node_id=self.node_id, node=self.node)
        return state

    def clear_state(self):
        super().clear_state()
        self.node_id = self.node = ""

    def get_env(self):
        env = super().get_env()
        env["GPUHUB_NODE"] = self.node
        return env

    # ------------------------------------------------------------ placement

    def _choose_node(self) -> None:
        """The grant's node; for a CPU server (no grant node) an offering node, spread by server key."""
        if self.grant is not None and self.grant.node_id:
            self.node_id, self.node = self.grant.node_id, self.grant.node or ""
            return
        offers = list(self.quota.offers()) if self.quota.offers else []
        if self.grant is not None and self.grant.devices:  # a grant made without offers (the queue's): by its UUIDs
            owners = {o for o in offers for d in o.devices if d.uuid in self.grant.devices}
            if len(owners) != 1:
                raise web.HTTPError(
                    500, f"GPUs {', '.join(self.grant.devices)} are not all on one offering node; ask an operator"
                )
            (owner,) = owners
            self.node_id, self.node = owner.node_id, owner.hostname
            return
        offers = [o for o in offers if o.available]
        if not offers:
            raise web.HTTPError(
                503, "no Swarm node takes servers now (all are drained, paused or down); ask an operator"
            )
        pick = sorted(offers, key=lambda o: (o.hostname, o.node_id))[zlib.crc32(self.server_key.encode()) % len(offers)]
        self.node_id, self.node = pick.node_id, pick.hostname

    async def _prepare_courses(self, uid: int) -> None:
        if self.site.courses:
            self.log.warning("%s: course volumes are not mounted in swarm mode (hub.engine: swarm)", self._log_name)
        self.course_plan = None

    async def _ensure_home(self, uid: int, labels: dict | None = None) -> None:
        """The home volume on the server's node, owned by ``uid``: a one-shot job service there (cheap when the
        volume is already the user's: the job only compares the owner)."""
        if self.project_plan is not None:
            raise web.HTTPError(501, "project servers are not available with hub.engine: swarm yet; ask an operator")
        self._choose_node()
        volume = next((n for n, s in self.volume_binds.items() if s["bind"] == self.notebook_dir), None)
        if volume is None:
            return
        self.emit(30, "Preparing your home folder")  # a catalog msgid: the page shows it in the user's language
        home = self.notebook_dir
        script = f'[ "$(stat -c %u "$0")" = {uid} ] || {{ touch "$0/.gpuhub-home" && chown -R {uid}:{uid} "$0"; }}'
        spec = {
            "ContainerSpec": {
                "Image": self.image,
                "Command": ["sh", "-c", script, home],
                "User": "0:0",
                "Mounts": [{"Type": "volume", "Source": volume, "Target": home}],
                "CapabilityDrop": ["ALL"],
                "CapabilityAdd": ["CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE"],
                "Labels": {lb.MANAGED: "1", lb.HUB: self.hub_instance, lb.UID: str(uid)},
            },
            "RestartPolicy": {"Condition": "none"},
            "Placement": {"Constraints": [f"node.id=={self.node_id}"]},
        }
        name = f"{self.object_name}-home"
        await self._remove_service_quietly(name)
        service = await self.docker("create_service", spec, name=name, labels={lb.HUB: self.hub_instance})
        try:
            await self._wait_job(service["ID"], f"the home volume {volume} for UID {uid} on {self.node}")
        finally:
            await self._remove_service_quietly(service["ID"])

    async def _wait_job(self, service_id: str, what: str) -> None:
        deadline = time.monotonic() + self.home_job_timeout
        while time.monotonic() < deadline:
            tasks = await self.docker("tasks", filters={"service": service_id})
            status = (tasks[0].get("Status") or {}) if tasks else {}
            if status.get("State") == "complete":
                return
            if status.get("State") in FAILED_TASK_STATES:
                raise self._task_failed(status, f"could not prepare {what}")
            await asyncio.sleep(0.2)
        raise web.HTTPError(500, f"preparing {what} took over {self.home_job_timeout:.0f} s; " + self._fix())

    def _task_failed(self, status: dict, what: str) -> web.HTTPError:
        """The error for a failed task. The manager cannot list a worker's images (no Engine API for it), so the
        node itself checks: the first task on the node with the server's image (the home job, before the server's
        own service; else the server's task) is rejected at once with "No such image" when the image was never
        loaded there (pull_policy never: no registry). That one gets its own 503 naming the node and the fix."""
        err = status.get("Err") or ""
        if "No such image" in err:
            return web.HTTPError(
                503,
                f"the image {self.image} is not on the Swarm node {self.node} (rule: every node has every catalog "
                f"image; the node said: {err}); an operator copies it there: gpuhub images push-to-nodes {self.image} "
                f"(on the demo swarm: scripts/swarm.sh load {self.image}), then start again",
            )
        return web.HTTPError(500, f"{what}: {err or status}; {self._fix()}")

    def _fix(self) -> str:
        return (
            f"check that node {self.node} has the image {self.image} (gpuhub images push-to-nodes {self.image}) "
            f"and is ready (gpuhub node list)"
        )

    async def _remove_service_quietly(self, ref: str) -> None:
        try:
            await self.docker("remove_service", ref)
        except docker.errors.NotFound:
            pass

    # ------------------------------------------------------------ the service

    async def create_object(self):
        """The service: DockerSpawner's arguments, the operator's layer (checked in start), ours last, translated
        to a service spec pinned to the node (gpuhub.hub.swarm_service)."""
        ours_create, ours_host = self._our_container()
        from gpuhub.hub.container import deep_merge

        create = {"labels": {}}
        host = {"binds": self.volume_binds}
        deep_merge(create, self.operator_container.get("create", {}))
        deep_merge(create, ours_create)
        deep_merge(host, self.operator_container.get("host", {}))
        deep_merge(host, ours_host)
        spec = swarm_service.service_spec(
            name=self.object_name,
            image=self.image,
            env=self.get_env(),
            args=await self.get_command(),
            create=create,
            host=host,
            node_id=self.node_id,
            node=self.node,
            network=(self.network_name or None) if self.server_address == "overlay" else None,
            port=self.port,
            stop_grace_seconds=self.site.containers.stop_timeout_seconds,
        )
        self.log.debug("Creating service %s on %s", self.object_name, self.node)
        return await self.docker("create_service", **spec)

    async def start_object(self):
        """Wait until the task runs; a task that fails or is rejected fails the start at once with its reason."""
        dt = 0.1
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            task = await self.get_task()
            status = (task or {}).get("Status") or {}
            state = status.get("State", "")
            if state == "running":
                return
            if state in FAILED_TASK_STATES:
                raise self._task_failed(status, f"the server's task on {self.node} {state}")
            await asyncio.sleep(dt)
            dt = min(dt * 1.5, 1.0)
        raise web.HTTPError(
            500, f"the server's task on {self.node} did not start in {self.start_timeout} s; {self._fix()}"
        )

    async def get_ip_and_port(self):
        task = await self.get_task()
        if self.server_address == "overlay":
            for att in task.get("NetworksAttachments") or []:
                if att["Network"]["Spec"]["Name"] == self.network_name and att.get("Addresses"):
                    return att["Addresses"][0].split("/")[0], self.port
            raise web.HTTPError(500, f"the server's task has no address on {self.network_name}")
        ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
        published = next((p["PublishedPort"] for p in ports if p.get("TargetPort") == self.port), None)
        node = await self.docker("inspect_node", task["NodeID"])
        addr = (node.get("Status") or {}).get("Addr")
        if not published or not addr:
            raise web.HTTPError(500, f"the server's task on {self.node} published no port {self.port} ({ports})")
        return addr, published

    async def stop_object(self):
        """Nothing: removing the service (remove_object) stops its task with the site's grace period."""

    async def poll(self):
        task = await self.get_task()
        if task is None:
            await self._release("container-missing")
            return 0
        nodes = {task["NodeID"]: await self.docker("inspect_node", task["NodeID"])} if task.get("NodeID") else {}
        view = task_view(self.object_name, {}, task, nodes)
        if view.running:
            return None
        await self._release("container-exited", at=view.finished_at)
        # JupyterHub calls stop() only for a server that still runs, so a finished server's service would stay
        # (a dead node's task record with it); its end is recorded, so it goes now and the node, when it returns,
        # removes the task's container
        await self._remove_service_quietly(self.object_id or self.object_name)
        status = task.get("Status") or {}
        return f"task {status.get('State')} on {self.node}: {status.get('Err') or status.get('Message', '')}"

    async def _remove_failed_container(self) -> None:
        if self.object_id:
            await self._remove_service_quietly(self.object_id)
            self.object_id = ""
