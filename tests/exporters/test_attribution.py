"""PID → cgroup → container → labels, against a fixture /proc and against a real container."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from exporters.attribution import Attributor, container_id_from_cgroup
from exporters.gpu import build_gpu_exporter
from exporters.testing import FakeDocker, FakeGpu, FakeNvmlSource, FakeProcess, gpuhub_labels, make_proc_tree

CID = "3f" * 32
CID2 = "a1" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # cgroup v1, cgroupfs driver (this machine)
        (f"12:pids:/docker/{CID}\n4:memory:/docker/{CID}\n0::/docker/{CID}\n", CID),
        # cgroup v1, systemd driver
        (f"11:memory:/system.slice/docker-{CID}.scope\n1:name=systemd:/system.slice/docker-{CID}.scope\n", CID),
        # cgroup v2, systemd driver, a process in a sub-cgroup of the container
        (f"0::/system.slice/docker-{CID}.scope/init.scope\n", CID),
        # cgroup v2, cgroupfs driver
        (f"0::/docker/{CID}\n", CID),
        # rootless Docker under a user manager
        (f"0::/user.slice/user-1000.slice/user@1000.service/docker-{CID}.scope\n", CID),
        # hybrid: v2 line is "/", v1 lines carry the id
        (f"0::/\n5:cpu,cpuacct:/docker/{CID}\n", CID),
        # cgroup v2 seen from inside another container's cgroup namespace
        (f"0::/../{CID}\n", CID),
        (f"0::/../../system.slice/docker-{CID}.scope\n", CID),
        # nested (docker-in-docker): the innermost container
        (f"0::/docker/{CID}/docker/{CID2}\n", CID2),
        # host processes and non-Docker cgroups
        ("0::/user.slice/user-1000.slice/session-2.scope\n", None),
        ("0::/process_api/243d7a65146c3e7ed3f89d236d58e4fd\n", None),  # the lent GPU machine
        (f"0::/docker/{CID[:12]}\n", None),  # short ids are not container ids
        (f"0::/kubepods/burstable/pod1/docker-{CID}x.scope\n", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_container_id_from_cgroup(text, expected):
    assert container_id_from_cgroup(text) == expected


@pytest.fixture
def proc(tmp_path):
    return make_proc_tree(
        tmp_path / "proc",
        {
            100: f"0::/docker/{CID}\n",
            101: f"0::/system.slice/docker-{CID}.scope\n",
            200: f"0::/docker/{CID2}\n",
            300: "0::/user.slice/session-1.scope\n",
        },
    )


def test_labels_resolved_once_per_container(proc):
    docker = FakeDocker()
    docker.add(CID, gpuhub_labels("alice", "gist-ai", server="big"), name="/jupyter-alice-big")
    att = Attributor(docker, proc_root=proc)
    errors = []
    w1, w2 = att.workload_of_pid(100, errors), att.workload_of_pid(101, errors)
    assert w1 == w2
    assert (w1.user, w1.org, w1.server, w1.container_name, w1.managed) == (
        "alice",
        "gist-ai",
        "big",
        "jupyter-alice-big",
        True,
    )
    assert docker.calls["inspect"] == 1 and errors == []
    assert att.workload_of_pid(300, errors) is None  # a host process
    assert att.workload_of_pid(999, errors) is None and errors == []  # ended: not an error


def test_unlabelled_container_and_unknown_container(proc):
    docker = FakeDocker()
    docker.add(CID2, {"some": "thing"})
    att = Attributor(docker, proc_root=proc)
    errors = []
    w = att.workload_of_pid(200, errors)
    assert (w.container_id, w.user, w.org, w.managed) == (CID2, "", "", False)
    w = att.workload_of_pid(100, errors)  # container gone from Docker: 404 is not an error
    assert w.container_id == CID and w.user == "" and errors == []


def test_docker_failure_is_an_error_and_retried_after_a_while(proc):
    docker = FakeDocker()
    docker.add(CID, gpuhub_labels("alice", "gist-ai"))
    docker.fail = True
    clock = [0.0]
    att = Attributor(docker, proc_root=proc, retry_seconds=30, clock=lambda: clock[0])
    errors = []
    assert att.workload_of_pid(100, errors).user == ""
    assert [e.source for e in errors] == ["docker"]
    docker.fail = False
    assert att.workload_of_pid(100, errors).user == ""  # still backing off
    assert docker.calls["inspect"] == 1
    clock[0] = 31
    assert att.workload_of_pid(100, errors).user == "alice"


def test_listing_seeds_the_cache_and_prune_forgets(proc):
    docker = FakeDocker()
    att = Attributor(docker, proc_root=proc)
    att.remember(CID, gpuhub_labels("bob", "gist-ai"), "/jupyter-bob")
    assert att.workload_of_pid(100, []).user == "bob" and docker.calls["inspect"] == 0
    att.prune(set())
    assert att.workload_of_pid(100, []).user == ""  # not in Docker, not cached any more


def test_without_docker_the_container_is_still_named(proc):
    w = Attributor(None, proc_root=proc).workload_of_pid(100, [])
    assert w.container_id == CID and w.user == ""


def test_unreadable_cgroup_is_a_proc_error(tmp_path):
    root = tmp_path / "proc"
    (root / "5" / "cgroup").mkdir(parents=True)  # a directory: reading it raises IsADirectoryError
    errors = []
    assert Attributor(None, proc_root=root).workload_of_pid(5, errors) is None
    assert [e.source for e in errors] == ["proc"]


@pytest.mark.docker
def test_real_container_process_is_attributed_to_its_user(run_container, docker_engine, site):
    """A real container's host PID, reported by (fake) NVML, comes out labelled user=alice, org=gist-ai."""
    container = run_container(
        {
            "gpuhub.user": "alice",
            "gpuhub.org": "gist-ai",
            "gpuhub.server": "",
            "gpuhub.managed": "1",
            "gpuhub.gpus": "GPU-fake-0",
            "gpuhub.gpu-model": "H100",
            "gpuhub.hub": "exporters-test",
        }
    )
    container.reload()
    pid = container.attrs["State"]["Pid"]
    assert pid > 0
    gpu = FakeGpu("GPU-fake-0", utilization=90, processes=[FakeProcess(pid, sm_percent=84, mem_percent=26)])

    # Attribution by inspect (no listing yet): cgroup and Docker lookups are real.
    errors = []
    w = Attributor(docker_engine).workload_of_pid(pid, errors)
    assert (w.container_id, w.user, w.org, w.server) == (container.id, "alice", "gist-ai", "")
    assert errors == []

    registry, sampler = build_gpu_exporter(
        site, docker_engine, FakeNvmlSource([gpu]), registry=CollectorRegistry(auto_describe=False)
    )
    sampler.sample_once()
    labels = {"uuid": "GPU-fake-0", "pid": str(pid), "user": "alice", "org": "gist-ai", "server": ""}
    assert registry.get_sample_value("gpuhub_gpu_process_sm_utilization_ratio", labels) == 0.84
    assert registry.get_sample_value("gpuhub_gpu_process_memory_used_bytes", labels) == 1 << 30
    # The holder series comes from the real container listing (gpuhub.gpus label).
    assert (
        registry.get_sample_value(
            "gpuhub_gpu_allocated",
            {"uuid": "GPU-fake-0", "model": "H100", "org": "gist-ai", "user": "alice", "server": ""},
        )
        == 1
    )
    assert registry.get_sample_value("gpuhub_exporter_up", {"exporter": "gpu"}) == 1
    assert registry.get_sample_value("gpuhub_exporter_errors_total", {"exporter": "gpu", "source": "docker"}) == 0
