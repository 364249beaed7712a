"""`gpuhub images push-to-nodes` without Docker: which node gets which image, where each node's engine is, and what
the operator reads per node (gpuhub.host.node_images). Engines are small fakes that record what was streamed."""

from __future__ import annotations

import docker.errors
import pytest

from gpuhub import cli
from gpuhub.host import node_images, swarm
from gpuhub.host.node_images import PushError, plan, targets


def node(host: str, state: str = "ready", engine: str | None = None, nid: str | None = None) -> swarm.SwarmNode:
    labels = {swarm.ENGINE_LABEL: engine} if engine else {}
    attrs = {"ID": nid or f"id-{host}", "Spec": {"Labels": labels, "Availability": "active", "Role": "worker"},
             "Description": {"Hostname": host}, "Status": {"State": state}}  # fmt: skip
    return swarm.node_from_attrs(attrs)


def test_plan_copies_what_is_missing_or_has_another_id_and_keeps_the_rest():
    local = {"a:1": "sha256:aaa", "b:1": "sha256:bbb", "c:1": "sha256:ccc"}
    assert plan(local, {"a:1": "sha256:aaa", "b:1": None, "c:1": "sha256:old"}) == (["b:1", "c:1"], ["a:1"])
    assert plan(local, dict(local)) == ([], ["a:1", "b:1", "c:1"])  # unchanged: nothing copied again
    assert plan(local, {}) == (["a:1", "b:1", "c:1"], [])


def test_targets_take_the_label_an_override_wins_and_a_node_not_ready_is_skipped():
    nodes = [
        node("n1", engine="unix:///run/n1.sock"),
        node("n2", engine="tcp://n2:2375"),
        node("n3"),
        node("n4", state="down", engine="tcp://n4:2375"),
    ]
    got = {t.hostname: t for t in targets(nodes, {"n2": "ssh://ops@n2"})}
    assert (got["n1"].engine_url, got["n1"].why) == ("unix:///run/n1.sock", None)
    assert got["n2"].engine_url == "ssh://ops@n2"  # --node-engine beats the label
    assert got["n3"].engine_url is None and got["n3"].why.startswith("unreachable: no engine URL known")
    assert (
        "gpuhub node register --node n3 --engine-url URL" in got["n3"].why and "--node-engine n3=URL" in got["n3"].why
    )
    assert "node is down in the swarm" in got["n4"].why


def test_an_override_naming_no_node_is_refused_with_the_known_nodes():
    with pytest.raises(swarm.SwarmError, match=r"no swarm node is 'n9'.*n1"):
        targets([node("n1", engine="tcp://n1:2375")], {"n9": "tcp://n9:2375"})


@pytest.mark.parametrize("spec", ["n1", "=tcp://x:1", "n1=", "n1=http://x", "n1=tcp:// x"])
def test_a_bad_node_engine_is_refused_naming_the_form(spec):
    with pytest.raises(PushError, match="--node-engine"):
        node_images.parse_node_engines([spec])


def test_node_engines_parse_unix_tcp_and_ssh():
    specs = ["a=unix:///run/a.sock", "b=tcp://10.0.0.2:2376", "c=ssh://ops@c"]
    assert node_images.parse_node_engines(specs) == {
        "a": "unix:///run/a.sock",
        "b": "tcp://10.0.0.2:2376",
        "c": "ssh://ops@c",
    }


class FakeApi:
    """The part of docker-py's APIClient push-to-nodes uses: images by name, save as chunks, load recorded."""

    def __init__(self, images: dict[str, str], fail_load: str | None = None):
        self.images, self.loaded, self.fail_load = dict(images), [], fail_load

    def inspect_image(self, name):
        if name not in self.images:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return {"Id": self.images[name]}

    def get_image(self, name, chunk_size=None):
        yield f"tar of {name}@{self.images[name]}".encode()

    def load_image(self, data):
        body = b"".join(data).decode()
        if self.fail_load:
            return iter([{"errorDetail": {"message": self.fail_load}, "error": self.fail_load}])
        name, image_id = body.removeprefix("tar of ").split("@")
        self.images[name] = image_id
        self.loaded.append(name)
        return iter([{"stream": f"Loaded image: {name}\n"}])


class FakeClient:
    def __init__(self, api: FakeApi):
        self.api, self.closed = api, False

    def close(self):
        self.closed = True


def test_push_copies_only_where_the_id_differs_and_a_failing_node_does_not_stop_the_others():
    local = FakeClient(FakeApi({"img:1": "sha256:new", "base:1": "sha256:base"}))
    engines = {
        "tcp://n1:2375": FakeApi({"img:1": "sha256:old", "base:1": "sha256:base"}),  # a rebuilt image, one current
        "tcp://n2:2375": FakeApi({"img:1": "sha256:new", "base:1": "sha256:base"}),  # up to date
        "tcp://n4:2375": FakeApi({}, fail_load="no space left on device"),
    }

    def connect(url):
        if url not in engines:
            raise ConnectionError(f"Connection refused: {url}")
        return FakeClient(engines[url])

    nodes = [node(h, engine=f"tcp://{h}:2375") for h in ("n1", "n2", "n3", "n4")] + [node("n5", state="down")]
    results = node_images.push(local, nodes, ["img:1", "base:1"], connect=connect)
    lines = {r.hostname: r.line() for r in results}
    assert engines["tcp://n1:2375"].loaded == ["img:1"] and engines["tcp://n1:2375"].images["img:1"] == "sha256:new"
    assert lines["n1"] == "n1 (tcp://n1:2375): copied img:1; already there: base:1"
    assert engines["tcp://n2:2375"].loaded == [] and lines["n2"].endswith("already there: img:1, base:1")
    assert "unreachable: Connection refused" in lines["n3"] and "--engine-url URL" in lines["n3"]
    assert lines["n4"].startswith("n4 (tcp://n4:2375): failed: no space left on device")
    assert lines["n5"].startswith("n5: skipped: node is down")
    assert [r.hostname for r in results if r.failed] == ["n3", "n4"]


def test_an_image_missing_here_is_refused_before_any_node_is_touched():
    touched = []
    with pytest.raises(PushError, match="image gone:1 is not in this machine's Docker engine"):
        node_images.push(FakeClient(FakeApi({})), [node("n1", engine="tcp://n1:1")], ["gone:1"], connect=touched.append)
    assert touched == []


def test_register_refuses_an_engine_url_docker_cannot_open(capsys):
    assert cli.main(["node", "register", "--engine-url", "http://n1:2375", "--docker-host", "unix:///nowhere"]) == 2
    err = capsys.readouterr().err
    assert "engine URL 'http://n1:2375' is not a Docker engine URL" in err and "does not answer" not in err
    with pytest.raises(swarm.SwarmError, match="rule: unix:///path, tcp://host:port or ssh://user@host"):
        swarm.check_engine_url("http://n1:2375")
