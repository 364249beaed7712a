"""Multi-node placement (quota.placement), pure: a server's GPUs on one node of its model, never a held device,
never a node that does not offer, pack onto the busiest node that fits; and the inventory read from node labels."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuhub.core.site import Device
from gpuhub.host import swarm
from quota.placement import NodeOffer, NoPlacement, Placement, model_key, offers_from_swarm, place

WEIGHTS = {"H100": 1.0, "A100": 0.6}


def node(name: str, n: int, model: str = "H100", available: bool = True) -> NodeOffer:
    return NodeOffer(f"id-{name}", name, tuple(Device(f"GPU-{name}-{i}", model) for i in range(n)), available)


def test_all_gpus_of_a_server_on_one_node_even_when_the_cluster_has_enough():
    nodes = [node("a", 2), node("b", 2), node("c", 2)]
    out = place(nodes, 3, "H100", set(), WEIGHTS)
    assert isinstance(out, NoPlacement)
    assert out.shortage == (
        "6 H100 GPUs are free, but at most 2 on one node, and a server's GPUs are all on one node (3 were requested)"
    )
    assert out.free == {"H100": 6}


def test_packs_onto_the_busiest_node_that_fits_keeping_whole_nodes_free():
    nodes = [node("a", 8), node("b", 8), node("c", 8)]
    held: set[str] = set()
    for _ in range(8):  # eight 1-GPU servers: all on one node
        p = place(nodes, 1, "H100", held, WEIGHTS)
        held.update(p.devices)
    assert {d.rsplit("-", 1)[0] for d in held} == {"GPU-a"}
    big = place(nodes, 8, "H100", held, WEIGHTS)  # an 8-GPU server still finds a whole node
    assert isinstance(big, Placement) and big.hostname == "b" and len(big.devices) == 8


def test_best_fit_prefers_the_node_with_fewest_free_that_still_fits():
    nodes = [node("a", 8), node("b", 4), node("c", 2)]
    assert place(nodes, 2, "H100", set(), WEIGHTS).hostname == "c"
    assert place(nodes, 3, "H100", set(), WEIGHTS).hostname == "b"
    p = place(nodes, 2, "H100", {"GPU-c-0"}, WEIGHTS)  # c has 1 free now: b is the busiest that fits
    assert (p.hostname, p.devices) == ("b", ("GPU-b-0", "GPU-b-1"))


def test_drained_node_and_held_devices_are_never_chosen():
    nodes = [node("a", 2, available=False), node("b", 2)]
    p = place(nodes, 1, "H100", {"GPU-b-0"}, WEIGHTS)
    assert (p.node_id, p.devices) == ("id-b", ("GPU-b-1",))
    out = place(nodes, 1, "H100", {"GPU-b-0", "GPU-b-1"}, WEIGHTS)
    assert isinstance(out, NoPlacement)
    assert out.shortage == "0 H100 GPUs are free on the nodes that take servers and 1 were requested"


def test_model_respected_and_chosen_by_the_single_host_rule_when_not_named():
    nodes = [node("a", 2, "H100"), node("b", 4, "A100")]
    assert place(nodes, 2, "H100", set(), WEIGHTS).devices == ("GPU-a-0", "GPU-a-1")
    assert place(nodes, 1, None, set(), WEIGHTS).model == "A100"  # most free devices
    assert place(nodes, 1, None, {"GPU-b-0", "GPU-b-1", "GPU-b-2"}, WEIGHTS).model == "H100"  # 2 H100 > 1 A100
    tie = [node("a", 2, "H100"), node("b", 2, "A100")]
    assert place(tie, 1, None, set(), WEIGHTS).model == "A100"  # tie: the lower weight
    out = place(nodes, 3, "H100", set(), WEIGHTS)
    assert isinstance(out, NoPlacement) and out.alternative == "request fewer GPUs or choose another model"


def test_undeclared_model_is_never_chosen():
    nodes = [node("a", 4, "V100")]
    out = place(nodes, 1, None, set(), WEIGHTS)
    assert isinstance(out, NoPlacement)
    assert out.shortage == "no GPU model has 1 free devices on one node (0 GPUs free in all)"


def test_offers_from_swarm_labels_map_names_to_model_keys_and_name_the_fix():
    labels = {
        "gpuhub.gpu.GPU-1": "NVIDIA H100 80GB HBM3",
        "gpuhub.gpu.GPU-2": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
        "gpuhub.gpu.GPU-3": "Tesla V100",
        "gpuhub.gpu-source": "nvml",
        "other": "x",
    }
    n = swarm.node_from_attrs(
        {
            "ID": "n1",
            "Spec": {"Labels": labels, "Role": "worker", "Availability": "drain"},
            "Description": {"Hostname": "gpu-7"},
            "Status": {"State": "ready", "Addr": "10.0.0.7"},
        }
    )
    assert [g.uuid for g in n.gpus] == ["GPU-1", "GPU-2", "GPU-3"] and n.gpu_source == "nvml"
    assert not n.offers  # drained
    offers, skipped = offers_from_swarm([n], {"H100": 1.0, "H100-MIG-1g.10gb": 0.2})
    assert offers == [
        NodeOffer("n1", "gpu-7", (Device("GPU-1", "H100"), Device("GPU-2", "H100-MIG-1g.10gb")), available=False)
    ]
    assert skipped == ["GPU-3 on gpu-7 ('Tesla V100': declare it under gpus.models to allocate it)"]
    assert model_key("H100", {"H100": 1}) == "H100"


@st.composite
def clusters(draw):
    n = draw(st.integers(1, 6))
    nodes = []
    for i in range(n):
        devs = tuple(
            Device(f"GPU-{i}-{j}", draw(st.sampled_from(["H100", "A100", "V100"])))
            for j in range(draw(st.integers(0, 8)))
        )
        nodes.append(NodeOffer(f"id{i}", f"node{i}", devs, draw(st.booleans())))
    requests = draw(st.lists(st.tuples(st.integers(1, 8), st.sampled_from([None, "H100", "A100"])), max_size=40))
    releases = draw(st.lists(st.integers(0, 39), max_size=10))
    return nodes, requests, releases


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_never_a_duplicate_uuid_never_an_unavailable_node_always_one_node_and_model(case):
    nodes, requests, releases = case
    by_uuid = {d.uuid: (o, d) for o in nodes for d in o.devices}
    servers: list[Placement] = []
    for k, (gpus, model) in enumerate(requests):
        if k in releases and servers:
            servers.pop(k % len(servers))  # a server stops: its devices are free again
        held = {u for s in servers for u in s.devices}
        out = place(nodes, gpus, model, held, WEIGHTS)
        free_here = {
            o.node_id: [
                d for d in o.devices if d.uuid not in held and d.model in WEIGHTS and (model in (None, d.model))
            ]
            for o in nodes
            if o.available
        }
        if isinstance(out, NoPlacement):
            # refused only when no offering node has that many free of one (requested) model
            assert all(max(Counter(d.model for d in devs).values(), default=0) < gpus for devs in free_here.values())
            continue
        assert len(out.devices) == gpus and len(set(out.devices)) == gpus
        assert not held & set(out.devices)
        owners = {by_uuid[u][0] for u in out.devices}
        assert len(owners) == 1 and owners.pop().node_id == out.node_id
        assert by_uuid[out.devices[0]][0].available
        assert {by_uuid[u][1].model for u in out.devices} == {out.model} and out.model in WEIGHTS
        assert model in (None, out.model)
        servers.append(out)
    all_held = [u for s in servers for u in s.devices]
    assert len(all_held) == len(set(all_held))
