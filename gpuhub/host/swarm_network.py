"""``hub.engine: swarm``: the servers' overlay network and the address the hub listens on for them.

The hub runs beside a manager (on its host, with ``DOCKER_HOST`` pointing at the manager's engine). Servers run on
any node; they reach the hub's API at the address of this machine that faces the manager — the source address the
kernel picks for a route to the manager's advertise address (a UDP ``connect`` sends no packet). The hub API binds
there and nowhere else; the proxy API stays on loopback, out of every server's reach.

The overlay (``hub.network``, attachable) carries a hub that runs as a Swarm service to the servers' task
addresses (``GpuhubSwarmSpawner.server_address = "overlay"``). Overlay networks have no inter-container-traffic
switch (moby/libnetwork#1858): servers on one overlay can reach each other's ports. So with the default
``node-port`` servers join no overlay: each is reached at its node's published port, which the node's firewall
opens to the hub's host only (scripts/swarm.sh ``firewall_node``; docs/scaling.md, "Networks").
"""

from __future__ import annotations

import socket

from gpuhub.host.dockerenv import NetworkFacts

OVERLAY_LABELS = {"gpuhub.managed": "1"}


class SwarmSetupError(RuntimeError):
    """The engine is no swarm manager, or the network is not an attachable overlay; the message says the fix."""


def manager_addr(client) -> str:
    info = client.info().get("Swarm") or {}
    if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
        raise SwarmSetupError(
            "hub.engine is swarm but the hub's Docker engine is not a swarm manager; point DOCKER_HOST at a "
            "manager's engine (scripts/swarm.sh env) or set hub.engine: docker"
        )
    return info.get("NodeAddr") or ""


def facing_address(addr: str, port: int = 2377) -> str:
    """This machine's source address towards ``addr`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((addr, port))
        return s.getsockname()[0]


def ensure_overlay(client, name: str) -> NetworkFacts:
    """The attachable overlay ``name`` on the manager (created if missing); its gateway is the hub's facing address."""
    addr = manager_addr(client)
    found = [n["Id"] for n in client.api.networks(names=[name]) if n["Name"] == name]
    if not found:
        found = [client.api.create_network(name, driver="overlay", attachable=True, labels=OVERLAY_LABELS)["Id"]]
    net = client.api.inspect_network(found[0])
    # Docker 20.10 may leave "Driver" empty for a swarm network (inspected by name, or just created): its scope says
    if net.get("Scope") != "swarm" or net.get("Driver") not in ("overlay", "") or not net.get("Attachable"):
        raise SwarmSetupError(
            f"docker network {name} is a {net.get('Driver') or net.get('Scope')} network"
            f"{'' if net.get('Attachable') else ' (not attachable)'}"
            f"; with hub.engine: swarm hub.network must be an attachable overlay: remove it (docker network rm {name})"
            " and the hub creates it"
        )
    config = (net.get("IPAM") or {}).get("Config") or [{}]
    return NetworkFacts(name=name, gateway=facing_address(addr), subnet=config[0].get("Subnet", ""))
