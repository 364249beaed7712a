"""`gpuhub queue list` and `gpuhub reservations list`, run as the operator runs them (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from gpuhub.core.site import load_site
from quota.queue_store import QueueStore
from tests.harness import ROOT
from tests.queue.kit import site_data


def gpuhub(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpuhub", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_queue_list_shows_the_line_and_the_factors(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site_data(hub={"state_dir": str(tmp_path / "state")})))
    site = load_site(path)
    qs = QueueStore.from_site(site)
    qs.enqueue("alice/", "alice", "", "gist-ai", 2, "H100", {"gpus": 2})
    qs.enqueue("carol/", "carol", "", "cnuh", 1, None, {"gpus": 1})
    qs.engine.dispose()
    r = gpuhub("queue", "list", "--site", str(path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["POSITION", "SERVER", "ORG", "GPUS", "MODEL"]
    assert lines[1].split()[:5] == ["1", "alice/", "gist-ai", "2", "H100"]
    assert lines[2].split()[:5] == ["2", "carol/", "cnuh", "1", "any"]
    assert (
        "fair-share factor per org (share): academy 1.000 (0.25), cnuh 1.000 (0.25), gist-ai 1.000 (0.50)" in r.stdout
    )
    j = json.loads(gpuhub("--site", str(path), "queue", "list", "--format", "json").stdout)
    assert [x["server"] for x in j["requests"]] == ["alice/", "carol/"]


def test_queue_list_on_a_database_without_the_queue_names_the_fix(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site_data(hub={"state_dir": str(tmp_path)})))
    r = gpuhub("queue", "list", "--site", str(path))
    assert r.returncode == 2 and r.stderr.startswith("gpuhub: error: cannot read the GPU queue from sqlite:///")
    assert "start the hub once (it creates the queue tables)" in r.stderr


def test_reservations_list_prints_the_weekly_window_and_its_devices(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site_data()))
    r = gpuhub("reservations", "list", "--site", str(path), "--format", "json", "--days", "8")
    assert r.returncode == 0, r.stderr
    windows = json.loads(r.stdout)["windows"]
    assert windows and {w["course"] for w in windows} == {"ml101"}
    assert all(w["start"].startswith("Tue ") and w["start"].endswith("13:00") for w in windows)
    assert windows[0]["devices"] == "GPU-h3,GPU-h2"
    table = gpuhub("reservations", "list", "--site", str(path))
    assert "class windows in the next 14 days (Asia/Seoul):" in table.stdout
