"""The culler's checks become the ledger's idle spans (quota.usage_records): the idle-allocated GPU-hours that
/hub/operators and ``gpuhub quota status`` show come from what gpuhub-idle saw, by time travel on real SQLite."""

import pytest

from quota.usage_records import month_report
from tests.idle.test_culler import T0, world  # noqa: F401 (the fixture)


def test_an_idle_gpu_counts_from_its_first_idle_check_until_the_cull(world):  # noqa: F811
    dev = world.spawn("alice")
    busy = world.spawn("bob")
    actions = world.run(40, {"alice": (dev, T0.timestamp()), "bob": (busy, world.now + 10**9)})  # bob never idle
    assert (30.0, "alice/", "cull") in actions
    report = month_report(world.store)
    # idle from her start (T0) to the last check before the stop, at 30 min; bob's busy GPU adds nothing
    assert report["idle_gpu_hours"] == {"lab-a": pytest.approx(0.5), "lab-b": 0.0, "lab-c": 0.0}
    world.run(5, {})
    assert month_report(world.store)["idle_gpu_hours"]["lab-a"] == pytest.approx(0.5)  # closed, not growing
