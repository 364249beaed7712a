"""A real hub with secure projects, for tests/projects/test_project_servers.py and tests/browser.

:func:`make_hub` makes a :class:`tests.harness.HubProcess` whose site has projects with a host-path dataset and a
volume dataset; :func:`cleanup_projects` removes what the hub made for them that the harness does not know about
(project networks, their firewall rules). Project keys carry a random tag, so runs never share a network.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from datetime import date, timedelta
from pathlib import Path

import docker

from gpuhub.host import project_network as pn
from gpuhub.host.dockerenv import _facts
from tests.harness import BASE_IMAGE, HubProcess, default_site
from tests.procs import free_port

DUA = "Data use agreement\n\n1. Use the data only for the stated purpose.\n2. Never try to re-identify anyone.\n"
CSV = "patient_id,age,diagnosis\np-001,54,I21\np-002,61,E11\np-003,47,C34\n"


def dua_sha(text: str = DUA) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def today_in(tz: str = "Asia/Seoul") -> date:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo(tz)).date()


def project_site(hub_instance: str, tmp: Path, tag: str, **extra_projects) -> tuple[dict, dict[str, str]]:
    """The harness's default site plus projects; returns (site, {role: key}).

    - ``main``: alice and bob, datasets ``cohort`` (a host folder with ``cohort.csv``) and ``imaging`` (a volume)
    - ``other``: carol (the "another project" of the probes)
    - ``future`` (opens in 10 days), ``closed`` (closed yesterday): alice is a member of both
    """
    keys = {r: f"h3{r}-{tag}" for r in ("main", "other", "future", "closed", *extra_projects)}
    state = tmp / "state"
    site = default_site(hub_instance, 0, state)
    site["hub"]["project_proxy_port"] = free_port()
    data = tmp / "datasets" / "cohort"
    data.mkdir(parents=True)
    (data / "cohort.csv").write_text(CSV)
    (data / "big.txt").write_text("x" * (6 * 1024 * 1024))
    for p in (data, data / "cohort.csv", data / "big.txt"):  # writable by anyone: only the read-only mount stops it
        p.chmod(0o777 if p.is_dir() else 0o666)
    (tmp / "dua.txt").write_text(DUA)
    today = today_in(site["timezone"])

    def project(members, starts, expires, **kw):
        return {
            "display_name": kw.pop("display_name", "Cohort study"),
            "org": "gist-ai",
            "stewards": ["dana"],
            "members": members,
            "purpose": "Cardiology outcome research on pseudonymised records",
            "legal_basis": "pipa-28-2-research",
            "starts": starts.isoformat(),
            "expires": expires.isoformat(),
            "dua": {"file": "dua.txt"},
            **kw,
        }

    site["projects"] = {
        keys["main"]: project(
            ["alice", "bob"],
            today - timedelta(days=1),
            today + timedelta(days=30),
            datasets={
                "cohort": {"source": str(data), "description": "pseudonymised cohort"},
                "imaging": {"source": f"{hub_instance}-ds-imaging", "description": "image index"},
            },
        ),
        keys["other"]: project(["carol"], today - timedelta(days=1), today + timedelta(days=30), dua="Other DUA."),
        keys["future"]: project(["alice"], today + timedelta(days=10), today + timedelta(days=40)),
        keys["closed"]: project(["alice"], today - timedelta(days=30), today - timedelta(days=1)),
    }
    for role, spec in extra_projects.items():
        site["projects"][keys[role]] = project(**spec)
    return site, keys


def fill_volume(client: docker.DockerClient, name: str, files: dict[str, str]) -> None:
    """A dataset volume with ``files``, all writable by anyone (0666 in a 0777 folder: only the read-only mount
    stops a write), made with a throwaway container (no network)."""
    client.volumes.create(name)
    script = "chmod 0777 /v; " + "; ".join(
        f"printf '%s' '{text}' > /v/{path} && chmod 0666 /v/{path}" for path, text in files.items()
    )
    client.containers.run(
        BASE_IMAGE, ["sh", "-c", script], user="0", volumes={name: {"bind": "/v", "mode": "rw"}},
        network_mode="none", remove=True,
    )  # fmt: skip


def make_hub(tmp: Path, tag: str, **extra_projects) -> tuple[HubProcess, dict[str, str]]:
    instance = f"gpuhubtest{uuid.uuid4().hex[:6]}"
    site, keys = project_site(instance, tmp, tag, **extra_projects)
    hub = HubProcess(tmp, site, instance=instance)
    fill_volume(hub.docker, f"{instance}-ds-imaging", {"index.txt": "scan-1 scan-2"})
    return hub, keys


def cleanup_projects(hub: HubProcess, keys: dict[str, str]) -> None:
    """After hub.cleanup(): the project networks and their firewall rules (the harness removes containers/volumes)."""
    fw = pn.Firewall()
    for key in keys.values():
        for c in hub.docker.containers.list(all=True, filters={"label": f"{pn.PROJECT}={key}"}):
            c.remove(force=True)
        try:
            pn.remove_project_network(hub.docker, key)
        except docker.errors.APIError:
            pass
        fw.remove_project(key)
    # The (then empty) chains and their jumps stay: other hubs on this engine may be using them right now.


def bridge_gateways(client: docker.DockerClient) -> dict[str, str]:
    """{network name: gateway} of every IPv4 bridge network on this engine: the addresses Docker gave the host."""
    out = {}
    for n in client.networks.list(filters={"driver": "bridge"}):
        n.reload()
        try:
            out[n.name] = _facts(n.name, n.attrs).gateway
        except RuntimeError:  # an IPv6-only bridge: nothing to probe over IPv4
            continue
    return out


def gpuhub_cli(hub: HubProcess, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpuhub", *args], env=hub.env(), capture_output=True, text=True, check=check, timeout=120
    )
