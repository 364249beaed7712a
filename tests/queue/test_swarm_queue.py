"""The GPU queue with hub.engine swarm: a grant's GPUs are all on one node, of one model; a node that takes no
servers (drained, paused, down) is never granted from; on one host nothing changes (the pure order, then the
durable store on SQLite and PostgreSQL with the nodes' offers)."""

from __future__ import annotations

from gpuhub.core.site import Device as SiteDevice
from quota import queue_order as order
from quota.placement import NodeOffer
from quota.queue_store import QueueStore
from tests.queue.test_store import hold, put

LIMITS = order.Limits({"o": 8}, 8)


def req(i=1, gpus=1, model="H100"):
    return order.Request(i, "o", f"u{i}", gpus, model, float(i))


def devs(**per_node):
    """``a=2, b=1`` -> two H100s on node a, one on node b."""
    return [order.Device(f"GPU-{n}{i}", "H100", n) for n, k in per_node.items() for i in range(k)]


def test_two_gpus_split_over_two_nodes_are_not_granted_together():
    assert order.choose([req(gpus=2)], devs(a=1, b=1), [], {}, LIMITS, 10.0, 60.0) is None
    assert order.blocker(req(gpus=2), devs(a=1, b=1), [], LIMITS) == order.NO_DEVICE


def test_a_grant_takes_the_fullest_node_that_fits_and_stays_on_it():
    choice = order.choose([req(gpus=2)], devs(a=3, b=2, c=1), [], {}, LIMITS, 10.0, 60.0)
    assert choice.devices == ("GPU-b0", "GPU-b1")  # b: the fewest free that still fit, as quota.placement packs


def test_without_a_model_the_model_with_the_most_free_where_it_fits_then_pack():
    free = [*devs(a=1, b=2), order.Device("GPU-x0", "A100", "a"), order.Device("GPU-x1", "A100", "a")]
    free.append(order.Device("GPU-x2", "A100", "c"))
    choice = order.choose([req(gpus=2, model=None)], free, [], {}, LIMITS, 10.0, 60.0)
    assert (choice.model, choice.devices) == ("A100", ("GPU-x0", "GPU-x1"))  # A100: 2 fit on a (c's 1 does not)


def test_one_host_devices_have_no_node_and_choose_as_before():
    free = [order.Device("GPU-h0", "H100"), order.Device("GPU-h1", "H100")]
    choice = order.choose([req(gpus=2)], free, [], {}, LIMITS, 10.0, 60.0)
    assert choice.devices == ("GPU-h0", "GPU-h1")


def offers_of(**nodes):
    """``a=(2, True)``: node a with two H100s (GPU-sim-a-i) that takes servers."""
    return [
        NodeOffer(f"id-{n}", n, tuple(SiteDevice(f"GPU-sim-{n}-{i}", "H100") for i in range(k)), up)
        for n, (k, up) in nodes.items()
    ]


def test_the_store_grants_a_two_gpu_request_only_on_one_node(engine, site, clock):
    offers = offers_of(a=(2, True), b=(2, True))
    qs = QueueStore(engine, site, clock, offers=lambda: offers)
    inventory = [d for o in offers for d in o.devices]
    hold(engine, "GPU-sim-a-0")
    hold(engine, "GPU-sim-b-0", user="carol")
    e = put(qs, clock, "alice", gpus=2)
    assert qs.pop_next(inventory) is None  # one free on a, one free on b: not a 2-GPU server
    qs.cancel(e.id)
    one = put(qs, clock, "alice", server="one")
    g = qs.pop_next(inventory)
    assert (g.id, len(g.devices)) == (one.id, 1) and g.devices[0] in ("GPU-sim-a-1", "GPU-sim-b-1")


def test_the_store_never_grants_from_a_node_that_takes_no_servers(engine, site, clock):
    offers = offers_of(a=(2, False), b=(1, True))
    qs = QueueStore(engine, site, clock, offers=lambda: offers)
    inventory = [d for o in offers for d in o.devices]
    first, second = put(qs, clock, "alice", server="x"), put(qs, clock, "bob", server="y")
    g = qs.pop_next(inventory)
    assert (g.id, g.devices) == (first.id, ("GPU-sim-b-0",))
    assert qs.pop_next(inventory) is None  # a's two GPUs are free but a is drained
    assert qs.get(second.id).state == "queued"
