"""`gpuhub node register|list` without a swarm: what NVML declares, and the refusals that name their fix."""

from __future__ import annotations

import pytest

from exporters.testing import FakeGpu, FakeNvmlSource
from gpuhub import cli
from gpuhub.core.site import Device
from gpuhub.host import swarm
from gpuhub.node_cli import nvml_gpus, simulated_gpus
from quota.placement import offers_from_swarm

MODELS = {"H100": 1.0, "H100-MIG-1g.10gb": 0.14, "A100": 0.6}


def fake_node_gpus():
    mig = FakeGpu(
        uuid="GPU-b",
        migs=[
            FakeGpu(uuid="MIG-b1", name="NVIDIA H100 80GB HBM3 MIG 1g.10gb", is_mig=True),
            FakeGpu(uuid="MIG-b2", name="NVIDIA H100 80GB HBM3 MIG 3g.40gb", is_mig=True),
        ],
    )
    return [FakeGpu(uuid="GPU-a"), mig, FakeGpu(uuid="GPU-c", name="NVIDIA A100-SXM4-40GB")]


def test_nvml_declaration_gives_the_same_units_as_the_single_host_nvml_inventory():
    declared = nvml_gpus(FakeNvmlSource(fake_node_gpus(), slow_interval=0))
    assert declared == [
        ("GPU-a", "NVIDIA H100 80GB HBM3"),
        ("MIG-b1", "NVIDIA H100 80GB HBM3 MIG 1g.10gb"),
        ("MIG-b2", "NVIDIA H100 80GB HBM3 MIG 3g.40gb"),
        ("GPU-c", "NVIDIA A100-SXM4-40GB"),
    ]  # GPU-b is in MIG mode: its instances are the units
    labels = swarm.gpu_labels(declared, "nvml")
    node = swarm.node_from_attrs(
        {"ID": "n", "Spec": {"Labels": labels, "Availability": "active"}, "Description": {"Hostname": "g1"},
         "Status": {"State": "ready"}}
    )  # fmt: skip
    offers, skipped = offers_from_swarm([node], MODELS)
    assert set(offers[0].devices) == {Device("GPU-a", "H100"), Device("MIG-b1", "H100-MIG-1g.10gb"),
                                      Device("GPU-c", "A100")}  # fmt: skip
    assert skipped == [
        "MIG-b2 on g1 ('NVIDIA H100 80GB HBM3 MIG 3g.40gb': declare it under gpus.models to allocate it)"
    ]


def test_simulated_gpus_are_unique_per_node():
    assert simulated_gpus("n-1", 2, "H100") == [("GPU-sim-n-1-0", "H100"), ("GPU-sim-n-1-1", "H100")]
    assert not {u for u, _ in simulated_gpus("n-1", 8, "H100")} & {u for u, _ in simulated_gpus("n-2", 8, "H100")}


def test_a_uuid_that_cannot_be_a_label_key_is_refused_with_the_fix():
    with pytest.raises(swarm.SwarmError, match="cannot be a label key"):
        swarm.gpu_labels([("GPU 1", "H100")], "nvml")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["node", "register"], "say where the GPUs come from: --nvml, or --simulate N --model MODEL"),
        (["node", "register", "--nvml", "--simulate", "2"], "say where the GPUs come from"),
        (["node", "register", "--simulate", "2"], "--simulate N needs N >= 0 and --model MODEL"),
        (["node", "register", "--simulate", "-1", "--model", "H100"], "--simulate N needs N >= 0"),
    ],
)
def test_register_refuses_a_request_without_a_source_before_it_connects(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuhub: error: ") and message in err


def test_list_against_an_engine_that_does_not_answer_names_the_flag(tmp_path, capsys):
    assert cli.main(["node", "list", "--docker-host", f"unix://{tmp_path}/none.sock"]) == 2
    err = capsys.readouterr().err
    assert f"the Docker engine at unix://{tmp_path}/none.sock does not answer" in err and "--docker-host" in err


@pytest.mark.docker
def test_list_against_an_engine_in_no_swarm_says_the_hub_needs_a_manager(docker_client, capsys, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert docker_client.info()["Swarm"]["LocalNodeState"] == "inactive"  # this host's engine is not a node
    assert cli.main(["node", "list"]) == 2
    err = capsys.readouterr().err
    assert "cannot list the swarm's nodes" in err and "must be a swarm manager" in err, err
