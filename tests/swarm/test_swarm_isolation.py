"""Users' servers apart on a real two-node Docker Swarm (issue 19, item 4), through the real hub.

Three users start a 1-GPU server each on two nodes of two simulated GPUs (so at least two servers share a node and
at least one runs on the other). Each user's kernel then tries every other user's server — at the address the
proxy uses (the node's address and the published port) and at the container's own addresses (read from its node's
engine) — and the proxy's API on the hub's host: every attempt fails at once (refused or unreachable, never open),
on the same node and across nodes. The hub's API answers the same kernels, and the proxy still reaches every
server (its API answers through the proxy). The mechanism (no shared overlay, each node's DOCKER-USER rules
written by ``scripts/swarm.sh up``) is described at ``firewall_node`` in scripts/swarm.sh and in docs/scaling.md.

Then (item 7) a fourth user asks for a catalog image that the manager has but the node with the last free GPU
lacks: the spawn fails at once, before the server's service exists, with an error that names the node and
``scripts/swarm.sh load IMAGE``; no GPU stays held.

Last (issue 19, the firewall at boot), the worker node is restarted (``docker restart``, as a rebooted host) and
``scripts/swarm.sh up`` is not run again: the node's entrypoint has written the rules before its dockerd started
(``iptables -S`` in the node shows them, with dockerd's own chains after them), and a server started on it after
the restart is again unreachable from the other node's users' kernels (its published address and its own), while
the proxy still reaches it.

Cluster ``gpuhub-swi`` (its own: two nodes), removed by label afterwards unless GPUHUB_TEST_KEEP_SWARM=1.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import pytest
import requests

from gpuhub.host import swarm
from tests.harness import BASE_IMAGE
from tests.procs import cleaned_up
from tests.swarm.kit import SCRIPT, SwarmScript
from tests.swarm.test_swarm_hub import SwarmHub, ledger

pytestmark = pytest.mark.docker

NAME, NODES, GPUS = "gpuhub-swi", 2, 2
SWARM = SwarmScript(NAME, NODES, GPUS)
sock, sh = SWARM.sock, SWARM.sh
USERS = ("iso-a", "iso-b", "iso-c")
LATE = "iso-d"  # asks for PARTIAL, an image only the manager (node 1) has
PARTIAL = "gpuhub/swi-partial:latest"
PROBE_TIMEOUT = 3.0  # seconds a kernel waits for one connection: a refusal comes at once, a drop ends here

# what a kernel runs: connect to each (label, host, port); print one JSON line {label: [outcome, seconds]}
PROBE = """
import json, socket, time, urllib.request, os
out = {}
for label, host, port in TARGETS:
    t = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
        what = "open"
    except OSError as e:
        what = type(e).__name__
    out[label] = [what, round(time.monotonic() - t, 2)]
api = os.environ["JUPYTERHUB_API_URL"]
out["hub-api"] = [json.load(urllib.request.urlopen(api + "/", timeout=TIMEOUT)).get("version", "?"), 0]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cluster():
    sh(SCRIPT, "up")
    if any(sh("docker", "-H", sock(i), "image", "inspect", BASE_IMAGE, check=False).returncode for i in (1, 2)):
        sh(SCRIPT, "load", BASE_IMAGE)
    try:
        yield swarm.swarm_client(sock(1))
    finally:
        if os.environ.get("GPUHUB_TEST_KEEP_SWARM") != "1":
            sh(SCRIPT, "down", check=False)


class IsolationHub(SwarmHub):
    """The swarm hub of test_swarm_hub, on this module's cluster."""

    def env(self) -> dict:
        return {**super().env(), "DOCKER_HOST": sock(1)}

    def cleanup(self) -> None:
        self.stop()
        self.kill_proxy()
        for s in self.services():
            self.docker.api.remove_service(s["ID"])
        super(SwarmHub, self).cleanup()
        for i in range(2, NODES + 1):  # the home volumes on the worker
            vols = sh("docker", "-H", sock(i), "volume", "ls", "-q", "--filter", f"name={self.instance}-", check=False)
            if vols.stdout.split():
                sh("docker", "-H", sock(i), "volume", "rm", "-f", *vols.stdout.split(), check=False)


@pytest.fixture(scope="module")
def servers(request, tmp_path_factory, cluster):
    """The hub and its three servers: {user: where it is} (node, published address, container addresses)."""
    hub = IsolationHub(tmp_path_factory.mktemp("swarmiso"), cluster, users=(*USERS, LATE))
    hub.site["images"]["partial"] = {"image": PARTIAL, "display_name": "Only on the manager"}
    hub.site_path.write_text(json.dumps(hub.site))
    sh("docker", "-H", sock(1), "tag", BASE_IMAGE, PARTIAL)
    request.addfinalizer(lambda: sh("docker", "-H", sock(1), "rmi", PARTIAL, check=False))
    with cleaned_up(request, hub):
        hub.start()
        with concurrent.futures.ThreadPoolExecutor(len(USERS)) as pool:
            answers = list(pool.map(lambda u: hub.spawn(u, {"image": "python", "gpus": 1}), USERS))
        assert all(r.status_code in (201, 202) for r in answers), [(r.status_code, r.text[:300]) for r in answers]
        for u in USERS:
            hub.wait_ready(u, timeout=300)
        yield hub, {s["Spec"]["Labels"]["gpuhub.user"]: where(cluster, s) for s in hub.services()}


def where(cluster, service: dict) -> dict:
    (task,) = cluster.api.tasks(filters={"service": service["ID"], "desired-state": "running"})
    node = cluster.api.inspect_node(task["NodeID"])
    (port,) = [p["PublishedPort"] for p in task["Status"]["PortStatus"]["Ports"]]
    i = int(node["Description"]["Hostname"].rsplit("-", 1)[1])
    ids = sh("docker", "-H", sock(i), "ps", "-q", "--filter", f"label=com.docker.swarm.task.id={task['ID']}").stdout
    (c,) = json.loads(sh("docker", "-H", sock(i), "inspect", *ids.split()).stdout)
    own = sorted({n["IPAddress"] for n in c["NetworkSettings"]["Networks"].values() if n["IPAddress"]})
    env = dict(e.split("=", 1) for e in service["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"])
    return {"node": node["Description"]["Hostname"], "published": (node["Status"]["Addr"], port), "own": own,
            "hub_api": env["JUPYTERHUB_API_URL"], "networks": sorted(c["NetworkSettings"]["Networks"])}  # fmt: skip


def test_no_server_joins_a_shared_network(servers):
    _hub, at = servers
    print({u: (w["node"], w["networks"], w["own"]) for u, w in at.items()})
    assert len({w["node"] for w in at.values()}) == NODES  # both nodes hold servers: same-node and cross-node pairs
    assert all(w["networks"] == ["bridge"] for w in at.values())  # the node's default bridge, no overlay


def test_a_users_kernel_reaches_no_other_server_nor_the_proxy_api_but_the_hub_api(servers):
    hub, at = servers
    hub_host = at[USERS[0]]["hub_api"].split("//", 1)[1].rsplit(":", 1)[0]  # the hub's host, as servers see it
    pairs = {"same node": 0, "other node": 0}
    for user, me in at.items():
        targets = [("proxy-api", hub_host, hub.site["hub"]["proxy_api_port"])]
        for other, it in at.items():
            if other != user:
                targets.append((f"{other} published", *it["published"]))
                targets += [(f"{other} at {ip}", ip, 8888) for ip in it["own"]]
                pairs["same node" if it["node"] == me["node"] else "other node"] += 1
        code = f"TARGETS = {targets!r}\nTIMEOUT = {PROBE_TIMEOUT}\n{PROBE}"
        printed = hub.run_code(user, code, timeout=90)
        seen = json.loads(printed.strip().splitlines()[-1])
        print(user, me["node"], seen)
        assert seen.pop("hub-api")[0] not in ("", "?")  # the hub's API answered (its version)
        opened = {label: outcome for label, outcome in seen.items() if outcome[0] == "open"}
        assert not opened, f"{user}'s kernel on {me['node']} opened {opened}"
        slow = {label: o for label, o in seen.items() if o[1] > PROBE_TIMEOUT + 0.5}
        assert not slow
    assert pairs["same node"] and pairs["other node"], pairs


def test_the_proxy_still_reaches_every_server(servers):
    hub, at = servers
    for user in at:
        token = hub.user_token(user)
        r = requests.get(f"{hub.url}/user/{user}/api/status", headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code == 200, (user, r.status_code, r.text[:300])


def test_a_node_without_the_image_refuses_the_spawn_naming_the_node_and_the_fix(servers):
    hub, at = servers
    per_node = {n: sum(w["node"] == n for w in at.values()) for n in (f"{NAME}-1", f"{NAME}-2")}
    assert per_node == {f"{NAME}-1": 2, f"{NAME}-2": 1}  # pack: the one free GPU is on the worker, which lacks PARTIAL
    r = hub.spawn(LATE, {"image": "partial", "gpus": 1, "queue": False})
    if r.status_code == 202:  # slower than slow_spawn_timeout: the reason comes when the spawn has failed
        wait_for_stopped(hub, LATE)
        text = hub.log_lines(LATE)
    else:
        text = r.text
    print(r.status_code, text[-600:])
    assert f"not on the Swarm node {NAME}-2" in text
    # the fix the hub names: `scripts/swarm.sh load IMAGE`, or (once the hub's hint names it) the command itself
    assert f"scripts/swarm.sh load {PARTIAL}" in text or f"gpuhub images push-to-nodes {PARTIAL}" in text
    assert not [s for s in hub.services() if s["Spec"]["Labels"].get("gpuhub.user") == LATE]  # no server service
    assert f"{LATE}/" not in ledger(hub).values()  # its GPU went back


def wait_for_stopped(hub, user: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while hub.api("GET", f"/users/{user}").json().get("pending"):
        assert time.monotonic() < deadline, f"{user}'s spawn still pending after {timeout} s"
        time.sleep(0.5)


def test_a_restarted_node_keeps_servers_apart_without_running_up_again(servers):
    hub, at = servers
    worker = f"{NAME}-2"
    (moved,) = [u for u, w in at.items() if w["node"] == worker]  # the one server there: stopped, restarted after
    hub.stop_server(moved)
    since = str(int(time.time()) - 1)
    sh("docker", "restart", worker)
    # its engine answers only once the boot is past the firewall (the entrypoint writes it before dockerd starts)
    wait_until(f"{worker}'s engine back in the swarm", lambda: engine_state(2) == "active", timeout=120)
    wait_until(f"{worker} ready in the swarm again", lambda: node_state(hub, worker) == "ready", timeout=120)

    rules = sh("docker", "exec", worker, "iptables", "-S").stdout.splitlines()
    hub_addr = sh("docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", f"{NAME}-net")
    hub_addr = hub_addr.stdout.strip()
    assert f"-A GPUHUB-ISOLATE ! -s {hub_addr}/32 -m conntrack --ctstate DNAT -j GPUHUB-REFUSE" in rules, rules
    assert "-A GPUHUB-ISOLATE -i docker0 -o docker0 -j GPUHUB-REFUSE" in rules
    assert "-A DOCKER-USER -m conntrack --ctstate NEW -j GPUHUB-ISOLATE" in rules
    forward = [r for r in rules if r.startswith("-A FORWARD ")]
    assert forward[0] == "-A FORWARD -j DOCKER-USER" and len(forward) > 1, forward  # dockerd's own rules after it
    boot = sh("docker", "logs", "--since", since, worker)
    boot = boot.stdout + boot.stderr
    assert f"gpuhub-node-firewall: servers apart; published ports only from {hub_addr}" in boot  # at boot

    r = spawn_when_placed(hub, moved)
    assert r.status_code in (201, 202), (r.status_code, r.text[:300])
    hub.wait_ready(moved, timeout=300)
    (service,) = [s for s in hub.services() if s["Spec"]["Labels"].get("gpuhub.user") == moved]
    it = where(hub.docker, service)
    assert it["node"] == worker, it  # the only free GPU is there
    for user in (u for u, w in at.items() if w["node"] != worker):
        targets = [(f"{moved} published", *it["published"])] + [(f"{moved} at {ip}", ip, 8888) for ip in it["own"]]
        printed = hub.run_code(user, f"TARGETS = {targets!r}\nTIMEOUT = {PROBE_TIMEOUT}\n{PROBE}", timeout=90)
        seen = json.loads(printed.strip().splitlines()[-1])
        print(user, seen)
        seen.pop("hub-api")
        assert not {label: o for label, o in seen.items() if o[0] == "open" or o[1] > PROBE_TIMEOUT + 0.5}, seen
    token = hub.user_token(moved)
    r = requests.get(f"{hub.url}/user/{moved}/api/status", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text[:300])  # the hub's host is still admitted


def engine_state(i: int) -> str:
    out = sh("docker", "-H", sock(i), "info", "--format", "{{.Swarm.LocalNodeState}}", check=False)
    return out.stdout.strip() if out.returncode == 0 else "no answer"


def node_state(hub, hostname: str) -> str:
    return next((n.state for n in swarm.read_nodes(hub.docker) if n.hostname == hostname), "missing")


def spawn_when_placed(hub, user: str, timeout: float = 60):
    """The spawn, retried while the hub does not yet count the restarted node's GPU as free (its inventory cache)."""
    deadline = time.monotonic() + timeout
    while True:
        r = hub.spawn(user, {"image": "python", "gpus": 1, "queue": False})
        if r.status_code in (201, 202) or time.monotonic() > deadline:
            return r
        time.sleep(2)


def wait_until(what: str, fn, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(1)
