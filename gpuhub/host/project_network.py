"""Closed networks for project servers (issue 13, item 3): the room has one door, the hub API.

Each project gets its own Docker bridge network, ``gpuhub-project-KEY``, created ``--internal`` with
inter-container traffic off and labelled ``gpuhub.managed=1``, ``gpuhub.project=KEY``. What each layer does,
measured on Debian's Docker 20.10.24 (tests/projects/test_project_network.py probes all of it):

- ``--internal`` makes Docker drop FORWARDed traffic into and out of the bridge (DOCKER-ISOLATION-STAGE-1).
  It does NOT stop a container reaching the HOST: on 20.10 the container still gets a default route via the
  bridge gateway, and a packet to any host address (this bridge's gateway, docker0's, the user network's)
  is local delivery (INPUT), which Docker leaves open. So the host firewall below is required, not optional.
- icc off: members of one project share data through the project's datasets and their own homes, never
  through each other's servers; two servers of one project cannot reach each other (Docker's
  ``-i br -o br -j DROP``). The only path a project server needs is the hub API.
- Host firewall, in chains this module owns and nothing else touches (created idempotently, removed by
  :meth:`Firewall.remove_all`; per-project rules carry the comment ``gpuhub-project=KEY``):
    * filter ``GPUHUB-PROJECTS`` (jumped to first from INPUT): from a project bridge accept replies to
      connections the host opened (the proxy and the hub reach the server) and new TCP connections to the hub
      API that arrived through the DNAT below; reject everything else (TCP reset, ICMP admin-prohibited
      for UDP/ICMP, so pip/apt fail at once instead of hanging).
    * nat ``GPUHUB-PROJECTS`` (jumped to first from PREROUTING): ``PROJECT_GATEWAY:hub port`` is DNATed to the
      address the hub really listens on (the user network's gateway, see gpuhub.hub.hubconfig), so the hub
      keeps one listening address and a project server uses ``http://PROJECT_GATEWAY:PORT`` as its hub URL
      (:func:`hub_connect_url`; JupyterHub's ``Spawner.hub_connect_url``). The hub services a room needs
      (``HubPath.service_ports``: gpuhub-airlock, where a researcher asks for an export) get the same kind of
      door on their own port, to the same address: still nothing but the hub's own processes is reachable.
    * filter ``GPUHUB-PROJECTS-FWD`` (jumped to first from DOCKER-USER, which Docker keeps first in FORWARD):
      reject anything forwarded into or out of a project bridge, whatever Docker's own rules say.
- No default route: :func:`drop_default_route` deletes it inside the server's network namespace after start
  (the server runs with ``cap_drop: ALL``, so it cannot add it back). The firewall does not depend on it:
  the tests probe a container that keeps its route and its capabilities, as root, too.
- DNS (CVE-2024-29018): Docker's embedded resolver (127.0.0.11 in every container on a user-defined network)
  forwards names it does not know to upstream servers, and engines before 26.0.0 / 25.0.5 / 23.0.11 do so
  for internal networks too; when the upstream is a loopback address (e.g. systemd-resolved's 127.0.0.53)
  the query leaves from the HOST's namespace, past every rule above (moby PR 47538, backports 47593).
  Debian's 20.10 is affected. (The fixed 25.x release: Go's vulndb entry for GHSA-mq39-4gv4-mvpx lists
  "< 25.0.5" as vulnerable; some distribution advisories say 25.0.4. Take 25.0.5.) Fix applied
  here (:func:`container_host_config`): each project server's ``dns`` is the project's own gateway, so the
  embedded resolver forwards only there, from the container's namespace, and the firewall rejects port 53:
  outside names never resolve, container names of the same network still do (the resolver answers those
  itself). Production should still run a fixed engine (26.0.0, 25.0.5 or 23.0.11 and later), where the
  embedded resolver does not forward at all for a container only on internal networks (it answers REFUSED),
  and, from 26.0.0, an internal network gives its containers no default route at all (moby PR 46603).
- IPv6: project networks are IPv4 only and Docker disables IPv6 in their containers
  (``net.ipv6.conf.all.disable_ipv6=1``, no address at all: tested).

Limits: the hub must run on the host (``hub.hub_connect_ip`` unset); a hub in a container would have to join
each project network, which icc-off forbids talking to. Host-side processes can still open connections INTO
a project server (the proxy must); the project server's token auth guards that, as for ordinary servers.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import docker

from gpuhub.core.labels import MANAGED, PREFIX
from gpuhub.host.dockerenv import _facts  # the one reader of Docker's IPAM block

PROJECT = PREFIX + "project"  # on project networks (and, later, project servers): the project key
NETWORK_PREFIX = "gpuhub-project-"
PROJECT_NETWORK_OPTIONS = {"com.docker.network.bridge.enable_icc": "false"}
CHAIN = "GPUHUB-PROJECTS"  # filter (from INPUT) and nat (from PREROUTING)
FWD_CHAIN = "GPUHUB-PROJECTS-FWD"  # filter, from DOCKER-USER
# (table, our chain, where it is jumped to from, first)
_JUMPS = (("nat", CHAIN, "PREROUTING"), ("filter", CHAIN, "INPUT"), ("filter", FWD_CHAIN, "DOCKER-USER"))
_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


class ProjectNetworkError(RuntimeError):
    """A project network or its firewall cannot be set up; the message names the fix."""


@dataclass(frozen=True)
class ProjectNetwork:
    key: str
    name: str
    bridge: str  # the host's interface for it, e.g. br-0123456789ab
    gateway: str
    subnet: str


@dataclass(frozen=True)
class HubPath:
    """Where the hub API really listens (``ip``:``port``, the user network's gateway) and the port a project
    server dials on its own gateway (``gateway_port``, default the same port). ``service_ports``: hub services on
    the same ``ip`` that the room may reach too (gpuhub-airlock, issue 14: a researcher's export request), each
    dialled on the project gateway's same port, through the same DNAT-only door."""

    ip: str
    port: int
    gateway_port: int | None = None
    service_ports: tuple[int, ...] = ()

    @property
    def dialled_port(self) -> int:
        return self.gateway_port or self.port


def project_network_name(key: str) -> str:
    """``gpuhub-project-KEY``; the key is a site-config project key (lower-case letters, digits, dashes)."""
    if not _KEY.match(key or ""):
        raise ProjectNetworkError(
            f"projects.{key}: a project key must be 1-40 lower-case letters, digits or "
            "dashes, starting with a letter or digit (it names the project's network)"
        )
    return NETWORK_PREFIX + key


def _bridge(attrs: dict) -> str:
    return (attrs.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{attrs['Id'][:12]}"


def _of(key: str, attrs: dict) -> ProjectNetwork:
    f = _facts(attrs["Name"], attrs)
    return ProjectNetwork(key=key, name=f.name, bridge=_bridge(attrs), gateway=f.gateway, subnet=f.subnet)


def ensure_project_network(client: docker.DockerClient, key: str, labels: dict | None = None) -> ProjectNetwork:
    """The project's network, created if missing; an existing one that is not closed is refused."""
    name = project_network_name(key)
    try:
        net = client.networks.get(name)
    except docker.errors.NotFound:
        try:  # check_duplicate: two hub processes racing here must not make two networks of one name
            net = client.networks.create(
                name,
                driver="bridge",
                internal=True,
                check_duplicate=True,
                options=PROJECT_NETWORK_OPTIONS,
                labels={MANAGED: "1", PROJECT: key, **(labels or {})},
            )
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise
            net = client.networks.get(name)  # the other one won
        net.reload()
    a = net.attrs
    problems = []
    if not a.get("Internal"):
        problems.append("it is not --internal")
    if (a.get("Options") or {}).get("com.docker.network.bridge.enable_icc") != "false":
        problems.append("inter-container traffic (icc) is on")
    if (a.get("Labels") or {}).get(PROJECT) != key:
        problems.append(f"its label {PROJECT} is not {key!r}")
    if a.get("EnableIPv6"):
        problems.append("it has IPv6 enabled")
    if problems:
        raise ProjectNetworkError(
            f"docker network {name} exists but {', '.join(problems)}: the project would not "
            f"be closed; stop its containers and remove it (`docker network rm {name}`), "
            "gpuhub recreates it"
        )
    return _of(key, a)


def remove_project_network(client: docker.DockerClient, key: str) -> bool:
    """Remove the project's network (its containers must be gone); False if there was none."""
    try:
        client.networks.get(project_network_name(key)).remove()
    except docker.errors.NotFound:
        return False
    return True


def project_networks(client: docker.DockerClient) -> list[ProjectNetwork]:
    nets = client.networks.list(filters={"label": [f"{MANAGED}=1", PROJECT]})
    out = []
    for n in nets:
        n.reload()
        out.append(_of(n.attrs["Labels"][PROJECT], n.attrs))
    return out


def container_host_config(net: ProjectNetwork) -> dict:
    """Host-config keys every project server needs (merge into DockerSpawner's ``extra_host_config``):
    the embedded resolver may forward only to the project gateway, where the firewall rejects port 53, and
    the container's resolver gives up on an outside name in about 2 s instead of 10 (pip fails at once)."""
    return {"dns": [net.gateway], "dns_opt": ["timeout:1", "attempts:2"]}


def hub_connect_url(net: ProjectNetwork, hub: HubPath) -> str:
    """The hub URL a project server uses (JupyterHub ``Spawner.hub_connect_url``)."""
    return f"http://{net.gateway}:{hub.dialled_port}"


def drop_default_route(pid: int, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """Delete the default route in the network namespace of process ``pid`` (a started server's)."""
    routes = run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-4", "route", "show", "default"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if routes.strip():
        run(
            ["nsenter", "-t", str(pid), "-n", "ip", "-4", "route", "del", "default"],
            capture_output=True,
            text=True,
            check=True,
        )


class Firewall:
    """The host rules of the module docstring, through the ``iptables`` command (root; ``-w`` waits for the
    xtables lock); ``run`` is injectable. A project's rules carry the comment ``gpuhub-project=KEY``."""

    def __init__(self, iptables: str = "iptables", run: Callable[..., subprocess.CompletedProcess] = subprocess.run):
        self.iptables, self._run = iptables, run

    def _ipt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = self._run([self.iptables, "-w", "10", *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise ProjectNetworkError(
                f"`{self.iptables} {' '.join(args)}` failed: {r.stderr.strip()}; project networks need root "
                "and the iptables command, with the Docker engine managing iptables (iptables: true)"
            )
        return r

    def _has(self, table: str, chain: str, rule: list[str]) -> bool:
        return self._ipt("-t", table, "-C", chain, *rule, check=False).returncode == 0

    def ensure_chains(self) -> None:
        """Create the three chains and their jumps, once (idempotent)."""
        if self._ipt("-t", "filter", "-S", "DOCKER-USER", check=False).returncode != 0:
            raise ProjectNetworkError(
                "the DOCKER-USER chain is missing: the Docker engine must manage iptables "
                "(daemon option iptables: true) for project networks to be closed"
            )
        for table, chain, parent in _JUMPS:
            if self._ipt("-t", table, "-S", chain, check=False).returncode != 0:
                self._ipt("-t", table, "-N", chain)
            if not self._has(table, parent, ["-j", chain]):
                self._ipt("-t", table, "-I", parent, "1", "-j", chain)

    @staticmethod
    def project_rules(net: ProjectNetwork, hub: HubPath) -> list[tuple[str, str, list[str]]]:
        """(table, chain, rule) in order: the door (DNAT + accept), replies, then reject the rest."""
        br, gw, hub_to, door = net.bridge, net.gateway, f"{hub.ip}:{hub.port}", str(hub.dialled_port)
        tag = ["-m", "comment", "--comment", f"gpuhub-project={net.key}"]
        doors = [(door, hub.ip, hub.port)] + [(str(p), hub.ip, p) for p in hub.service_ports]
        rules = [
            ("nat", CHAIN, f"-i {br} -d {gw} -p tcp --dport {door} -j DNAT --to-destination {hub_to}"),
            *[("nat", CHAIN, f"-i {br} -d {gw} -p tcp --dport {d} -j DNAT --to-destination {ip}:{p}")
              for d, ip, p in doors[1:]],
            ("filter", CHAIN, f"-i {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            *[("filter", CHAIN, f"-i {br} -p tcp -d {ip} --dport {p} -m conntrack --ctstate DNAT "
                                f"--ctorigdst {gw} --ctorigdstport {d} -j ACCEPT") for d, ip, p in doors],
            ("filter", CHAIN, f"-i {br} -p tcp -j REJECT --reject-with tcp-reset"),
            ("filter", CHAIN, f"-i {br} -j REJECT --reject-with icmp-admin-prohibited"),
            ("filter", FWD_CHAIN, f"-i {br} -j REJECT --reject-with icmp-admin-prohibited"),
            ("filter", FWD_CHAIN, f"-o {br} -j REJECT --reject-with icmp-admin-prohibited"),
        ]  # fmt: skip
        return [(t, c, r.split() + tag) for t, c, r in rules]

    def allow_project(self, net: ProjectNetwork, hub: HubPath) -> None:
        """Make the project's rules exactly :meth:`project_rules`. Nothing to do when they already are (a hub
        restart); otherwise the rewrite happens behind a temporary reject-all guard, so the room never stands
        open, not even between deleting the old rules and adding the new ones."""
        self.ensure_chains()
        want = self.project_rules(net, hub)
        if len(self.rules(net.key)) == len(want) and all(self._has(t, c, r) for t, c, r in want):
            return
        guard_tag = ["-m", "comment", "--comment", f"gpuhub-guard={net.key}"]
        reject = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited", *guard_tag]
        guards = [(CHAIN, ["-i", net.bridge, *reject]), (FWD_CHAIN, ["-i", net.bridge, *reject]),
                  (FWD_CHAIN, ["-o", net.bridge, *reject])]  # fmt: skip
        for chain, rule in guards:
            self._ipt("-t", "filter", "-I", chain, "1", *rule)
        try:
            self.remove_project(net.key)
            for table, chain, rule in want:
                self._ipt("-t", table, "-A", chain, *rule)
        finally:
            for chain, rule in guards:
                self._ipt("-t", "filter", "-D", chain, *rule)

    def rules(self, key: str | None = None) -> list[str]:
        """Our rules as ``TABLE: -A CHAIN …`` lines (only ``key``'s when given)."""
        mine = re.compile(rf"--comment \"?gpuhub-project={re.escape(key)}\"?(\s|$)") if key else None
        out = []
        for table, chain, _ in _JUMPS:
            r = self._ipt("-t", table, "-S", chain, check=False)
            for line in r.stdout.splitlines() if r.returncode == 0 else []:
                if line.startswith("-A ") and (mine is None or mine.search(line)):
                    out.append(f"{table}: {line}")
        return out

    def keys(self) -> set[str]:
        """The project keys that have rules (to drop those whose network is gone: :func:`forget_projects`)."""
        return {m.group(1) for line in self.rules() for m in [re.search(r"gpuhub-project=([a-z0-9-]+)", line)] if m}

    def remove_project(self, key: str) -> int:
        """Delete the project's rules; returns how many."""
        n = 0
        for entry in self.rules(key):
            table, _, line = entry.partition(": ")
            self._ipt("-t", table, "-D", *shlex.split(line)[1:])
            n += 1
        return n

    def remove_all(self) -> None:
        """Remove every rule, jump and chain of ours (uninstall, and the tests' cleanup)."""
        for table, chain, parent in _JUMPS:
            while self._has(table, parent, ["-j", chain]):
                self._ipt("-t", table, "-D", parent, "-j", chain)
            if self._ipt("-t", table, "-S", chain, check=False).returncode == 0:
                self._ipt("-t", table, "-F", chain)
                self._ipt("-t", table, "-X", chain)


def close_project(
    client: docker.DockerClient, key: str, hub: HubPath, firewall: Firewall | None = None
) -> ProjectNetwork:
    """Network plus firewall for one project: what the spawner calls before it starts a project server."""
    net = ensure_project_network(client, key)
    (firewall or Firewall()).allow_project(net, hub)
    return net


def forget_projects(keys: Sequence[str], firewall: Firewall | None = None) -> None:
    """Drop the firewall rules of projects that are gone (their networks removed)."""
    fw = firewall or Firewall()
    for key in keys:
        fw.remove_project(key)
