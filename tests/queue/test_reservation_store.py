"""Class windows on the direct allocation path (quota.store + quota.policy), on SQLite and PostgreSQL: during a
window its GPUs go only to the course's members charged to the course's org (rule ``reserved-for-course``, a 429,
so the request waits in line); outside it they are ordinary capacity, handed out last."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quota.policy import AllocationRequest, Refusal
from quota.store import QuotaStore
from tests.clock import Clock
from tests.queue.kit import MONDAY, make_site, site_data

TUESDAY_CLASS = datetime(2026, 12, 8, 4, 30, tzinfo=UTC)  # Tue 13:30 in Seoul: ml101's window (2 H100) is open


def orgs(**extra_members) -> dict:
    data = site_data()["organizations"]
    for org, members in extra_members.items():
        data[org]["members"] += members
    return {k: {**o, "gpu_hours_per_month": 100, "max_gpus_per_server": 2} for k, o in data.items()}


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path, organizations=orgs())


def ask(store, user, server="", gpus=1, model="H100", org=None):
    return store.allocate(AllocationRequest(user, server, org, "python", gpus, model))


def test_during_a_window_its_gpus_go_only_to_the_course(engine, site):
    store = QuotaStore(engine, site, Clock(TUESDAY_CLASS))
    assert [ask(store, "bob", server=s).devices[0] for s in "ab"] == ["GPU-h0", "GPU-h1"]  # the unreserved H100s
    with pytest.raises(Refusal) as e:
        ask(store, "carol")
    assert (e.value.rule, e.value.status) == ("reserved-for-course", 429)
    assert "2 H100 GPU(s) are reserved for course ml101's class window until 15:00 KST" in e.value.message
    assert "wait in line" in e.value.message
    assert ask(store, "erin").devices == ["GPU-h2"]  # a student, charged to the course's org (academy)
    assert ask(store, "dana").devices == ["GPU-h3"]  # the instructor too
    assert ask(store, "carol", model="A100").model == "A100"  # other models are untouched


def test_a_member_charged_to_another_org_is_refused_too(engine, tmp_path):
    site2 = make_site(tmp_path, organizations=orgs(**{"gist-ai": ["erin"]}))  # erin is also in gist-ai
    store = QuotaStore(engine, site2, Clock(TUESDAY_CLASS))
    ask(store, "bob", server="a"), ask(store, "bob", server="b")
    with pytest.raises(Refusal) as e:
        ask(store, "erin", org="gist-ai")
    assert e.value.rule == "reserved-for-course"
    assert ask(store, "erin", server="class", org="academy").devices == ["GPU-h2"]


def test_outside_a_window_reserved_gpus_are_ordinary_capacity_handed_out_last(engine, site):
    store = QuotaStore(engine, site, Clock(MONDAY))  # Monday: tomorrow's window needs GPU-h2 and GPU-h3
    got = [ask(store, u, server=s).devices[0] for u, s in (("bob", "a"), ("bob", "b"), ("carol", "a"), ("carol", "b"))]
    assert got == ["GPU-h0", "GPU-h1", "GPU-h2", "GPU-h3"]
