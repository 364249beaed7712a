"""A class window through a real hub and Docker: warned before, others stopped at the start, the course served.

One story on one hub, with a one-off ``dates:`` window of 1 H100 for course ``ml`` that opens at the first minute
boundary at least :data:`LEAD_SECONDS` after the test starts (site time zone Asia/Seoul). Before it opens: a
non-member's new server that had to take the reserved H100 (the other was taken, by a server that got the
unreserved one: new allocations prefer devices no window needs soon) is warned in its spawn progress, on its home
page and in the log; a course member's H100 request waits in line (every H100 busy). At the start the quota
service stops the non-member's server (ledger reason ``reservation-window``) and the member's request is granted
the reserved GPU within 2 minutes; the other server keeps running.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml

from gpuhub.core.site import load_site
from quota.store import QuotaStore
from tests.harness import HubProcess, default_site, login
from tests.queue.test_spawn_queue import pending, progress_until, queue, spawn, wait_ready

pytestmark = pytest.mark.docker

H100 = {"image": "python", "gpus": 1, "gpu_model": "H100"}
LEAD_SECONDS = 100  # hub start and two server starts fit before the window opens (on loaded shared cores)
SEOUL = ZoneInfo("Asia/Seoul")


def window_start(now: float) -> datetime:
    """The first whole minute (Seoul) at least LEAD_SECONDS from ``now``."""
    t = datetime.fromtimestamp(now + LEAD_SECONDS, SEOUL)
    return (t + timedelta(minutes=1)).replace(second=0, microsecond=0)


def reservation_site(instance: str, port: int, state, start: datetime) -> dict:
    site = default_site(instance, port, state)
    end = min(start + timedelta(minutes=10), start.replace(hour=23, minute=59))
    site["organizations"]["academy"] = {"gpu_limit": 2, "gpu_hours_per_month": 100, "max_gpus_per_server": 1}
    site["courses"] = {
        "ml": {
            "org": "academy",
            "instructors": ["dana"],
            "students": ["erin"],
            "reservations": [{"gpus": 1, "model": "H100", "dates": [f"{start:%Y-%m-%d %H:%M}-{end:%H:%M}"]}],
        }
    }
    site["quota"]["reservation_notice_minutes"] = 5  # the whole lead time is within the notice
    return site


@pytest.fixture
def hub(tmp_path, docker_client, request, hub_db_url):
    t0 = time.time()
    start = window_start(t0)
    instance = f"gpuhubtest{os.urandom(3).hex()}"
    db_url = hub_db_url
    h = HubProcess(tmp_path, instance=instance, db_url=db_url)
    h.site = reservation_site(instance, h.port, h.state, start)
    if db_url:
        h.site["hub"]["db_url"] = db_url
    h.site_path.write_text(yaml.safe_dump(h.site))
    h.window_start, h.t0 = start.timestamp(), t0
    yield h.start()
    if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed:
        print(h.dump_logs())
    h.cleanup()


def gpus_of(h: HubProcess, user: str) -> list[str]:
    return [u for c in h.containers(user=user) for u in (c.labels.get("gpuhub.gpus") or "").split(",") if u]


def test_a_class_window_warns_stops_others_and_serves_the_course(hub):
    h = hub
    assert spawn(h, "alice", H100).status_code in (201, 202)
    wait_ready(h, "alice")
    assert gpus_of(h, "alice") == ["GPU-sim-h100-0"]  # not the one the window needs

    # carol's new server has to take the reserved H100: its spawn progress says so at once
    answer = {}
    threading.Thread(target=lambda: answer.setdefault("r", spawn(h, "carol", H100)), daemon=True).start()
    deadline = time.monotonic() + 30
    while not pending(h, "carol") and "r" not in answer and time.monotonic() < deadline:
        time.sleep(0.1)
    seen = progress_until(h, "carol", "reserved for course ml")
    assert "GPU GPU-sim-h100-1 of this server is reserved for course ml's class window from" in seen[-1], seen
    wait_ready(h, "carol")
    assert gpus_of(h, "carol") == ["GPU-sim-h100-1"]

    # warned on the home page and in the log (the quota service's watch), alice is not
    page = login(h, "carol").get(f"{h.url}/hub/home", timeout=30).text
    assert 'data-gpuhub-reservation="default" data-gpuhub-action="warn"' in page, page[-3000:]
    assert "holds GPU GPU-sim-h100-1, which is reserved for course ml" in page
    deadline = time.monotonic() + 15
    while "reservation: warned carol/" not in h.log_lines("reservation") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "reservation: warned carol/" in h.log_lines("reservation"), h.log_lines("gpuhub-quota")
    assert "warned alice/" not in h.log_lines("reservation")

    # a course member's request waits in line: every H100 is busy
    assert spawn(h, "erin", H100).status_code == 202
    assert [r["server"] for r in queue(h)["requests"]] == ["erin/"]
    before = h.window_start - time.time()
    assert before > 0, f"the window opened {-before:.0f} s before the member queued: raise LEAD_SECONDS"

    # the window opens: carol's server is stopped, erin gets the reserved GPU within 2 minutes
    time.sleep(max(0.0, h.window_start - time.time()))
    wait_ready(h, "erin", timeout=120)
    granted = time.time() - h.window_start
    assert granted < 120, granted
    assert gpus_of(h, "erin") == ["GPU-sim-h100-1"] and not h.containers(user="carol")
    assert gpus_of(h, "alice") == ["GPU-sim-h100-0"]  # a server on an unreserved GPU keeps running
    store = QuotaStore.from_site(load_site(h.site_path))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        closed = [r for r in store.recently_closed(datetime.fromtimestamp(h.t0).astimezone()) if r["user"] == "carol"]
        if closed and closed[-1]["end_reason"] == "reservation-window":
            break
        time.sleep(0.5)
    assert closed and closed[-1]["end_reason"] == "reservation-window", closed
    assert "reservation: stopping carol/ (GPU GPU-sim-h100-1) at the start of course ml" in h.log_lines("stopping")
    stopped_at = closed[-1]["ended_at"].timestamp() - h.window_start
    print(
        f"class window: carol stopped {stopped_at:.1f} s after the start, erin ready {granted:.1f} s after it "
        f"(member queued {before:.0f} s before it; test {time.time() - h.t0:.0f} s)"
    )
    assert 0 <= stopped_at < 30, stopped_at
