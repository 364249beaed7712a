"""``gpuhub node register`` and ``gpuhub node list``: the GPU nodes of a Docker Swarm (issue 19).

``add_parsers(subparsers)`` adds the ``node`` command to the gpuhub CLI. Both talk to a swarm **manager**'s
engine (``--docker-host``, else ``DOCKER_HOST``/the local socket): only managers can list nodes and write their
labels. Design and label format: :mod:`gpuhub.host.swarm`.

``register`` declares the GPUs of one node as node labels, replacing what the node declared before:

- ``--nvml``: the GPUs NVML sees on the machine the command runs on (run it on that node, e.g. at boot from a
  systemd unit, with ``--docker-host`` pointing at a manager); a GPU in MIG mode is declared as its instances.
- ``--simulate N --model MODEL``: N made-up GPUs ``GPU-sim-<hostname>-<i>`` named MODEL (scripts/swarm.sh).

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
    if (args.simulate is None) == (not args.nvml):
        raise UsageError("say where the GPUs come from: --nvml, or --simulate N --model MODEL (one of them)")
    if args.simulate is not None and (args.simulate < 0 or not args.model):
        raise UsageError("--simulate N needs N >= 0 and --model MODEL (a gpus.models key of the site, e.g. H100)")
    client = _client(args)
    ref = args.node or swarm.local_node_id(client)
    if not ref:
        raise UsageError(
            "the local engine is in no swarm, so name the node: --node HOSTNAME|ID (and --docker-host a manager)"
        )
    try:
        hostname = swarm.find_node(swarm.read_nodes(client), ref).hostname
        gpus = nvml_gpus() if args.nvml else simulated_gpus(hostname, args.simulate, args.model)
        node = swarm.register(client, ref, gpus, "nvml" if args.nvml else "simulated")
    except swarm.SwarmError as e:
        raise UsageError(str(e)) from None
    print(f"{node.hostname} ({node.id[:12]}): {len(node.gpus)} GPU(s) declared: {', '.join(g.uuid for g in node.gpus)}")
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
    s.add_argument("--docker-host", help=host_help)
    s.set_defaults(func=_guarded(cmd_node_register))
    s = sub.add_parser("list", help="the swarm's nodes, whether each offers GPUs (ready and active), and its GPUs")
    s.add_argument("--docker-host", help=host_help)
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=_guarded(cmd_node_list))
