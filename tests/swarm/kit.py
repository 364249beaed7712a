"""One test cluster of Docker-in-Docker Swarm nodes driven by scripts/swarm.sh (each test module names its own)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

import pytest

from tests.harness import ROOT

SCRIPT = str(ROOT / "scripts" / "swarm.sh")
RUN = os.environ.get("GPUHUB_RUN") or str(ROOT / ".run")


@dataclass(frozen=True)
class SwarmScript:
    """``scripts/swarm.sh`` for the cluster ``name`` of ``nodes`` nodes with ``gpus`` simulated GPUs each."""

    name: str
    nodes: int
    gpus: int
    timeout: float = 900  # building nodes and copying images onto them takes minutes on 2 cores

    def sock(self, i: int) -> str:
        """The engine socket of node ``i`` (1-based), as the host reaches it."""
        return f"unix://{RUN}/swarm/{self.name}/node-{i}/docker.sock"

    def sh(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run ``args`` with this cluster's settings (never the caller's DOCKER_HOST); a failure fails the test."""
        env = {**os.environ, "GPUHUB_SWARM_NAME": self.name, "GPUHUB_DEMO_NODES": str(self.nodes)}
        env |= {"GPUHUB_DEMO_GPUS_PER_NODE": str(self.gpus), "GPUHUB_DEMO_GPU_MODEL": "H100"}
        env.pop("DOCKER_HOST", None)
        out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout or self.timeout)
        if check and out.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out


def wait_for(what: str, fn, timeout: float = 60.0, every: float = 0.5):
    """``fn()``'s first truthy value, polled every ``every`` s; the test fails after ``timeout`` s naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last value {value!r}")
        time.sleep(every)
