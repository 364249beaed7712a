"""``gpuhub node register`` and ``gpuhub node list``: the GPU nodes of a Docker Swarm (issue 19).

``add_parsers(subparsers)`` adds the ``node`` command to the gpuhub CLI. Both talk to a swarm **manager**'s
engine (``--docker-host``, else ``DOCKER_HOST``/the local socket): only managers can list nodes and write their
labels. Design and label format: :mod:`gpuhub.host.swarm`.

``register`` declares the GPUs of one node as node labels, replacing what the node declared before:

- ``--nvml``: the GPUs NVML sees on the machine the command runs on (run it on that node, e.g. at boot from a
  systemd unit, with ``--docker-host`` pointing at a manager); a GPU in MIG mode is declared as its instances.
- ``--simulate N --model MODEL``: N made-up GPUs ``GPU-sim-<hostname>-<i>`` named MODEL (scripts/swarm.sh).

``--engine-url URL`` (alone or with either) records where the node's own engine answers, as the node label
``gpuhub.engine``: ``gpuhub images push-to-nodes`` copies curated images there (:mod:`gpuhub.host.node_images`).

The node is ``--node HOSTNAME|ID``, else the swarm node of the local engine. Running it again with the same
GPUs changes nothing; ``--simulate 0`` (or an NVML that sees none) leaves the node with no GPUs.

Next session's SwarmSpawner wiring needs nothing from here: the hub reads the labels (:func:`read_nodes`).
"""

from __future__ import annotations

import json
import sys

from gpuhub.core.operator_errors import OperatorError
from gpuhub.core.operator_errors import guarded as _guarded
from gpuhub.host import swarm
from gpuhub.host.nvml import PynvmlSource


class UsageError(OperatorError):
    """Printed as ``gpuhub: error: ...`` with exit status 2."""


def simulated_gpus(hostname: str, count: int, model: str) -> list[tuple[str, str]]:
    """``count`` simulated GPUs of ``model`` for ``hostname``: UUIDs ``GPU-sim-<hostname>-<i>``, unique per node."""
    return [(f"GPU-sim-{hostname}-{i}", model) for i in range(count)]


def nvml_gpus(source=None) -> list[tuple[str, str]]:
    """(uuid, name) of this machine's allocatable GPUs from NVML: GPUs not in MIG mode, and MIG instances named
    ``<parent name> MIG <profile>`` (the inventory maps them to ``<model>-MIG-<profile>``)."""
    own = source is None
    source = PynvmlSource(slow_interval=0) if own else source
    try:
        snap = source.sample()
    finally:
        if own:
            source.close()
    if not snap.ok:
        raise UsageError(
            f"NVML cannot be read on this machine ({'; '.join(e.detail for e in snap.errors)}); run the command "
            "on the GPU node itself with the NVIDIA driver loaded, or use --simulate N --model MODEL"
        )
    parents = {d.uuid: d for d in snap.devices if not d.is_mig}
    out = []
    for d in snap.devices:
        if d.is_mig:
            parent = parents.get(d.parent_uuid)
            profile = d.name.rsplit("MIG", 1)[-1].strip()
            out.append((d.uuid, f"{parent.name if parent else d.name} MIG {profile}"))
        elif not d.mig_enabled:
            out.append((d.uuid, d.name))
    return out


def _client(args):
    try:
        return swarm.swarm_client(args.docker_host)
    except swarm.SwarmError as e:
        raise UsageError(str(e)) from None


def cmd_node_register(args) -> int:
    declares_gpus = args.simulate is not None or args.nvml
    if (args.simulate is not None and args.nvml) or not (declares_gpus or args.engine_url):
        raise UsageError(
            "say where the GPUs come from: --nvml, or --simulate N --model MODEL (one of them; "
            "or only --engine-url URL to record where the node's engine answers)"
        )
    if args.simulate is not None and (args.simulate < 0 or not args.model):
        raise UsageError("--simulate N needs N >= 0 and --model MODEL (a gpus.models key of the site, e.g. H100)")
    if args.engine_url:
        try:
            swarm.check_engine_url(args.engine_url)  # refused before anything is read or written
        except swarm.SwarmError as e:
            raise UsageError(str(e)) from None
    client = _client(args)
    ref = args.node or swarm.local_node_id(client)
    if not ref:
        raise UsageError(
            "the local engine is in no swarm, so name the node: --node HOSTNAME|ID (and --docker-host a manager)"
        )
    try:
        hostname = swarm.find_node(swarm.read_nodes(client), ref).hostname
        gpus = None
        if declares_gpus:
            gpus = nvml_gpus() if args.nvml else simulated_gpus(hostname, args.simulate, args.model)
        source = ("nvml" if args.nvml else "simulated") if declares_gpus else None
        node = swarm.register(client, ref, gpus, source, engine_url=args.engine_url)
    except swarm.SwarmError as e:
        raise UsageError(str(e)) from None
    gpus_text = ", ".join(g.uuid for g in node.gpus)
    engine = f"; engine {node.engine_url}" if node.engine_url else ""
    print(f"{node.hostname} ({node.id[:12]}): {len(node.gpus)} GPU(s) declared: {gpus_text}{engine}")
    return 0


def node_rows(nodes) -> list[dict]:
    return [
        {
            "hostname": n.hostname,
            "id": n.id,
            "role": n.role,
            "state": n.state,
            "availability": n.availability,
            "offers": n.offers,
            "gpu_source": n.gpu_source,
            "gpus": [{"uuid": g.uuid, "name": g.name} for g in n.gpus],
            "engine_url": n.engine_url,
        }
        for n in nodes
    ]


def cmd_node_list(args) -> int:
    try:
        nodes = swarm.read_nodes(_client(args))
    except swarm.SwarmError as e:
        raise UsageError(str(e)) from None
    rows = node_rows(nodes)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'HOSTNAME':<20} {'ID':<12} {'ROLE':<8} {'STATE':<12} {'AVAIL':<7} OFFERED GPUS")
    for r in rows:
        gpus = ", ".join(f"{g['uuid']} ({g['name']})" for g in r["gpus"]) or "-"
        offered = gpus if r["offers"] else f"none (declares {len(r['gpus'])})"
        print(
            f"{r['hostname']:<20} {r['id'][:12]:<12} {r['role']:<8} {r['state']:<12} {r['availability']:<7} {offered}"
        )
    total = sum(len(r["gpus"]) for r in rows if r["offers"])
    print(f"{total} GPU(s) offered by {sum(r['offers'] for r in rows)} of {len(rows)} node(s)")
    return 0


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("node", help="GPU nodes of a Docker Swarm: declare their GPUs, list the inventory")
    sub = p.add_subparsers(dest="node_cmd", required=True)
    host_help = "a swarm manager's engine (unix:///… or tcp://…; default: DOCKER_HOST or the local socket)"
    s = sub.add_parser("register", help="declare a node's GPUs as node labels (replaces its earlier declaration)")
    s.add_argument("--node", help="the node's hostname or id (default: the local engine's swarm node)")
    s.add_argument("--nvml", action="store_true", help="the GPUs NVML sees on this machine")
    s.add_argument("--simulate", type=int, metavar="N", help="N simulated GPUs GPU-sim-<hostname>-<i>")
    s.add_argument("--model", help="with --simulate: the GPUs' model (a gpus.models key of the site)")
    s.add_argument(
        "--engine-url",
        metavar="URL",
        help="where an operator reaches this node's own engine (unix://…, tcp://host:port, ssh://user@host), "
        "stored as the node label gpuhub.engine for `gpuhub images push-to-nodes`; kept when not given",
    )
    s.add_argument("--docker-host", help=host_help)
    s.set_defaults(func=_guarded(cmd_node_register))
    s = sub.add_parser("list", help="the swarm's nodes, whether each offers GPUs (ready and active), and its GPUs")
    s.add_argument("--docker-host", help=host_help)
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=_guarded(cmd_node_list))


def cmd_images_push(args, site_of) -> int:
    """``gpuhub images push-to-nodes``: exit 0 when every ready node has every image, 1 when a node failed."""
    from gpuhub.host import node_images  # docker-py is imported on first use there

    names = list(args.images) or sorted({spec.image for spec in site_of(args).images.values()})
    if not names:
        raise UsageError("the site's catalog names no images; name them: gpuhub images push-to-nodes IMAGE...")
    try:
        overrides = node_images.parse_node_engines(args.node_engine or [])
        manager = _client(args)
        local = swarm.swarm_client(args.from_engine, timeout=900)  # docker save of a large image starts slowly
        nodes = swarm.read_nodes(manager)
        results = node_images.push(local, nodes, names, overrides, log=lambda m: print(f"==> {m}", file=sys.stderr))
    except (node_images.PushError, swarm.SwarmError) as e:
        raise UsageError(str(e)) from None
    for r in results:
        print(r.line())
    failed = [r.hostname for r in results if r.failed]
    if failed:
        print(f"gpuhub: {len(failed)} of {len(results)} node(s) lack an image: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def add_push_parser(images_sub, leaf, site_of) -> None:
    """``gpuhub images push-to-nodes`` under ``gpuhub images`` (``leaf`` is the CLI's own sub-command maker)."""
    s = leaf(
        images_sub,
        "push-to-nodes",
        "copy images (default: the site catalog's) from this machine's engine to every ready Swarm node whose "
        "copy differs (docker save | load, streamed; no registry)",
        _guarded(lambda args: cmd_images_push(args, site_of)),
    )
    s.add_argument("images", nargs="*", metavar="IMAGE", help="image references (default: the site catalog's)")
    s.add_argument("--docker-host", help="a swarm manager's engine, to list the nodes (default: DOCKER_HOST)")
    s.add_argument(
        "--node-engine",
        action="append",
        metavar="NODE=URL",
        help="this node's engine URL (unix://, tcp://, ssh://) instead of its gpuhub.engine label; repeatable",
    )
    s.add_argument(
        "--from-engine", metavar="URL", help="the engine that has the images (default: DOCKER_HOST or the local socket)"
    )
