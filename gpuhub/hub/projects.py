"""Project servers (issue 13): a server of a secure project, in its closed room.

A project server is the named server ``KEY`` of a member of project ``KEY``, requested with ``"project": KEY``
(and, the first time and after every change of the text, ``"accept_dua": <sha256 of the DUA text>``). What the
spawner does for it, in order (:class:`gpuhub.hub.spawner.GpuhubSpawner` calls the steps below):

1. :func:`admit`, before any allocation or container: :func:`quota.projects.check_project` (membership with the
   stewards' overlay, open dates, image, server name, organization, DUA acceptance); a refusal is the 4xx with its
   rule id. A matching ``accept_dua`` is recorded (time, text hash, source address; audit ``dua.accepted``).
2. :func:`prepare`, after the allocation: the project network ``--internal`` with the host firewall
   (:mod:`gpuhub.host.project_network`), the datasets checked, the JupyterLab config written; the result is a
   :class:`ProjectPlan`: what the container gets INSTEAD of the ordinary home, course mounts, operator volumes
   and the user network: the project home volume ``<instance>-project-KEY-user-UID`` at the home folder, each
   dataset read-only at ``/data/NAME`` (bind for an absolute host path, else a Docker volume), the lab config
   read-only (download menu items hidden: cosmetic, the real block is the download filter), ``dns`` pinned to
   the project gateway, the hub API through the gateway's DNAT (``hub_connect_url``), env ``GPUHUB_PROJECT``,
   and gpuhub-airlock through a second door of the same kind (env ``GPUHUB_AIRLOCK_URL``, for export requests).
3. :func:`after_start`: the default route deleted in the server's network namespace, the route
   ``/user/NAME/KEY/ -> http://IP:8888`` written into the download filter's routes file, audit ``server.started``
   and one ``dataset.mounted`` per dataset. ``start()`` then returns ``(127.0.0.1, hub.project_proxy_port)``:
   JupyterHub's proxy sends the server's traffic only to the download filter (nginx), which alone knows the
   server's address.
4. :func:`after_stop`: the route removed, audit ``server.stopped``.

The spawn form's project picker and the home page's expiry notices are :mod:`gpuhub.hub.project_pages`.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import docker
from sqlalchemy.exc import SQLAlchemyError
from tornado import web

from gpuhub.core.periods import utcnow
from gpuhub.core.projects import Project
from gpuhub.core.site import Site
from gpuhub.host import project_network as pn
from gpuhub.host.dockerenv import docker_client
from gpuhub.host.project_proxy import ProxyPaths, RoutesFile, limit_bytes
from gpuhub.hub.options import project_option
from quota import projects as qp
from quota.project_store import ProjectStore

DATA_ROOT = "/data"
AIRLOCK_SERVICE = "gpuhub-airlock"  # gpuhub.hub.airlock_service.SERVICE (registered for every site with projects)
LAB_CONFIG_DIR = "/srv/gpuhub/project-config"  # on JUPYTER_CONFIG_PATH in project servers (read-only)
LAB_CONFIG_HOST_DIR = "project-labconfig"  # under the hub's state_dir (the hub runs on the host for projects)
# JupyterLab 4 plugins that offer a file's bytes to the browser: File > Download, the file browser's
# Download / Copy Download Link, its Open in New Browser Tab (a /files/ URL), File > Save and Export Notebook As
# (nbconvert). Hidden only (cosmetic): the download filter refuses those URLs whatever the page shows.
LAB_DISABLED_PLUGINS = (
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
    "@jupyterlab/notebook-extension:export",
)


# Operator host-config keys a project server never gets: no mount, link, resolver or host entry of the operator's
# reaches into the room (ours set the network, the binds and the resolver).
OPERATOR_HOST_KEYS_DROPPED = frozenset(
    {"binds", "mounts", "links", "volumes_from", "volume_driver", "dns", "dns_search", "dns_opt", "extra_hosts",
     "port_bindings", "publish_all_ports"}
)  # fmt: skip


def home_volume(instance: str, key: str, uid: int) -> str:
    """The project home of one (project, user): never mounted in any other server."""
    return f"{instance}-project-{key}-user-{uid}"


def lab_page_config() -> dict:
    return {"disabledExtensions": dict.fromkeys(LAB_DISABLED_PLUGINS, True)}


@dataclass(frozen=True)
class ProjectPlan:
    """What one project server gets (like :class:`gpuhub.hub.courses.ContainerPlan` for courses)."""

    key: str
    network: pn.ProjectNetwork
    home_volume: str
    binds: dict[str, dict]  # source -> {"bind", "mode"}: the home, the datasets (ro), the lab config (ro)
    datasets: dict[str, str]  # dataset name -> source
    env: dict[str, str]
    host: dict  # host-config keys (dns pinned to the gateway)
    labels: dict[str, str]
    hub_connect_url: str
    route_prefix: str  # JupyterHub's base URL of the server: /user/NAME/KEY/
    max_response_mb: float = 5.0


def container_plan(
    project: Project,
    net: pn.ProjectNetwork,
    *,
    instance: str,
    uid: int,
    hub: pn.HubPath,
    notebook_dir: str,
    lab_config_dir: Path,
    route_prefix: str,
    airlock_port: int | None = None,
    base_url: str = "/",
) -> ProjectPlan:
    """The plan for one server of ``project`` run as ``uid`` (pure). With ``airlock_port`` (the gpuhub-airlock
    service's port, one of ``hub.service_ports``) the server is told where the airlock is, through its gateway's
    door: ``GPUHUB_AIRLOCK_URL`` (read by gpuhub-export and the Lab entry "Request export…", gpuhub-lab)."""
    env = {"GPUHUB_PROJECT": project.key, "JUPYTER_CONFIG_PATH": LAB_CONFIG_DIR}
    if airlock_port:
        env["GPUHUB_AIRLOCK_URL"] = f"http://{net.gateway}:{airlock_port}{base_url}services/{AIRLOCK_SERVICE}/"
    home = home_volume(instance, project.key, uid)
    binds = {home: {"bind": notebook_dir, "mode": "rw"}, str(lab_config_dir): {"bind": LAB_CONFIG_DIR, "mode": "ro"}}
    for name, ds in sorted(project.datasets.items()):
        if ds.source in binds:  # Docker's binds hold one mount per source
            raise web.HTTPError(
                500,
                f"projects.{project.key}.datasets.{name}.source: {ds.source} is mounted twice in project "
                f"{project.key}'s servers; ask an operator to list each source once",
            )
        binds[ds.source] = {"bind": f"{DATA_ROOT}/{name}", "mode": "ro"}
    return ProjectPlan(
        key=project.key,
        network=net,
        home_volume=home,
        binds=binds,
        datasets={name: ds.source for name, ds in sorted(project.datasets.items())},
        env=env,
        host=pn.container_host_config(net),
        labels={pn.PROJECT: project.key},
        hub_connect_url=pn.hub_connect_url(net, hub),
        route_prefix=route_prefix,
        max_response_mb=project.max_response_mb,
    )


# ---------------------------------------------------------------- process-wide handles (one per database)


@lru_cache(maxsize=4)
def project_store(url: str) -> ProjectStore:
    """The project records of the hub database at ``url`` (migrated on first use), one per process."""
    return ProjectStore.from_url(url)


def _audit(site: Site, action: str, **kw) -> None:
    project_store(site.hub.database_url).audit.append(action, **kw)  # the store's engine: one pool per database


# ---------------------------------------------------------------- 1. admission


def source_address(spawner) -> str | None:
    """The address the spawn request came from (the proxy's X-Forwarded-For, as the hub's tornado reads it)."""
    handler = getattr(spawner, "handler", None)
    request = getattr(handler, "request", None)
    return getattr(request, "remote_ip", None)


async def admit_options(spawner, options) -> tuple[dict, Project | None]:
    """``options`` as the quota policy reads them, and the project (None for an ordinary server); raises the
    project's :class:`quota.policy.Refusal` before anything is allocated or created. Resets what an earlier
    project start of this spawner set (network, hub URL)."""
    cfg = spawner.__dict__.setdefault("_gpuhub_configured", (spawner.network_name, spawner.hub_connect_url))
    spawner.network_name, spawner.hub_connect_url = cfg
    spawner.project_plan, spawner.project_key, spawner.project_route = None, "", ""
    key, offered = project_option(options)
    if key is None:
        return options, None
    project = spawner.site.projects.get(key)
    image = options.get("image") or (project.images[0] if project is not None and project.images else None)
    project = await admit(spawner, key, offered, image=image, org=options.get("org") or None)
    return {**options, "image": image}, project


async def admit(spawner, key: str, offered: str | None, *, image: str | None, org: str | None) -> Project:
    """Check the request for a server of project ``key`` (raises :class:`quota.policy.Refusal`); record a DUA
    acceptance that ``offered`` (the sha256 the request sent) makes. Runs before any allocation."""
    site, user, groups = spawner.site, spawner.user.name, spawner._groups()
    project = site.projects.get(key)
    try:
        store = await asyncio.to_thread(project_store, site.hub.database_url)
        membership = await asyncio.to_thread(store.membership, key) if project else qp.NO_CHANGES
        accepted = await asyncio.to_thread(store.accepted_sha256, key, user) if project else None
    except SQLAlchemyError as e:  # fail closed: no project server without its records
        spawner.log.error("%s: project records unavailable: %s", spawner._log_name, e)
        raise web.HTTPError(
            503, "the project records (the hub database) are unavailable; try again in a minute or ask an operator"
        ) from None
    refusal = qp.check_project(
        site,
        key,
        user=user,
        groups=groups,
        server_name=spawner.name,
        image=image,
        org=org,
        now=utcnow(),
        accepted_sha256=accepted,
        offered_sha256=offered,
        membership=membership,
    )
    if refusal is not None:
        raise refusal
    if offered is not None and offered == project.dua_sha256 and accepted != offered:
        try:
            await asyncio.to_thread(store.accept_dua, key, user, offered, source_address(spawner))
        except SQLAlchemyError as e:
            spawner.log.error("%s: could not record the DUA acceptance: %s", spawner._log_name, e)
            raise web.HTTPError(503, "your acceptance could not be recorded (the hub database); try again") from None
        spawner.emit(12, f"Recorded your acceptance of the data use agreement of {project.display_name}")
    return project


# ---------------------------------------------------------------- 2. the closed room


def hub_path(spawner) -> pn.HubPath:
    """Where this hub's API really listens (the user network's gateway), for the DNAT of the project gateway."""
    site = spawner.site
    if site.hub.hub_connect_ip:
        raise web.HTTPError(
            500,
            "project servers need the hub on the host (hub.hub_connect_ip is set: a hub in a container cannot "
            "reach closed project networks); run the hub on the host, or remove the projects section",
        )
    url = urlparse(spawner.hub.api_url)
    # gpuhub-airlock listens on the same address (hubconfig registers it for every site with projects)
    return pn.HubPath(
        ip=url.hostname, port=url.port or site.hub.api_port, service_ports=(site.hub.airlock_service_port,)
    )


def airlock_env(spawner) -> dict:
    """``GPUHUB_AIRLOCK_URL`` for an ordinary server (gpuhub-import): gpuhub-airlock listens beside the hub API
    on the user network's gateway (hubconfig registers it for every site with projects). Nothing with a hub in
    a container (the service is on its loopback there). A project server's plan replaces it with the address
    behind its own gateway's door (:func:`container_plan`)."""
    site = spawner.site
    if not site.projects or site.hub.hub_connect_ip:
        return {}
    api = urlparse(spawner.hub.api_url)
    url = f"http://{api.hostname}:{site.hub.airlock_service_port}{_base_url(spawner)}services/{AIRLOCK_SERVICE}/"
    return {"GPUHUB_AIRLOCK_URL": url}


def _base_url(spawner) -> str:
    """The hub's base_url (JupyterHub's ``Hub.base_url`` is it plus ``hub/``)."""
    return spawner.hub.base_url.rsplit("hub/", 1)[0] or "/"


def write_lab_config(state_dir: Path) -> Path:
    """``state_dir/project-labconfig/labconfig/page_config.json`` (0644 in 0755 folders, written atomically)."""
    root = state_dir / LAB_CONFIG_HOST_DIR
    folder = root / "labconfig"
    folder.mkdir(parents=True, exist_ok=True)
    for d in (root, folder):
        os.chmod(d, 0o755)
    target = folder / "page_config.json"
    text = json.dumps(lab_page_config(), indent=1, sort_keys=True)
    if not target.exists() or target.read_text() != text:
        tmp = folder / f".page_config.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return root


@lru_cache(maxsize=1)
def _engine() -> docker.DockerClient:
    """A high-level Docker client for the network calls (DockerSpawner's ``client`` is the low-level API)."""
    return docker_client()


def _close_room(key: str, hub: pn.HubPath) -> pn.ProjectNetwork:
    net = pn.ensure_project_network(_engine(), key)
    pn.Firewall().allow_project(net, hub)
    return net


async def _check_datasets(spawner, project: Project) -> None:
    """Every dataset's source must exist: Docker would otherwise make an empty volume (or fail on a path)."""
    for name, ds in sorted(project.datasets.items()):
        where = f"projects.{project.key}.datasets.{name}.source"
        if ds.is_host_path:
            if not os.path.isdir(ds.source) and not os.path.isfile(ds.source):
                raise web.HTTPError(500, f"{where}: {ds.source} does not exist on this host; ask an operator to fix it")
            continue
        try:
            await spawner.docker("inspect_volume", ds.source)
        except docker.errors.NotFound:
            raise web.HTTPError(
                500, f"{where}: Docker volume {ds.source!r} does not exist; ask an operator to create and fill it"
            ) from None


async def prepare(spawner, project: Project, uid: int) -> ProjectPlan:
    """The network and firewall, the datasets checked, the lab config written: this start's :class:`ProjectPlan`."""
    site = spawner.site
    hub = hub_path(spawner)
    spawner.emit(28, f"Closing the network of project {project.display_name}")
    try:
        net = await asyncio.to_thread(_close_room, project.key, hub)
    except pn.ProjectNetworkError as e:
        raise web.HTTPError(500, f"project {project.key}: {e}") from None
    await _check_datasets(spawner, project)
    lab = await asyncio.to_thread(write_lab_config, site.hub.state_dir)
    plan = container_plan(
        project,
        net,
        instance=spawner.hub_instance,
        uid=uid,
        hub=hub,
        notebook_dir=spawner.notebook_dir,
        lab_config_dir=lab,
        route_prefix=spawner.server.base_url if spawner.server else f"/user/{spawner.user.name}/{project.key}/",
        airlock_port=site.hub.airlock_service_port,
        base_url=_base_url(spawner),
    )
    spawner.project_plan, spawner.project_key, spawner.project_route = plan, plan.key, plan.route_prefix
    spawner.network_name, spawner.hub_connect_url = net.name, plan.hub_connect_url  # DockerSpawner reads both
    return plan


def operator_host(plan: ProjectPlan | None, host: dict, operator: dict) -> dict:
    """The operator's host-config layer for this start: all of it for an ordinary server; for a project server
    without the keys of :data:`OPERATOR_HOST_KEYS_DROPPED` (and DockerSpawner's ``links`` and the operator's
    ``mounts`` go from ``host`` too)."""
    if plan is None:
        return operator
    host.pop("links", None)
    host.pop("mounts", None)
    return {k: v for k, v in operator.items() if k not in OPERATOR_HOST_KEYS_DROPPED}


# ---------------------------------------------------------------- 3./4. start and stop


def routes(site: Site) -> RoutesFile:
    """The download filter's routes file (``gpuhub service project-proxy`` reads it per request)."""
    return RoutesFile(ProxyPaths.for_state_dir(site.hub.state_dir).routes)


async def after_start(spawner, plan: ProjectPlan, ip: str, port: int) -> tuple[str, int]:
    """Drop the default route, hand the server to the download filter, audit; returns the address for the proxy."""
    site = spawner.site
    spawner.emit(80, "Closing the server's room: default route dropped, download filter in front")
    info = await spawner.docker("inspect_container", spawner.container_id)
    try:
        await asyncio.to_thread(pn.drop_default_route, info["State"]["Pid"])
    except Exception as e:  # noqa: BLE001 - the firewall still holds; the room must not open on a failed step
        raise web.HTTPError(500, f"project {plan.key}: could not drop the server's default route: {e}") from None
    target = f"http://{ip}:{port}"
    user, source = spawner.user.name, source_address(spawner)
    limit = limit_bytes(plan.max_response_mb)
    await asyncio.to_thread(
        routes(site).set, plan.route_prefix, target, project=plan.key, max_response_bytes=limit, user=user
    )
    detail = {
        "server": spawner.name,
        "container": spawner.container_name,
        "datasets": plan.datasets,
        "home": plan.home_volume,
        "image": spawner.spawn_request.image if spawner.spawn_request else None,
    }
    await asyncio.to_thread(
        _audit, site, qp.AUDIT_SERVER_STARTED, project=plan.key, account=user, source=source, target=user, detail=detail
    )
    for name, src in plan.datasets.items():
        await asyncio.to_thread(
            _audit, site, qp.AUDIT_DATASET_MOUNTED, project=plan.key, account=user, source=source,
            target=name, detail={"source": src, "at": f"{DATA_ROOT}/{name}", "mode": "ro", "server": spawner.name},
        )  # fmt: skip
    return "127.0.0.1", site.hub.project_proxy_port


async def after_stop(spawner, key: str, prefix: str, reason: str, audit: bool = True) -> None:
    """Take the server out of the download filter's routes and audit the stop (errors are logged, not raised);
    nothing for an ordinary server (``key`` empty)."""
    if not key:
        return
    site = spawner.site
    try:
        await asyncio.to_thread(routes(site).remove, prefix)
    except Exception:
        spawner.log.exception("%s: could not remove the route %s of project %s", spawner._log_name, prefix, key)
    if not audit:
        return
    try:
        user = spawner.user.name
        await asyncio.to_thread(
            _audit, site, qp.AUDIT_SERVER_STOPPED, project=key, account=user, target=user,
            detail={"server": spawner.name, "reason": reason},
        )  # fmt: skip
    except Exception:
        spawner.log.exception("%s: could not audit the stop of project %s's server", spawner._log_name, key)
