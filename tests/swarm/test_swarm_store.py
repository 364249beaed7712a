"""``hub.engine: swarm`` without a cluster: the quota store places on nodes in its transaction (SQLite and
PostgreSQL), the site key, the service spec a server gets, and the reconciler's view of tasks."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpuhub.core.site import Device, SiteConfigError
from gpuhub.hub.swarm_service import service_spec
from quota.placement import NodeOffer
from quota.policy import AllocationRequest, Refusal
from quota.store import QuotaStore
from quota.swarm_cluster import SwarmOffers, task_view
from tests.clock import Clock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "quota"))
from quotakit import SITE, make_site


def offers(available=(True, True, True), per_node=2):
    return tuple(
        NodeOffer(f"id-n{i}", f"n{i}", tuple(Device(f"GPU-n{i}-{j}", "H100") for j in range(per_node)), up)
        for i, up in enumerate(available, 1)
    )


def wide_site(**hub):
    """The quota kit's site with room for six 1-GPU servers (caps above the cluster's six GPUs)."""
    gpus = {**SITE["gpus"], "max_gpus_per_user": 8}
    organizations = {
        **SITE["organizations"],
        "lab-c": {"members": [f"u{i}" for i in range(8)], "images": ["python"], "gpu_limit": 8,
                  "gpu_hours_per_month": 100, "max_gpus_per_server": 2},
    }  # fmt: skip
    return make_site(hub=hub, gpus=gpus, organizations=organizations)


def req(user: str, gpus: int = 1, **kw) -> AllocationRequest:
    return AllocationRequest(user=user, server_name="", org="lab-c", image="python", gpus=gpus, **kw)


def test_six_concurrent_servers_land_on_the_node_owning_their_uuids_with_no_duplicate(engine):
    site = wide_site(engine="swarm")
    store = QuotaStore(engine, site, Clock(datetime(2026, 12, 2, 3, tzinfo=UTC)), offers=offers)
    grants, errors = {}, []

    def take(i):
        try:
            grants[i] = store.allocate(req(f"u{i}"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    uuids = [u for g in grants.values() for u in g.devices]
    assert len(uuids) == 6 and len(set(uuids)) == 6
    for g in grants.values():
        assert g.devices[0].startswith(f"GPU-{g.node}-") and g.node_id == f"id-{g.node}"
    ledger = {h["device_uuid"]: h["server_key"] for h in store.holdings()}
    assert ledger == {g.devices[0]: g.server_key for g in grants.values()}
    with pytest.raises(Refusal) as e:
        store.allocate(req("u7"))
    assert e.value.rule == "no-free-device"
    assert "no GPU model has 1 free devices on one node (0 GPUs free in all)" in e.value.message


def test_a_drained_node_offers_nothing_and_two_gpus_need_one_node(engine):
    site = wide_site(engine="swarm")
    clock = Clock(datetime(2026, 12, 2, 3, tzinfo=UTC))
    store = QuotaStore(engine, site, clock, offers=lambda: offers((True, False, True)))
    assert {d.uuid.split("-")[1] for d in store.inventory()} == {"n1", "n2", "n3"}  # the status page lists all
    got = [store.allocate(req(f"u{i}")) for i in range(4)]
    assert {g.node for g in got} == {"n1", "n3"}
    with pytest.raises(Refusal):
        store.allocate(req("u5"))
    store.release("u0/", reason="stopped")
    store.release("u3/", reason="stopped")
    with pytest.raises(Refusal) as e:  # one free on n1 and one on n3: no node has two
        store.allocate(req("u6", gpus=2))
    assert "2 GPUs are free, but at most 1 of one model on one node" in e.value.message


def test_hub_engine_is_docker_by_default_and_only_docker_or_swarm():
    assert make_site().hub.engine == "docker"
    assert wide_site(engine="swarm").hub.engine == "swarm"
    with pytest.raises(SiteConfigError, match=r"hub.engine.*docker \| swarm"):
        wide_site(engine="kubernetes")


def test_service_spec_pins_the_node_and_carries_uuids_labels_and_hardening():
    create = {"labels": {"gpuhub.gpus": "GPU-n2-0", "gpuhub.user": "u1"}, "user": "20001:20001"}
    host = {
        "binds": {"gpuhub-u1-home": {"bind": "/home/jovyan", "mode": "rw"}},
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=1g"},
        "cap_drop": ["ALL"],
        "pids_limit": 256,
        "read_only": False,
        "mem_limit": "1G",
        "cpu_period": 100_000,
        "cpu_quota": 100_000,
    }
    spec = service_spec(name="gpuhub-u1", image="img", env={"GPUHUB_GPUS": "GPU-n2-0", "GPUHUB_NODE": "n2"},
                        args=["jupyterhub-singleuser"], create=create, host=host, node_id="id-n2", node="n2",
                        network="net", port=8888, stop_grace_seconds=5)  # fmt: skip
    t = spec["task_template"]
    assert t["Placement"] == {"Constraints": ["node.id==id-n2"]}
    assert t["RestartPolicy"] == {"Condition": "none"}
    c = t["ContainerSpec"]
    assert c["User"] == "20001:20001" and c["CapabilityDrop"] == ["ALL"]
    assert c["HealthCheck"] == {"Test": ["NONE"]}  # else the task stays "starting" (no port) until the first probe
    assert "GPUHUB_GPUS=GPU-n2-0" in c["Env"] and "GPUHUB_NODE=n2" in c["Env"]
    assert c["Labels"]["gpuhub.node"] == "n2" == spec["labels"]["gpuhub.node"]
    assert t["Resources"]["Limits"] == {"Pids": 256, "MemoryBytes": 1 << 30, "NanoCPUs": 1_000_000_000}
    assert {"Type": "volume", "Source": "gpuhub-u1-home", "Target": "/home/jovyan", "ReadOnly": False} in c["Mounts"]
    assert {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"Mode": 0o1777, "SizeBytes": 1 << 30}} in c["Mounts"]
    assert spec["endpoint_spec"]["Mode"] == "dnsrr"
    assert spec["endpoint_spec"]["Ports"] == [{"Protocol": "tcp", "TargetPort": 8888, "PublishMode": "host"}]


def test_task_view_a_down_nodes_task_finished_when_the_node_went_down():
    status = {"State": "running", "Timestamp": "2026-12-02T03:00:00Z"}
    task = {"NodeID": "a", "DesiredState": "running", "Status": status}
    up = {"a": {"Status": {"State": "ready"}, "UpdatedAt": "2026-12-02T03:00:00Z"}}
    assert task_view("s", {}, task, up).running
    down = {"a": {"Status": {"State": "down"}, "UpdatedAt": "2026-12-02T03:05:00Z"}}
    v = task_view("s", {}, {**task, "DesiredState": "shutdown"}, down)
    assert not v.running and v.finished_at == datetime(2026, 12, 2, 3, 5, tzinfo=UTC)
    ended = {**task, "DesiredState": "shutdown", "Status": {"State": "failed", "Timestamp": "2026-12-02T03:01:00Z"}}
    assert task_view("s", {}, ended, up).finished_at == datetime(2026, 12, 2, 3, 1, tzinfo=UTC)


class _Api:
    def __init__(self):
        self.calls, self.fail = 0, False

    def nodes(self):
        self.calls += 1
        if self.fail:
            raise RuntimeError("manager gone")
        labels = {"gpuhub.gpu.GPU-x-0": "NVIDIA H100 80GB HBM3", "gpuhub.gpu.GPU-x-1": "Tesla V100"}
        return [{"ID": "x", "Spec": {"Labels": labels, "Availability": "active"},
                 "Status": {"State": "ready"}, "Description": {"Hostname": "x"}}]  # fmt: skip


def test_swarm_offers_cache_for_ttl_keep_the_last_read_once_then_offer_nothing():
    client = type("C", (), {"api": _Api()})()
    now = [0.0]
    so = SwarmOffers(client, {"H100": 1.0}, ttl=3.0, clock=lambda: now[0])
    first = so()
    assert [d.uuid for o in first for d in o.devices] == ["GPU-x-0"]  # the V100 is not a site model
    now[0] = 2.0
    assert so() is first and client.api.calls == 1
    client.api.fail, now[0] = True, 4.0
    assert so() == first  # one ttl of grace
    now[0] = 7.0
    assert so() == ()


def test_apply_spawner_picks_the_spawner_class_by_hub_engine():
    from traitlets.config import Config

    from gpuhub.hub import hubconfig

    facts = hubconfig.HubFacts("172.30.0.1", "net", None, None, None, "q", "00" * 32, "m", "chp")
    for engine, cls in (("docker", "gpuhub.hub.spawner.GpuhubSpawner"),
                        ("swarm", "gpuhub.hub.swarm_spawner.GpuhubSwarmSpawner")):  # fmt: skip
        c = Config()
        hubconfig.apply_spawner(c, wide_site(engine=engine), facts)
        assert c.JupyterHub.spawner_class == cls
