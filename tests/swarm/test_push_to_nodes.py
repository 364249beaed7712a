"""`gpuhub images push-to-nodes` against a real two-node Docker-in-Docker swarm (issue 19: curated images reach every
node without a registry).

``scripts/swarm.sh up`` records each node's engine socket as its ``gpuhub.engine`` label; push-to-nodes, given only
the manager, finds every node's engine from it and streams ``docker save`` from this host into the node's ``load``
where the ids differ. Checked with a tiny image built here FROM debian:bookworm-slim and tagged uniquely: copied to both
nodes (their engines then report this host's id), skipped when unchanged, copied again after a rebuild changes the
id; a node whose engine does not answer is reported with the fix and the exit status is 1 while the other node is
still served; ``scripts/swarm.sh load`` is the same command.

Cluster ``gpuhub-swp`` (its own), removed by label afterwards unless GPUHUB_TEST_KEEP_SWARM=1.
"""

from __future__ import annotations

import io
import json
import os
import subprocess

import pytest

from tests.harness import ROOT
from tests.swarm.kit import SCRIPT, SwarmScript

pytestmark = pytest.mark.docker

NAME = "gpuhub-swp"
SWARM = SwarmScript(NAME, nodes=2, gpus=1, timeout=300)
sock, sh = SWARM.sock, SWARM.sh
GPUHUB = str(ROOT / ".venv" / "bin" / "gpuhub")
BASE = "debian:bookworm-slim"  # small (~100 MB): the copies are quick
IMAGE = f"gpuhub/push-test-{os.getpid()}:latest"
TEST_LABEL = "gpuhub.test=push-to-nodes"


@pytest.fixture(scope="module")
def cluster(docker_client):
    sh(SCRIPT, "down")
    try:
        sh(SCRIPT, "up")
        yield
    finally:
        if os.environ.get("GPUHUB_TEST_KEEP_SWARM") != "1":
            sh(SCRIPT, "down", check=False)
        for img in docker_client.images.list(filters={"label": TEST_LABEL}):
            docker_client.images.remove(img.id, force=True)


def build(docker_client, version: str) -> str:
    """The test image, FROM the base image, with ``version`` baked in (another version: another id)."""
    dockerfile = f"FROM {BASE}\nLABEL {TEST_LABEL} gpuhub.test.version={version}\n"
    img, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=IMAGE, rm=True)
    return img.id


def push(*extra: str) -> tuple[int, dict[str, str]]:
    """Run the command; (exit status, {node: its line})."""
    out = sh(GPUHUB, "images", "push-to-nodes", "--docker-host", sock(1), *extra, IMAGE, check=False)
    print(out.stdout, out.stderr[-2000:])
    lines = {line.split(" ", 1)[0].rstrip(":"): line for line in out.stdout.splitlines() if line.startswith(NAME)}
    return out.returncode, lines


def ids_on_nodes() -> list[str | None]:
    ids = []
    for i in (1, 2):
        out = sh("docker", "-H", sock(i), "image", "inspect", "-f", "{{.Id}}", IMAGE, check=False)
        ids.append(out.stdout.strip() if out.returncode == 0 else None)
    return ids


def node_rows() -> dict[str, dict]:
    rows = json.loads(sh(GPUHUB, "node", "list", "--docker-host", sock(1), "--format", "json").stdout)
    return {r["hostname"]: r for r in rows}


def test_up_records_each_nodes_engine_as_a_label_and_register_changes_it_alone(cluster):
    assert {h: r["engine_url"] for h, r in node_rows().items()} == {f"{NAME}-1": sock(1), f"{NAME}-2": sock(2)}
    before = node_rows()[f"{NAME}-2"]
    other = "ssh://ops@gpu-node-2"
    try:
        sh(GPUHUB, "node", "register", "--docker-host", sock(1), "--node", f"{NAME}-2", "--engine-url", other)
        after = node_rows()[f"{NAME}-2"]
        assert after["engine_url"] == other and after["gpus"] == before["gpus"]  # its GPU declaration kept
    finally:
        sh(GPUHUB, "node", "register", "--docker-host", sock(1), "--node", f"{NAME}-2", "--engine-url", sock(2))


def test_copied_where_missing_skipped_when_unchanged_copied_again_after_a_rebuild(cluster, docker_client):
    first = build(docker_client, "1")
    assert ids_on_nodes() == [None, None]
    rc, lines = push()
    assert rc == 0 and set(lines) == {f"{NAME}-1", f"{NAME}-2"}
    assert all(line.endswith(f"copied {IMAGE}") for line in lines.values()), lines
    assert ids_on_nodes() == [first, first]  # the nodes hold this host's image, by id

    rc, lines = push()
    assert rc == 0 and all(line.endswith(f"already there: {IMAGE}") for line in lines.values()), lines

    second = build(docker_client, "2")
    assert second != first
    rc, lines = push()
    assert rc == 0 and all(line.endswith(f"copied {IMAGE}") for line in lines.values()), lines
    assert ids_on_nodes() == [second, second]

    out = sh(SCRIPT, "load", IMAGE)  # the script's `load` is this same command
    assert out.stdout.count(f"already there: {IMAGE}") == 2, out.stdout


def test_a_node_whose_engine_does_not_answer_is_named_with_the_fix_and_fails_the_run(cluster, docker_client, tmp_path):
    build(docker_client, "3")  # a new id: node 1 gets it, node 2 cannot
    dead = f"unix://{tmp_path}/no-engine.sock"
    rc, lines = push("--node-engine", f"{NAME}-2={dead}")
    assert rc == 1
    assert lines[f"{NAME}-1"].endswith(f"copied {IMAGE}")
    assert lines[f"{NAME}-2"].startswith(f"{NAME}-2 ({dead}): unreachable: ")
    assert f"--node-engine {NAME}-2=URL" in lines[f"{NAME}-2"]


def test_an_image_this_host_lacks_is_refused_before_any_node_is_touched(cluster):
    out = sh(GPUHUB, "images", "push-to-nodes", "--docker-host", sock(1), "gpuhub/no-such-image:0", check=False)
    assert out.returncode == 2 and not out.stdout
    assert "image gpuhub/no-such-image:0 is not in this machine's Docker engine" in out.stderr


def test_the_node_list_is_read_from_a_manager_only():
    out = subprocess.run(
        [GPUHUB, "images", "push-to-nodes", "--docker-host", "unix:///nonexistent/docker.sock", BASE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "does not answer" in out.stderr and "--docker-host" in out.stderr
