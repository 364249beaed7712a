"""A real three-node Docker Swarm on this machine (scripts/swarm.sh: Docker-in-Docker nodes from gpuhub/node).

What is checked, through the nodes' own engines: three nodes Ready (one manager, two workers), each declaring its
simulated GPUs as node labels, and the inventory :mod:`gpuhub.host.swarm` reads equals what each node declared
(read back independently with the docker CLI); services placed by :func:`quota.placement.place` run on the node
that owns their UUIDs, with exactly those UUIDs in the container's env and labels; an attachable overlay network
spans nodes; a drained node and a killed node offer nothing (and a killed node comes back with the same GPUs);
the nodes' network has no route off the host.

The service image is our base image ``debian:bookworm-slim`` (scripts/base-image.sh), copied from this host's
engine onto every node with ``scripts/swarm.sh load`` (``docker save IMG | docker -H unix://$GPUHUB_RUN/swarm/
NAME/node-I/docker.sock load``); the nodes reach no registry. The cluster is ``gpuhub-swt`` (not the demo's
``gpuhub-swarm``) and is removed by label afterwards; the nodes' logs are printed when a test failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from gpuhub.host import swarm
from quota.placement import NoPlacement, offers_from_swarm, place
from tests.harness import ROOT
from tests.procs import module_failed
from tests.swarm.kit import SCRIPT, SwarmScript, wait_for

pytestmark = pytest.mark.docker

NAME = "gpuhub-swt"
NODES = 3
GPUS = 2
SWARM = SwarmScript(NAME, NODES, GPUS, timeout=300)
sock, sh = SWARM.sock, SWARM.sh
IMAGE = "debian:bookworm-slim"
WEIGHTS = {"H100": 1.0}


def dump_logs() -> str:
    parts = []
    for i in range(1, NODES + 1):
        logs = sh("docker", "logs", "--tail", "60", f"{NAME}-{i}", check=False)
        parts.append(f"--- docker logs {NAME}-{i} (last 60 lines)\n{logs.stdout[-3000:]}{logs.stderr[-6000:]}")
    parts.append(sh("docker", "-H", sock(1), "node", "ls", check=False).stdout)
    parts.append(sh("docker", "-H", sock(1), "service", "ls", check=False).stdout)
    return "\n".join(parts)


@pytest.fixture(scope="module")
def cluster(request, docker_client):
    sh(SCRIPT, "down")  # leftovers of an interrupted run
    try:
        up = sh(SCRIPT, "up")
        sh(SCRIPT, "load", IMAGE)
        client = swarm.swarm_client(sock(1))
        yield client, up.stdout
    finally:
        if module_failed(request):
            print(dump_logs())
        sh(SCRIPT, "down", check=False)
        left = sh("docker", "ps", "-aq", "--filter", f"label=gpuhub.swarm.cluster={NAME}").stdout.split()
        assert not left, f"scripts/swarm.sh down left node containers: {left}"


def by_host(client) -> dict[str, swarm.SwarmNode]:
    return {n.hostname: n for n in swarm.read_nodes(client)}


def test_three_nodes_ready_each_declares_its_gpus_and_the_inventory_matches(cluster):
    client, up_out = cluster
    nodes = by_host(client)
    assert sorted(nodes) == [f"{NAME}-{i}" for i in range(1, NODES + 1)]
    assert [(n.state, n.availability, n.offers) for n in nodes.values()] == [("ready", "active", True)] * NODES
    assert [n.role for n in nodes.values()] == ["manager", "worker", "worker"]
    for host, n in nodes.items():
        assert [(g.uuid, g.name, g.node_id) for g in n.gpus] == [(f"GPU-sim-{host}-{j}", "H100", n.id) for j in (0, 1)]
        assert n.gpu_source == "simulated"
        # independently: the docker CLI's view of the same node's labels
        spec = json.loads(sh("docker", "-H", sock(1), "node", "inspect", host).stdout)[0]["Spec"]
        declared = {k[len("gpuhub.gpu.") :]: v for k, v in spec["Labels"].items() if k.startswith("gpuhub.gpu.")}
        assert declared == {g.uuid: "H100" for g in n.gpus}
    offered = swarm.offered_gpus(nodes.values())
    assert len(offered) == NODES * GPUS and len({g.uuid for g in offered}) == NODES * GPUS
    assert "6 GPU(s) offered by 3 of 3 node(s)" in up_out  # what `make swarm-demo` prints


def test_register_again_is_idempotent_and_replaces_the_declaration(cluster):
    client, _ = cluster
    host = f"{NAME}-2"
    before = by_host(client)[host]
    version = client.api.inspect_node(before.id)["Version"]["Index"]
    swarm.register(client, host, [(g.uuid, g.name) for g in before.gpus], "simulated")
    assert client.api.inspect_node(before.id)["Version"]["Index"] == version  # nothing written
    again = sh(str(ROOT / ".venv/bin/gpuhub"), "node", "register", "--docker-host", sock(1), "--node", host,
               "--simulate", "3", "--model", "H100")  # fmt: skip
    assert f"{host} ({before.id[:12]}): 3 GPU(s) declared" in again.stdout
    assert len(by_host(client)[host].gpus) == 3
    sh(str(ROOT / ".venv/bin/gpuhub"), "node", "register", "--docker-host", sock(1), "--node", host,
       "--simulate", str(GPUS), "--model", "H100")  # fmt: skip
    assert by_host(client)[host].gpus == before.gpus


def test_up_again_changes_nothing_and_down_twice_is_fine(cluster):
    client, _ = cluster
    containers = sh("docker", "ps", "-q", "--filter", f"label=gpuhub.swarm.cluster={NAME}").stdout.split()
    nodes = [(n.id, n.role, n.gpus) for n in swarm.read_nodes(client)]
    again = sh(SCRIPT, "up")
    assert "swarm init" not in again.stderr and "swarm join" not in again.stderr and "==> node " not in again.stderr
    assert sh("docker", "ps", "-q", "--filter", f"label=gpuhub.swarm.cluster={NAME}").stdout.split() == containers
    assert [(n.id, n.role, n.gpus) for n in swarm.read_nodes(client)] == nodes
    other = {**os.environ, "GPUHUB_SWARM_NAME": "gpuhub-swt-none"}
    for _ in range(2):  # a cluster that is not there: nothing to remove, exit 0, this cluster untouched
        gone = subprocess.run([SCRIPT, "down"], capture_output=True, text=True, env=other, timeout=60)
        assert gone.returncode == 0 and "swarm gpuhub-swt-none is down" in gone.stderr
    assert sh("docker", "ps", "-q", "--filter", f"label=gpuhub.swarm.cluster={NAME}").stdout.split() == containers


def membership(client, i: int) -> tuple[list[tuple], str]:
    """Node ``i`` as the manager lists it ((state, role, GPU count, same id as the node's own) per entry of its
    hostname) and its own engine's swarm state."""
    info = json.loads(sh("docker", "-H", sock(i), "info", "--format", "{{json .Swarm}}").stdout)
    entries = [n for n in swarm.read_nodes(client) if n.hostname == f"{NAME}-{i}"]
    return [(n.state, n.role, len(n.gpus), n.id == info["NodeID"]) for n in entries], info["LocalNodeState"]


def test_up_brings_back_a_node_of_a_cut_off_run_and_one_of_another_swarm(cluster):
    """A run cut off before ``down`` leaves the nodes' engine volumes: a node made again used to start on that
    state, still a member of the dead cluster, and ``up`` failed with "This node is already part of a swarm" (seen
    in CI); now it gets a fresh engine. A node in another swarm is taken out of it. Either way it ends in node 1's
    swarm, once in the node list, with its GPUs."""
    client, _ = cluster
    host = f"{NAME}-3"
    rejoined = ([("ready", "worker", GPUS, True)], "active")  # listed once, ready, its GPUs; it agrees it is in

    old_id = by_host(client)[host].id
    sh("docker", "rm", "-f", host)  # its volume NAME-3-docker stays, as after a cut-off run
    assert sh("docker", "volume", "ls", "-q", "--filter", f"name={host}-docker").stdout.split() == [f"{host}-docker"]
    sh(SCRIPT, "up")
    wait_for(f"{host} in node 1's swarm", lambda: membership(client, 3) == rejoined)
    assert by_host(client)[host].id != old_id  # a fresh engine, not the dead run's state
    sh("docker", "-H", sock(3), "swarm", "leave", "--force")
    sh("docker", "-H", sock(3), "swarm", "init", "--advertise-addr", "127.0.0.1")  # a swarm of its own
    again = sh(SCRIPT, "up")
    assert f"{host} is 'active' in another swarm" in again.stderr, again.stderr
    wait_for(f"{host} in node 1's swarm", lambda: membership(client, 3) == rejoined)
    sh(SCRIPT, "load", IMAGE)  # the new node 3 has a new engine: the later tests' image


def node_container(i: int, service: str) -> dict:
    ids = sh("docker", "-H", sock(i), "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").stdout
    return json.loads(sh("docker", "-H", sock(i), "inspect", *ids.split()).stdout)[0] if ids.split() else {}


def test_services_run_on_the_node_placement_chose_with_exactly_its_uuids(cluster):
    client, _ = cluster
    nodes = swarm.read_nodes(client)
    index = {n.id: int(n.hostname.rsplit("-", 1)[1]) for n in nodes}
    offers, skipped = offers_from_swarm(nodes, WEIGHTS)
    assert not skipped
    held: set[str] = set()
    made = []
    try:
        for k in range(NODES):  # three 2-GPU servers: one whole node each
            p = place(offers, GPUS, "H100", held, WEIGHTS)
            assert not isinstance(p, NoPlacement), p
            held.update(p.devices)
            name = f"gpuhub-swt-server-{k}"
            uuids = ",".join(p.devices)
            client.services.create(
                IMAGE,
                ["sleep", "600"],
                name=name,
                env=[f"GPUHUB_GPUS={uuids}", f"GPUHUB_NODE={p.hostname}"],
                constraints=[swarm.node_constraint(p.node_id)],
                container_labels={"gpuhub.gpus": uuids, "gpuhub.node": p.hostname},
            )
            made.append((name, p))
        assert isinstance(place(offers, 1, "H100", held, WEIGHTS), NoPlacement)  # all six held
        assert sorted(p.hostname for _, p in made) == [f"{NAME}-{i}" for i in range(1, NODES + 1)]
        for name, p in made:
            i = index[p.node_id]
            c = wait_for(f"{name}'s container on {p.hostname}", lambda name=name, i=i: node_container(i, name), 90)
            env = dict(e.split("=", 1) for e in c["Config"]["Env"])
            assert env["GPUHUB_GPUS"] == ",".join(p.devices) == c["Config"]["Labels"]["gpuhub.gpus"]
            assert all(u.startswith(f"GPU-sim-{p.hostname}-") for u in p.devices)  # the node that owns them
            tasks = client.api.tasks(filters={"service": name, "desired-state": "running"})
            assert [t["NodeID"] for t in tasks] == [p.node_id]
            spec_env = tasks[0]["Spec"]["ContainerSpec"]["Env"]
            assert f"GPUHUB_GPUS={','.join(p.devices)}" in spec_env
            others = [j for j in range(1, NODES + 1) if j != i]
            assert not any(node_container(j, name) for j in others)
    finally:
        for name, _ in made:
            client.api.remove_service(name)


def test_a_service_constrained_to_node_2_runs_there_and_an_overlay_spans_nodes(cluster):
    client, _ = cluster
    n2 = by_host(client)[f"{NAME}-2"]
    net = client.networks.create("gpuhub-swt-overlay", driver="overlay", attachable=True)
    try:
        client.services.create(
            IMAGE, ["sleep", "600"], name="gpuhub-swt-on-2", constraints=[swarm.node_constraint(n2)], networks=[net.id]
        )
        c = wait_for("the service's container on node 2", lambda: node_container(2, "gpuhub-swt-on-2"), 90)
        ip = c["NetworkSettings"]["Networks"]["gpuhub-swt-overlay"]["IPAddress"]
        # from a container on node 3: a TCP connect to the task on node 2 is answered (refused: nothing listens),
        # i.e. the overlay carries traffic between nodes (a dropped packet would time out instead)
        out = sh("docker", "-H", sock(3), "run", "--rm", "--network", "gpuhub-swt-overlay", IMAGE, "bash", "-c",
                 f"timeout 5 bash -c 'echo > /dev/tcp/{ip}/80' 2>&1; echo rc=$?", timeout=60)  # fmt: skip
        assert "Connection refused" in out.stdout and "rc=1" in out.stdout, out.stdout + out.stderr
    finally:
        client.api.remove_service("gpuhub-swt-on-2")
        wait_for("the service's container to go", lambda: not node_container(2, "gpuhub-swt-on-2"), 60)
        wait_for("the overlay to be removable", lambda: _remove_network(client, net.id), 30)


def _remove_network(client, net_id: str) -> bool:
    import docker.errors

    try:
        client.api.remove_network(net_id)
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError:
        return False
    return True


def set_availability(client, node: swarm.SwarmNode, availability: str) -> None:
    attrs = client.api.inspect_node(node.id)
    client.api.update_node(node.id, attrs["Version"]["Index"], {**attrs["Spec"], "Availability": availability})


def test_a_drained_node_offers_nothing_and_placement_never_picks_it(cluster):
    client, _ = cluster
    n3 = by_host(client)[f"{NAME}-3"]
    set_availability(client, n3, "drain")
    try:
        nodes = swarm.read_nodes(client)
        drained = next(n for n in nodes if n.id == n3.id)
        assert (drained.availability, drained.offers, len(drained.gpus)) == ("drain", False, GPUS)
        assert {g.hostname for g in swarm.offered_gpus(nodes)} == {f"{NAME}-1", f"{NAME}-2"}
        offers, _ = offers_from_swarm(nodes, WEIGHTS)
        others_held = {g.uuid for n in nodes if n.id != n3.id for g in n.gpus}
        out = place(offers, 1, "H100", others_held, WEIGHTS)
        assert isinstance(out, NoPlacement), out
        assert out.shortage == "0 H100 GPUs are free on the nodes that take servers and 1 were requested"
    finally:
        set_availability(client, n3, "active")
    assert by_host(client)[f"{NAME}-3"].offers


def test_a_killed_node_is_down_offers_nothing_and_returns_with_its_gpus_and_no_orphan(cluster):
    """docker kill of node 3 (its engine and its containers die at once): the manager sees it down, it offers
    nothing, its server's task is to be shut down; after docker start it is ready with the same id and GPUs, and the
    server it ran is not running again (a service with restart condition none, as a user server's must be)."""
    client, _ = cluster
    host = f"{NAME}-3"
    before = by_host(client)[host]
    client.services.create(
        IMAGE,
        ["sleep", "600"],
        name="gpuhub-swt-on-3",
        constraints=[swarm.node_constraint(before)],
        restart_policy={"Condition": "none"},
    )
    wait_for("the server's container on node 3", lambda: node_container(3, "gpuhub-swt-on-3"), 90)
    try:
        sh("docker", "kill", host)
        t0 = time.monotonic()
        down = wait_for(f"{host} to be seen down", lambda: (n := by_host(client)[host]).state == "down" and n, 60)
        seen_down_s = time.monotonic() - t0
        print(f"{host} seen down {seen_down_s:.1f} s after docker kill")
        assert not down.offers
        assert {g.hostname for g in swarm.offered_gpus(swarm.read_nodes(client))} == {f"{NAME}-1", f"{NAME}-2"}
        tasks = client.api.tasks(filters={"service": "gpuhub-swt-on-3"})
        assert [t["DesiredState"] for t in tasks] == ["shutdown"]
        sh("docker", "start", host)
        back = wait_for(f"{host} to be ready again", lambda: (n := by_host(client)[host]).state == "ready" and n, 120)
        print(f"{host} ready again {time.monotonic() - t0 - seen_down_s:.1f} s after docker start")
        assert back.offers and back.id == before.id and back.gpus == before.gpus
        ended = wait_for(
            "the killed server's task to be reported ended",
            lambda: [t for t in client.api.tasks(filters={"service": "gpuhub-swt-on-3"})
                     if t["Status"]["State"] in ("failed", "shutdown", "complete")],
            60,
        )  # fmt: skip
        assert len(ended) == 1 and len(client.api.tasks(filters={"service": "gpuhub-swt-on-3"})) == 1  # no new task
        c = node_container(3, "gpuhub-swt-on-3")
        assert not c or not c["State"]["Running"], "the killed node's server runs again after the node returned"
    finally:
        client.api.remove_service("gpuhub-swt-on-3")


def test_the_nodes_network_is_internal_and_the_host_forwards_nothing_off_it(cluster):
    """Nodes talk only among themselves: their one network is an --internal bridge, for which the host's engine
    drops every forwarded packet that enters or leaves the bridge from or to another subnet (Docker gives its
    containers a default route all the same, so the proof is the host's filter rules, not the routes)."""
    net = json.loads(sh("docker", "network", "inspect", f"{NAME}-net").stdout)[0]
    assert net["Internal"] is True and net["Labels"]["gpuhub.swarm"] == "1"
    assert len(net["Containers"]) == NODES
    for i in range(1, NODES + 1):
        attached = json.loads(sh("docker", "inspect", f"{NAME}-{i}").stdout)[0]["NetworkSettings"]["Networks"]
        assert list(attached) == [f"{NAME}-net"]
    bridge, subnet = f"br-{net['Id'][:12]}", net["IPAM"]["Config"][0]["Subnet"]
    rules = set(sh("iptables", "-S").stdout.splitlines())
    assert f"-A DOCKER-ISOLATION-STAGE-1 ! -d {subnet} -i {bridge} -j DROP" in rules  # nothing out
    assert f"-A DOCKER-ISOLATION-STAGE-1 ! -s {subnet} -o {bridge} -j DROP" in rules  # nothing in
