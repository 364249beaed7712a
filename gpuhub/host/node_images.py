"""Curated images onto every Swarm node without a registry: ``gpuhub images push-to-nodes`` (issue 19).

Why no registry: the nodes reach none (the hub's images are built offline, and a registry inside the swarm would
be one more service to secure, back up and keep in step); a task's image must already be on its node (the
spawner refuses a node without it with a 503 naming the node and this command). So the operator's machine, whose
engine has the built images, copies them to each node's own engine: ``docker save`` streamed into the node's
``docker load`` (the archive is never written to disk), and only where the node's image id differs from the local
one (an unchanged image is not copied again; a rebuilt one is).

Where each node's engine answers: the node label :data:`gpuhub.host.swarm.ENGINE_LABEL` (``gpuhub.engine``),
written through a manager by ``gpuhub node register --engine-url URL`` (``scripts/swarm.sh up`` writes each DinD
node's socket); ``--node-engine NODE=URL`` overrides it for one run. URLs are what docker-py opens: ``unix://``,
``tcp://`` (TLS through DOCKER_TLS_VERIFY/DOCKER_CERT_PATH is not wired here) and ``ssh://`` (through the system
``ssh`` client, so ``~/.ssh/config`` applies).

The pure part (which node gets which image: :func:`targets`, :func:`plan`) needs no Docker; :func:`push` does
the copying with the Docker clients injected (``connect`` opens a node's engine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gpuhub.host import swarm

#: what the fix of an unreachable node says, so every message names the same commands
REGISTER_FIX = "gpuhub node register --node {node} --engine-url URL --docker-host MANAGER, or --node-engine {node}=URL"


class PushError(RuntimeError):
    """A request push-to-nodes cannot carry out at all (before any node is touched); the message names the fix."""


@dataclass(frozen=True)
class Target:
    """One node to copy to: its hostname and id, and the engine URL to use (None: unknown, ``why`` says so)."""

    hostname: str
    node_id: str
    engine_url: str | None
    why: str | None = None  # set when the node is skipped or has no URL


@dataclass
class NodeResult:
    """What happened on one node: ``copied`` and ``present`` image names, or ``error`` (unreachable, load failed)."""

    hostname: str
    engine_url: str | None
    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None  # a node that is not ready: not a failure, nothing tried

    @property
    def failed(self) -> bool:
        return self.error is not None

    def line(self) -> str:
        """One line for the operator: copied / already there / unreachable (why and the fix)."""
        where = f" ({self.engine_url})" if self.engine_url else ""
        if self.skipped:
            return f"{self.hostname}: skipped: {self.skipped}"
        if self.error:
            done = f" (copied before the failure: {', '.join(self.copied)})" if self.copied else ""
            return f"{self.hostname}{where}: {self.error}{done}"
        parts = [f"copied {', '.join(self.copied)}"] if self.copied else []
        parts += [f"already there: {', '.join(self.present)}"] if self.present else []
        return f"{self.hostname}{where}: {'; '.join(parts) or 'nothing to copy'}"


def parse_node_engines(specs: Iterable[str]) -> dict[str, str]:
    """``NODE=URL`` pairs (``--node-engine``) as {node hostname or id: URL}; each URL checked."""
    out = {}
    for spec in specs:
        node, sep, url = spec.partition("=")
        if not sep or not node or not url:
            raise PushError(f"--node-engine {spec!r}: expected NODE=URL (NODE a hostname or id, URL e.g. ssh://host)")
        try:
            out[node] = swarm.check_engine_url(url)
        except swarm.SwarmError as e:
            raise PushError(f"--node-engine {spec!r}: {e}") from None
    return out


def targets(nodes: Iterable[swarm.SwarmNode], overrides: Mapping[str, str]) -> list[Target]:
    """The nodes to copy to, in node order: every node, its URL from ``overrides`` (by hostname or id, first) or
    its ``gpuhub.engine`` label. A node not ``ready`` is skipped (``why``); an override naming no node is refused."""
    nodes = list(nodes)
    for ref in overrides:
        swarm.find_node(nodes, ref)  # SwarmError naming the known nodes
    out = []
    for n in nodes:
        url = next((u for ref, u in overrides.items() if _is(n, ref)), None) or n.engine_url
        if n.state != "ready":
            out.append(Target(n.hostname, n.id, url, f"node is {n.state} in the swarm; run again once it is ready"))
        elif not url:
            fix = REGISTER_FIX.format(node=n.hostname)
            out.append(Target(n.hostname, n.id, None, f"unreachable: no engine URL known (label gpuhub.engine); {fix}"))
        else:
            out.append(Target(n.hostname, n.id, url))
    return out


def _is(node: swarm.SwarmNode, ref: str) -> bool:
    return ref in (node.id, node.hostname) or (len(ref) >= 12 and node.id.startswith(ref))


def plan(local_ids: Mapping[str, str], node_ids: Mapping[str, str | None]) -> tuple[list[str], list[str]]:
    """(to copy, already there) among ``local_ids`` ({image: id here}) given ``node_ids`` ({image: id on the node,
    None when missing}): an image is copied when the node lacks it or holds another id (a rebuilt image)."""
    copy = [img for img, want in local_ids.items() if node_ids.get(img) != want]
    return copy, [img for img in local_ids if img not in copy]


def local_image_ids(client, names: Iterable[str]) -> dict[str, str]:
    """{name: image id} in the local engine; an image missing there is refused before any node is touched."""
    import docker.errors  # docker-py costs ~0.14 s to import: kept off every `gpuhub` command's start

    out = {}
    for name in dict.fromkeys(names):
        try:
            out[name] = client.api.inspect_image(name)["Id"]
        except docker.errors.ImageNotFound:
            raise PushError(
                f"image {name} is not in this machine's Docker engine (rule: push-to-nodes copies what is built "
                f"here); build it first (gpuhub images build --catalog, or docker pull/load {name})"
            ) from None
    return out


def node_image_ids(client, names: Iterable[str]) -> dict[str, str | None]:
    """{name: image id on the node's engine, None when it has no image of that name}."""
    import docker.errors

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = client.api.inspect_image(name)["Id"]
        except docker.errors.ImageNotFound:
            out[name] = None
    return out


def stream_image(local, node, name: str) -> None:
    """``docker save NAME | docker -H NODE load``, streamed in chunks; a load error in the answer is raised."""
    answer = node.api.load_image(local.api.get_image(name, chunk_size=1 << 20))
    for msg in answer or ():
        if isinstance(msg, dict) and (msg.get("error") or msg.get("errorDetail")):
            raise RuntimeError(msg.get("error") or msg["errorDetail"].get("message"))


def connect_engine(url: str, timeout: int = 900):
    """A Docker client for a node's engine (``ssh://`` through the system ssh client), answering a ping."""
    import docker

    client = docker.DockerClient(base_url=url, timeout=timeout, use_ssh_client=url.startswith("ssh://"))
    client.ping()
    return client


def push(
    local,
    nodes: Iterable[swarm.SwarmNode],
    images: Iterable[str],
    overrides: Mapping[str, str] | None = None,
    *,
    connect: Callable[[str], object] = connect_engine,
    log: Callable[[str], None] = lambda line: None,
) -> list[NodeResult]:
    """Copy ``images`` from the ``local`` engine to every ready node whose copy differs; one result per node.
    A node that fails (unreachable, load refused) does not stop the others."""
    want = local_image_ids(local, images)
    results = []
    for t in targets(nodes, overrides or {}):
        r = NodeResult(t.hostname, t.engine_url)
        results.append(r)
        if t.why:
            if t.why.startswith("unreachable"):
                r.error = t.why
            else:
                r.skipped = t.why
            continue
        try:
            client = connect(t.engine_url)
        except Exception as e:  # docker-py raises several unrelated types for a dead engine
            r.error = (
                f"unreachable: {_short(e)}; start that engine, or fix its URL: {REGISTER_FIX.format(node=t.hostname)}"
            )
            continue
        try:
            todo, r.present = plan(want, node_image_ids(client, want))
            for name in todo:
                log(f"docker save {name} | docker -H {t.engine_url} load")
                stream_image(local, client, name)
                r.copied.append(name)
        except Exception as e:  # a load refused or a connection cut mid-stream: this node failed, go on
            r.error = (
                f"failed: {_short(e)}; run the command again (the node's disk full? docker -H {t.engine_url} info)"
            )
        finally:
            client.close()
    return results


def _short(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
