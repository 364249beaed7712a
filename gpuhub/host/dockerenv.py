"""Facts about the Docker engine the hub needs before it can be configured.

The hub API must listen where user containers can reach it (the user network's gateway)
and nowhere else; the proxy and its API stay on loopback. This module answers "which IP
is that" and makes sure the user network exists.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime

import docker

from gpuhub.core.labels import MANAGED

ICC_OPTION = "com.docker.network.bridge.enable_icc"
USER_NETWORK_OPTIONS = {
    # Containers on the user network cannot talk to each other: user A never reaches B's server.
    ICC_OPTION: "false",
}
#: networks every Docker engine has and nobody can remove
PREDEFINED_NETWORKS = frozenset({"bridge", "host", "none"})


class DockerUnavailable(RuntimeError):
    """The Docker engine does not answer; the message says how to start it."""


class UserNetworkError(RuntimeError):
    """The existing user network would let user containers reach each other; the message says how to fix it."""


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


def _check_isolated(name: str, attrs: dict) -> None:
    """Refuse a user network on which containers could reach each other (another user's server)."""
    driver = attrs.get("Driver")
    icc = (attrs.get("Options") or {}).get(ICC_OPTION)
    if driver == "bridge" and icc == "false":
        return
    setting = f"{ICC_OPTION}={icc}" if icc is not None else f"{ICC_OPTION} unset, which Docker reads as true"
    problem = (
        f"uses the {driver!r} driver" if driver != "bridge" else f"lets its containers reach each other ({setting})"
    )
    rule = (
        f"docker network {name} (the site config's hub.network) {problem}; user isolation needs a bridge network "
        f"with {ICC_OPTION}=false, so one user's container cannot reach another's server"
    )
    if name in PREDEFINED_NETWORKS:
        raise UserNetworkError(
            f"{rule}. Docker's own {name!r} network cannot be changed: set hub.network to another "
            "name (gpuhub creates it isolated at start)"
        )
    containers = sorted(c.get("Name") or cid[:12] for cid, c in (attrs.get("Containers") or {}).items())
    free = (
        f"stop or `docker network disconnect {name} CONTAINER` its {len(containers)} container(s) "
        f"({', '.join(containers)}), then "
        if containers
        else ""
    )
    raise UserNetworkError(
        f"{rule}. Fix: {free}`docker network rm {name}` and start the hub again (gpuhub then "
        "creates it isolated), or set hub.network to a name no network uses"
    )


def ensure_user_network(client: docker.DockerClient, name: str) -> NetworkFacts:
    """Return the user network's facts, creating it (bridge, no inter-container traffic) if missing.
    An existing network must be a bridge with inter-container traffic off (:class:`UserNetworkError`)."""
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
    _check_isolated(name, net.attrs)
    return _facts(name, net.attrs)


def docker_time(text: str | None) -> datetime | None:
    """Parse Docker's RFC 3339 nanosecond timestamps; the zero time means 'never'."""
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    micro = (frac + "000000")[:6] if frac else "0"
    return datetime.fromisoformat(head).replace(microsecond=int(micro), tzinfo=UTC)
