"""The one-shot root containers that prepare a server's volumes before it starts: the user's home
volume (owned by the user's UID) and the nbgrader course volumes. Each runs the server's own image with
no network and only the capabilities named, and is removed afterwards; its failure fails the spawn.
The functions take the :class:`gpuhub.hub.spawner.GpuhubSpawner` being started."""

from __future__ import annotations

import docker
from tornado import web

from gpuhub.core import labels as lb
from gpuhub.hub import courses


async def ensure_home(spawner, uid: int, labels: dict | None = None) -> None:
    """Create the home volume owned by the user's UID (a one-shot root container chowns it); ``labels``: more
    labels for a new volume (a project home's ``gpuhub.project``). The home is whatever ``volume_binds`` mounts
    at ``notebook_dir``: the user's home, or for a project server the (project, user) home.

    Runs only when the volume is new or was owned by another UID, so later starts cost nothing.
    It works the same with the hub on the host and in a container (docker.sock only).
    """
    volume = next((name for name, spec in spawner.volume_binds.items() if spec["bind"] == spawner.notebook_dir), None)
    if volume is None:
        return
    try:
        info = await spawner.docker("inspect_volume", volume)
        if (info.get("Labels") or {}).get(lb.UID) == str(uid):
            return
    except docker.errors.NotFound:
        pass
    spawner.emit(30, "Preparing your home folder")
    ours = {lb.UID: str(uid), lb.USER: spawner.user.name, lb.HUB: spawner.hub_instance}
    try:
        await spawner.docker("create_volume", volume, labels={**(labels or {}), **ours})
    except docker.errors.APIError:
        pass  # exists (unlabelled, from an older setup): chown it below all the same
    # The marker file keeps the volume non-empty: Docker copies the image's folder (and its
    # owner) into an EMPTY volume at every mount, which would undo the chown.
    await run_as_root(
        spawner,
        ["sh", "-c", f'touch "$0/.gpuhub-home" && chown -R {uid}:{uid} "$0"', spawner.notebook_dir],
        binds={volume: {"bind": spawner.notebook_dir, "mode": "rw"}},
        cap_add=["CHOWN", "FOWNER", "DAC_OVERRIDE"],
        what=f"the home volume {volume} for UID {uid}",
    )


async def run_as_root(
    spawner, command: list[str], *, binds: dict, cap_add: list[str], what: str, environment: dict | None = None
) -> None:
    """A one-shot root container of the server's image that prepares volumes: no network, only
    the capabilities named, removed afterwards. Its failure fails the spawn with its log."""
    host = spawner.client.create_host_config(
        binds=binds, network_mode="none", cap_drop=["ALL"], cap_add=cap_add, security_opt=["no-new-privileges"]
    )
    box = await spawner.docker(
        "create_container",
        image=spawner.image,
        user="0",
        host_config=host,
        command=command,
        environment=environment,
        labels={lb.HUB: spawner.hub_instance, lb.INIT: "1"},
    )
    try:
        await spawner.docker("start", box["Id"])
        result = await spawner.docker("wait", box["Id"], timeout=120)
        if result.get("StatusCode") != 0:
            logs = (await spawner.docker("logs", box["Id"], tail=20)).decode(errors="replace")
            spawner.log.error("%s: preparing %s failed: %s", spawner._log_name, what, logs)
            raise web.HTTPError(500, f"could not prepare {what}")
    finally:
        await spawner.docker("remove_container", box["Id"], force=True)


async def ensure_course_volumes(spawner, plan) -> None:
    """One-shot root container (no network; CHOWN, FOWNER, DAC_OVERRIDE, FSETID only) that lays
    out the course volumes with their owners and modes, registers the user's UID in each
    exchange and writes the nbgrader config. Idempotent; runs at every course member's start."""
    spawner.emit(32, f"Preparing course files ({', '.join(sorted(plan.courses))})")
    for volume, labels in plan.volume_labels.items():
        try:
            await spawner.docker("create_volume", volume, labels=labels)
        except docker.errors.APIError:
            pass  # exists
    await run_as_root(
        spawner,
        plan.init_command,
        binds=plan.init_binds,
        cap_add=courses.INIT_CAPS,
        environment=plan.init_env,
        what=f"the course volumes for {', '.join(sorted(plan.courses))}",
    )
