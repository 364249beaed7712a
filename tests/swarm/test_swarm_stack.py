"""docker-stack.yml on a real three-node Docker Swarm (scripts/swarm.sh, Docker-in-Docker): the GPU exporter on
every node, Prometheus on the manager finding them through the Swarm API.

Deployed with ``docker stack deploy`` through the manager's engine, exactly as an operator would (the site file
has ``hub.engine: swarm`` and a metrics token, which reaches both sides as a Docker secret). Checked: one running
exporter task per node; the stack's Prometheus, queried from this host at the manager's address on its
host-mode published port, scrapes every node's exporter (``up == 1``, so the token was sent and accepted) and
each node's series carry that node's GPUs, the UUIDs of its node labels, under ``node=<hostname>``, and none of
the site's ``gpus.devices`` list; a labelled server container started on a worker's own engine shows up as that
GPU's holder under that worker only; from the manager's exporter task, a worker's exporter at its overlay
address answers 401 without the token and its metrics with it.

The exporter runs from this working tree: a thin image over gpuhub/hub:latest with ./exporters copied in is
built on each node (so a change here is tested before the hub image is rebuilt). Cluster ``gpuhub-sws``, removed
by label afterwards unless GPUHUB_TEST_KEEP_SWARM=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from gpuhub.host import swarm
from tests.harness import ROOT, default_site
from tests.procs import cleaned_up, module_failed
from tests.swarm.kit import SCRIPT, SwarmScript
from tests.swarm.kit import wait_for as kit_wait_for

pytestmark = pytest.mark.docker

NAME, STACK = "gpuhub-sws", "gpuhub-sws-mon"
NODES, GPUS = 3, 2
SWARM = SwarmScript(NAME, NODES, GPUS)
sock, sh = SWARM.sock, SWARM.sh
BASE, IMAGE, PROM_IMAGE = "gpuhub/hub:latest", "gpuhub/hub:sws-test", "prom/prometheus:v2.54.1"
SITE_PACKAGES = "/opt/gpuhub/venv/lib/python3.11/site-packages"
TOKEN = "sws-test-token"
TEST_LABEL = "gpuhub.test=swarm-stack"


def wait_for(what: str, fn, timeout: float = 90.0, every: float = 1.0):
    """The kit's wait, slower: a stack's tasks and Prometheus' scrapes take seconds."""
    return kit_wait_for(what, fn, timeout, every)


def on(i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("docker", "-H", sock(i), *args, check=check)


def build_tree_image() -> None:
    """This tree's exporters over the hub image, on every node. The image's bytecode is unchecked-hash .pyc
    (a copied .py would not be recompiled), so the copied package's __pycache__ goes."""
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copytree(ROOT / "exporters", Path(ctx) / "exporters", ignore=shutil.ignore_patterns("__pycache__"))
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {BASE}\nCOPY exporters {SITE_PACKAGES}/exporters\nRUN rm -rf {SITE_PACKAGES}/exporters/__pycache__\n"
        )
        for i in range(1, NODES + 1):
            on(i, "build", "-q", "-t", IMAGE, ctx)


@pytest.fixture(scope="module")
def cluster():
    sh(SCRIPT, "up")
    missing = [
        img
        for img in (BASE, PROM_IMAGE)
        if any(on(i, "image", "inspect", img, check=False).returncode for i in range(1, NODES + 1))
    ]
    if missing:
        sh(SCRIPT, "load", *missing)
    build_tree_image()
    client = swarm.swarm_client(sock(1))
    try:
        yield client
    finally:
        if os.environ.get("GPUHUB_TEST_KEEP_SWARM") != "1":
            sh(SCRIPT, "down", check=False)


class Stack:
    """The deployed stack; ``cleanup`` removes it (by its namespace label) and the test's containers."""

    def __init__(self, tmp: Path, client):
        self.client, self.tmp = client, tmp
        site = default_site(STACK, 8000, tmp / "state")
        site["hub"]["engine"] = "swarm"
        site["metrics_token_env"] = "GPUHUB_METRICS_TOKEN"
        (tmp / "site.yaml").write_text(json.dumps(site))
        (tmp / "token").write_text(TOKEN)
        self.site_devices = {d["uuid"] for d in site["gpus"]["devices"]}
        addr = subprocess.run(
            ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", f"{NAME}-1"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        self.prometheus = f"http://{addr}:9090"

    def deploy(self) -> None:
        env = {
            "GPUHUB_HUB_IMAGE": IMAGE,
            "GPUHUB_SITE_FILE": str(self.tmp / "site.yaml"),
            "GPUHUB_METRICS_TOKEN_PATH": str(self.tmp / "token"),
            "GPUHUB_EXPORTER_GPU_ARGS": f"--simulate {GPUS} --model H100",
        }
        cmd = ["docker", "-H", sock(1), "stack", "deploy", "-c", str(ROOT / "docker-stack.yml"), STACK]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, timeout=120)
        assert out.returncode == 0, f"docker stack deploy failed:\n{out.stdout}\n{out.stderr}"

    def query(self, promql: str) -> list[dict]:
        r = requests.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=5)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def try_query(self, promql: str) -> list[dict]:
        try:
            return self.query(promql)
        except requests.RequestException:
            return []

    def dump_logs(self) -> str:
        out = [on(1, "stack", "ps", "--no-trunc", STACK, check=False).stdout]
        for svc in ("gpu-exporter", "prometheus"):
            logs = on(1, "service", "logs", "--raw", "--tail", "40", f"{STACK}_{svc}", check=False)
            out.append(f"--- {svc}\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}")
        try:
            out.append(requests.get(f"{self.prometheus}/api/v1/targets", timeout=5).text[-4000:])
        except requests.RequestException as e:
            out.append(f"prometheus targets: {e}")
        return "\n".join(out)

    def cleanup(self) -> None:
        for i in range(1, NODES + 1):
            ids = on(i, "ps", "-aq", "--filter", f"label={TEST_LABEL}", check=False).stdout.split()
            if ids:
                on(i, "rm", "-f", *ids, check=False)
        on(1, "stack", "rm", STACK, check=False)
        wait_for(
            "the stack's network to go",
            lambda: not on(1, "network", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={STACK}").stdout,
            timeout=60,
        )


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory, cluster):
    s = Stack(tmp_path_factory.mktemp("stack"), cluster)
    with cleaned_up(request, s):
        s.deploy()
        yield s
        if module_failed(request):
            print(s.dump_logs())


def node_gpus(client) -> dict[str, set[str]]:
    return {n.hostname: {g.uuid for g in n.gpus} for n in swarm.read_nodes(client)}


def test_one_exporter_task_runs_on_every_node(stack):
    nodes = {n.id: n.hostname for n in swarm.read_nodes(stack.client)}

    def running():
        tasks = stack.client.api.tasks(filters={"service": f"{STACK}_gpu-exporter", "desired-state": "running"})
        return [nodes[t["NodeID"]] for t in tasks if t["Status"]["State"] == "running"]

    wait_for("an exporter task running on each node", lambda: sorted(running()) == sorted(nodes.values()))
    assert sorted(running()) == sorted(nodes.values())  # exactly one each: a global service


def test_prometheus_scrapes_every_nodes_exporter_with_its_gpus(stack):
    declared = node_gpus(stack.client)
    assert len(declared) == NODES and all(len(g) == GPUS for g in declared.values())

    def up():
        return {r["metric"]["node"]: r["value"][1] for r in stack.try_query('up{job="gpuhub-gpu"}')}

    wait_for("every node's exporter scraped with up == 1", lambda: up() == dict.fromkeys(declared, "1"))
    seen: dict[str, set[str]] = {}
    for r in stack.query("gpuhub_gpu_info"):
        seen.setdefault(r["metric"]["node"], set()).add(r["metric"]["uuid"])
    assert seen == declared  # each node's own GPUs, under that node, and nothing else
    free = {(r["metric"]["node"], r["metric"]["uuid"]) for r in stack.query("gpuhub_gpu_unallocated == 1")}
    assert free == {(node, u) for node, uuids in declared.items() for u in uuids}
    assert not stack.site_devices & {u for uuids in seen.values() for u in uuids}  # the site's list is unused


def test_a_workers_server_is_attributed_from_that_nodes_engine(stack):
    worker = f"{NAME}-{NODES}"
    uuid = sorted(node_gpus(stack.client)[worker])[0]
    labels = {"gpuhub.managed": "1", "gpuhub.hub": STACK, "gpuhub.user": "alice", "gpuhub.org": "gist-ai"}
    labels |= {"gpuhub.server": "", "gpuhub.gpus": uuid, "gpuhub.gpu-model": "H100"}
    flags = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
    on(NODES, "run", "-d", "--label", TEST_LABEL, *flags, "--entrypoint", "sleep", BASE, "600")
    query = f'gpuhub_gpu_allocated{{uuid="{uuid}"}} == 1'
    held = wait_for("the worker's server in Prometheus", lambda: stack.try_query(query), timeout=60)
    assert [(r["metric"]["node"], r["metric"]["user"], r["metric"]["org"]) for r in held] == [
        (worker, "alice", "gist-ai")
    ]
    wait_for("its GPU no longer free", lambda: not stack.try_query(f'gpuhub_gpu_unallocated{{uuid="{uuid}"}} == 1'))
    counted = stack.query('sum by (node) (gpuhub_gpu_allocated{org="gist-ai"})')
    assert {r["metric"]["node"]: r["value"][1] for r in counted} == {worker: "1"}


def test_an_exporter_on_another_node_answers_only_with_the_token(stack):
    """From the manager's exporter task, over the overlay, to a worker's exporter at its task address: the
    secret-file token is enforced in the stack too (what keeps any other task on the network out)."""
    worker = f"{NAME}-{NODES}"
    targets = requests.get(f"{stack.prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    url = next(t["scrapeUrl"] for t in targets if t["labels"]["node"] == worker)
    here = on(1, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={STACK}_gpu-exporter").stdout.split()
    assert len(here) == 1, f"expected one exporter container on the manager, found {here}"
    probe = (
        "import sys, urllib.request as u, urllib.error as e\n"
        "def get(h):\n"
        "    try:\n"
        "        r = u.urlopen(u.Request(sys.argv[1], headers=h), timeout=5); return r.status, r.read().decode()\n"
        "    except e.HTTPError as x: return x.code, ''\n"
        "print(get({})[0]); s, body = get({'Authorization': 'Bearer ' + sys.argv[2]}); print(s)\n"
        "print(sys.argv[3] in body)\n"
    )
    uuid = f"GPU-sim-{worker}-0"
    out = on(1, "exec", here[0], "python", "-c", probe, url, TOKEN, uuid).stdout.split()
    assert out == ["401", "200", "True"], f"{url}: without token, with token, {uuid} in body: {out}"
