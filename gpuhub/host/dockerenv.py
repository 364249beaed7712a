"""Facts about the Docker engine the hub needs before it can be configured.

The hub API must listen where user containers can reach it (the user network's gateway)
and nowhere else; the proxy and its API stay on loopback. This module answers "which IP
is that" and makes sure the user network exists.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timezone

import docker

from gpuhub.core.labels import MANAGED

USER_NETWORK_OPTIONS = {
    # Containers on the user network cannot talk to each other: user A never reaches B's server.
    "com.docker.network.bridge.enable_icc": "false",
}


class DockerUnavailable(RuntimeError):
    """The Docker engine does not answer; the message says how to start it."""


@dataclass(frozen=True)
class NetworkFacts:
    name: str
    gateway: str
    subnet: str


def docker_client(timeout: int = 30) -> docker.DockerClient:
    try:
        client = docker.DockerClient.from_env(timeout=timeout)
        client.ping()
    except Exception as e:  # docker raises several unrelated types here
        raise DockerUnavailable(
            f"the Docker engine does not answer ({e}); start it with `make docker` "
            "(scripts/docker-engine.sh) or check DOCKER_HOST"
        ) from None
    return client


def _facts(name: str, attrs: dict) -> NetworkFacts:
    config = (attrs.get("IPAM") or {}).get("Config") or []
    if not config or "Subnet" not in config[0]:
        raise RuntimeError(f"docker network {name} has no IPv4 subnet; recreate it as a bridge network")
    subnet = config[0]["Subnet"]
    # Docker 20.10 leaves Gateway out of the default bridge's IPAM: it is the first host.
    gateway = config[0].get("Gateway") or str(next(ipaddress.ip_network(subnet).hosts()))
    return NetworkFacts(name=name, gateway=gateway.split("/")[0], subnet=subnet)


def ensure_user_network(client: docker.DockerClient, name: str) -> NetworkFacts:
    """Return the user network's facts, creating it (bridge, no inter-container traffic) if missing."""
    try:
        net = client.networks.get(name)
    except docker.errors.NotFound:
        net = client.networks.create(
            name,
            driver="bridge",
            options=USER_NETWORK_OPTIONS,
            labels={MANAGED: "1"},
        )
        net.reload()
    return _facts(name, net.attrs)


def docker_time(text: str | None) -> datetime | None:
    """Parse Docker's RFC 3339 nanosecond timestamps; the zero time means 'never'."""
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    micro = (frac + "000000")[:6] if frac else "0"
    return datetime.fromisoformat(head).replace(microsecond=int(micro), tzinfo=timezone.utc)
