"""L1, reduced for the suite: a small class logs in and starts at once (bench/load.py runs 50 and 100 users).

The same code as the bench (``bench.load.run``): users arrive over a short window, log in through the form,
start servers through the REST API with their own cookies (a fifth ask for one GPU of two simulated devices, so
some must be refused), and wait until ready or refused.
"""

from __future__ import annotations

import pytest

from bench.load import run
from tests.faults.figures import record

pytestmark = pytest.mark.docker


def test_a_class_of_twenty_starts_with_no_5xx_no_hub_restart_and_everyone_answered(docker_client):
    """Promise L1 (reduced): 20 users in 15 s -> 0 hub restarts, 0 5xx, every user running or refused with a
    message (the GPU requests beyond the two devices), none failed."""
    fig = run(20, window=15.0, gpu_share=0.2, gpus=2, timeout=300.0)
    record(
        "L1-20",
        f"20 users/15 s: ready p95 {fig['ready_p95_s']:.1f} s, {fig['running']} running, {fig['refused']} refused, "
        f"{fig['failed']} failed, {fig['http_5xx']} 5xx, {fig['hub_restarts']} hub restarts",
        **fig,
    )
    assert fig["hub_restarts"] == 0 and fig["http_5xx"] == 0, fig
    assert fig["failed"] == 0, fig["failed_messages"]
    assert fig["running"] + fig["refused"] == 20, fig
    assert fig["refused"] == 2 and fig["running"] == 18, fig  # 4 GPU asks on 2 devices; every CPU-only user runs
