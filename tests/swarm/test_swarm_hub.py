"""The real hub with ``hub.engine: swarm`` on a real three-node Docker Swarm (scripts/swarm.sh, Docker-in-Docker).

The hub runs on this host with ``DOCKER_HOST`` at the manager's engine (node 1); each node declares two simulated
H100s (``gpuhub node register --simulate``). Six users start a 1-GPU server each at once, through the hub's REST
API. Checked for every server: it runs on the node that owns its UUIDs, no UUID is held twice, and the UUIDs in
the ledger, in the service spec and in the container's env (read from that node's own engine) are the same; the
server answers a kernel through the proxy on every node, with ``GPUHUB_NODE`` its node, as the user's UID, every
capability dropped and no-new-privileges set. Then a worker node is killed: within the reconcile interval (after
the manager sees it down) its servers are closed in the ledger, its GPUs are no longer offered, the other nodes'
servers run on; when it returns nothing is counted twice and no service of the killed servers is left.

Cluster ``gpuhub-swh`` (not the demo's), removed by label afterwards unless GPUHUB_TEST_KEEP_SWARM=1 (the catalog
image takes minutes to load onto three nodes on a small machine; keeping the cluster makes a rerun fast).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import pytest

from gpuhub.core.site import load_site
from gpuhub.host import swarm
from quota.store import QuotaStore
from tests.harness import BASE_IMAGE, HubProcess, default_site
from tests.procs import cleaned_up, module_failed
from tests.swarm.kit import SCRIPT, SwarmScript

pytestmark = pytest.mark.docker

NAME = "gpuhub-swh"
NODES, GPUS, USERS = 3, 2, [f"user{i}" for i in range(1, 7)]
SWARM = SwarmScript(NAME, NODES, GPUS)
sock, sh = SWARM.sock, SWARM.sh


def wait_for(what: str, fn, timeout: float = 60.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last value {value!r}")
        time.sleep(every)


@pytest.fixture(scope="module")
def cluster(request, docker_client):
    sh(SCRIPT, "up")
    for i in range(1, NODES + 1):  # the catalog image, once per node (scripts/swarm.sh load copies to all)
        if sh("docker", "-H", sock(i), "image", "inspect", BASE_IMAGE, check=False).returncode != 0:
            sh(SCRIPT, "load", BASE_IMAGE)
            break
    client = swarm.swarm_client(sock(1))
    try:
        yield client
    finally:
        if os.environ.get("GPUHUB_TEST_KEEP_SWARM") != "1":
            sh(SCRIPT, "down", check=False)


class SwarmHub(HubProcess):
    """The harness's hub with the manager's engine as its Docker engine; cleanup removes its services."""

    def __init__(self, tmp, client, users=tuple(USERS)):
        super().__init__(tmp)
        site = default_site(self.instance, self.port, self.state)
        site["hub"]["engine"] = "swarm"
        site["hub"]["instance"], site["hub"]["bind_url"] = self.instance, self.url
        site["gpus"] = {"runtime": "none", "models": {"H100": {"weight": 1.0}}, "max_gpus_per_user": 2}
        site["containers"] = {"mem_limit": "512M", "cpu_limit": 1.0, "pids_limit": 256}
        site["organizations"] = {
            "lab": {
                "members": list(users),
                "gpu_limit": len(users),
                "gpu_hours_per_month": 100,
                "max_gpus_per_server": 2,
            }
        }
        self.site = site
        self.site_path.write_text(json.dumps(site))
        self.docker = client

    def env(self) -> dict:
        return {**super().env(), "DOCKER_HOST": sock(1)}

    def services(self) -> list[dict]:
        return self.docker.api.services(filters={"label": [f"gpuhub.hub={self.instance}"]})

    def cleanup(self) -> None:
        self.stop()
        self.kill_proxy()
        for s in self.services():
            self.docker.api.remove_service(s["ID"])
        super().cleanup()  # containers, volumes and the overlay on the manager
        for i in range(2, NODES + 1):  # the home volumes on the workers
            vols = sh("docker", "-H", sock(i), "volume", "ls", "-q", "--filter", f"name={self.instance}-", check=False)
            if vols.stdout.split():
                sh("docker", "-H", sock(i), "volume", "rm", "-f", *vols.stdout.split(), check=False)


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, cluster):
    h = SwarmHub(tmp_path_factory.mktemp("swarmhub"), cluster)
    with cleaned_up(request, h):
        h.start()
        yield h
        if module_failed(request):
            print(sh("docker", "-H", sock(1), "service", "ps", "--no-trunc", *[s["ID"] for s in h.services()],
                     check=False).stdout)  # fmt: skip


def ledger(hub) -> dict[str, str]:
    store = QuotaStore.from_site(load_site(hub.site_path))
    try:
        return {h["device_uuid"]: h["server_key"] for h in store.holdings()}
    finally:
        store.engine.dispose()


def node_index(hostname: str) -> int:
    return int(hostname.rsplit("-", 1)[1])


def container_on(i: int, service: str) -> dict:
    ids = sh("docker", "-H", sock(i), "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").stdout
    return json.loads(sh("docker", "-H", sock(i), "inspect", *ids.split()).stdout)[0] if ids.split() else {}


@pytest.fixture(scope="module")
def six(hub):
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(USERS)) as pool:
        answers = list(pool.map(lambda u: hub.spawn(u, {"image": "python", "gpus": 1}), USERS))
    assert all(r.status_code in (201, 202) for r in answers), [(r.status_code, r.text[:300]) for r in answers]
    for u in USERS:
        hub.wait_ready(u, timeout=300)
    print(f"6 servers on 3 nodes ready {time.monotonic() - t0:.1f} s after the 6 concurrent spawns")
    return hub


def test_each_server_runs_on_the_node_owning_its_uuids_and_ledger_spec_and_env_agree(six, cluster):
    hub = six
    nodes = {n.id: n for n in swarm.read_nodes(cluster)}
    held = ledger(hub)
    assert len(held) == len(USERS) and sorted(held.values()) == sorted(f"{u}/" for u in USERS)  # 0 duplicates
    seen_nodes = set()
    services = {s["Spec"]["Name"]: s for s in hub.services()}
    assert len(services) == len(USERS)
    for name, s in services.items():
        spec = s["Spec"]["TaskTemplate"]["ContainerSpec"]
        env = dict(e.split("=", 1) for e in spec["Env"])
        user = spec["Labels"]["gpuhub.user"]
        uuids = env["GPUHUB_GPUS"].split(",")
        assert [held[u] for u in uuids] == [f"{user}/"]  # ledger == service spec
        (task,) = cluster.api.tasks(filters={"service": name, "desired-state": "running"})
        node = nodes[task["NodeID"]]
        assert s["Spec"]["TaskTemplate"]["Placement"]["Constraints"] == [f"node.id=={node.id}"]
        assert all(u.startswith(f"GPU-sim-{node.hostname}-") for u in uuids)  # the node that owns them
        assert env["GPUHUB_NODE"] == node.hostname == spec["Labels"]["gpuhub.node"]
        c = container_on(node_index(node.hostname), name)  # read from that node's own engine
        cenv = dict(e.split("=", 1) for e in c["Config"]["Env"])
        assert cenv["GPUHUB_GPUS"] == env["GPUHUB_GPUS"] == c["Config"]["Labels"]["gpuhub.gpus"]  # == container
        assert cenv["NVIDIA_VISIBLE_DEVICES"] == env["GPUHUB_GPUS"] and cenv["GPUHUB_NODE"] == node.hostname
        seen_nodes.add(node.hostname)
    assert seen_nodes == {f"{NAME}-{i}" for i in range(1, NODES + 1)}


def test_a_kernel_answers_through_the_proxy_on_every_node_hardened(six):
    hub = six
    code = (
        "import os\n"
        "s = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "print(os.environ['GPUHUB_NODE'], os.environ['GPUHUB_GPUS'], os.getuid(), s['CapEff'].strip(),"
        " s['NoNewPrivs'].strip())"
    )
    by_node = {}
    for u in USERS:
        node, uuids, uid, cap, nnp = hub.run_code(u, code, timeout=60).split()
        assert uuids.startswith(f"GPU-sim-{node}-")
        assert int(uid) >= 20000 and cap == "0000000000000000" and nnp == "1"
        by_node.setdefault(node, []).append(u)
    assert sorted(by_node) == [f"{NAME}-{i}" for i in range(1, NODES + 1)]


def test_a_killed_worker_closes_its_servers_frees_nothing_else_and_returns_without_double_counting(six, cluster):
    hub = six
    host = f"{NAME}-3"
    before = ledger(hub)
    on3 = {k for u, k in before.items() if u.startswith(f"GPU-sim-{host}-")}
    assert len(on3) == 2
    sh("docker", "kill", host)
    t0 = time.monotonic()
    try:
        wait_for(f"{host} down", lambda: next(n for n in swarm.read_nodes(cluster) if n.hostname == host).state
                 == "down", 60)  # fmt: skip
        seen_down = time.monotonic() - t0
        interval = hub.site["quota"]["reconcile_interval_seconds"]

        def closed_ledger():
            h = ledger(hub)
            return h if set(h.values()).isdisjoint(on3) else None

        after = wait_for("the killed node's servers closed", closed_ledger, interval + 15)
        closed = time.monotonic() - t0
        print(f"{host} seen down {seen_down:.1f} s after docker kill; its servers closed {closed:.1f} s after it")
        assert after == {u: k for u, k in before.items() if k not in on3}  # the other nodes' servers untouched
        want = {k.rstrip("/") for k in after.values()}
        wait_for("the hub to see them stopped (its poll, every poll_interval = 10 s)",
                 lambda: {u["name"] for u in hub.api("GET", "/users?state=active").json() if u["servers"]} == want,
                 20)  # fmt: skip
        print(f"the hub saw them stopped {time.monotonic() - t0:.1f} s after the kill")
        gone = sorted(k.rstrip("/") for k in on3)[0]  # its user asks again: nodes 1 and 2 are full, 3 offers nothing
        r = hub.spawn(gone, {"image": "python", "gpus": 1, "queue": False})  # the immediate answer, not the queue
        assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (429, "no-free-device"), r.text
    finally:
        sh("docker", "start", host)
    wait_for(f"{host} ready again", lambda: next(n for n in swarm.read_nodes(cluster) if n.hostname == host).offers,
             180)  # fmt: skip
    time.sleep(hub.site["quota"]["reconcile_interval_seconds"] * 2)
    assert ledger(hub) == after  # nothing counted twice
    names = {s["Spec"]["Name"] for s in hub.services()}
    assert len(names) == len(after)  # the killed servers' services are gone (no orphan)
    left = sh("docker", "-H", sock(3), "ps", "-q", "--filter", f"label=gpuhub.hub={hub.instance}").stdout.split()
    assert not left, "a killed server's container runs again on the returned node"
