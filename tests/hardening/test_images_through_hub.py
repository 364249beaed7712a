"""Each curated single-user image, spawned through the hub: code runs, the Korean pack is there."""

from __future__ import annotations

import pytest

from tests.harness import HubProcess
from tests.procs import cleaned_up

pytestmark = pytest.mark.docker

IMAGES = {
    "python": (
        "gpuhub/base-notebook:latest",
        "import numpy, pandas, sklearn, matplotlib; print('stack ok')",
        "stack ok",
    ),
    "pytorch": ("gpuhub/pytorch:latest", "import torch; print('torch', torch.ones(2, 2).sum().item())", "torch 4.0"),
}


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client):
    h = HubProcess(tmp_path_factory.mktemp("images"))
    # as the quickstart catalog (examples/site.yaml) offers them: the CPU image refuses GPUs
    h.site["images"] = {
        key: {"image": ref, "display_name": key, "gpu": key == "pytorch"} for key, (ref, _, _) in IMAGES.items()
    }
    h.site_path.write_text(__import__("yaml").safe_dump(h.site))
    with cleaned_up(request, h):
        yield h.start()


@pytest.mark.parametrize("key", list(IMAGES))
def test_image_spawns_runs_code_and_has_the_korean_language_pack(hub, key):
    _, code, expected = IMAGES[key]
    assert hub.spawn("alice", {"image": key}).status_code in (201, 202)
    hub.wait_ready("alice")
    assert hub.run_code("alice", code).strip() == expected
    out = hub.run_code("alice", "import importlib.metadata as m; print(m.version('jupyterlab-language-pack-ko-kr'))")
    assert out.strip()[:1].isdigit(), out
    hub.stop_server("alice")
    hub.wait_containers_gone(user="alice")


def test_a_cpu_only_image_refuses_gpus_and_a_gpu_image_takes_them(hub):
    r = hub.spawn("alice", {"image": "python", "gpus": 1})
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert "image python is CPU-only" in message and "0 GPUs or a GPU image" in message, r.text  # the rule, the fix
    assert hub.containers(all=True, user="alice") == []
    assert hub.spawn("alice", {"image": "pytorch", "gpus": 1}).status_code in (201, 202)
    hub.wait_ready("alice")
    assert hub.run_code("alice", "import os; print(os.environ['GPUHUB_GPUS'])").strip().startswith("GPU-sim-")
    hub.stop_server("alice")
    hub.wait_containers_gone(user="alice")
