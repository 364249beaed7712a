"""`gpuhub project …` run as the operator runs it: the installed `gpuhub` command, a site config and a SQLite hub
database in a temp folder; every change shows in `members`/`list` and in the audit log."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from quota import db
from quota.project_store import ProjectStore
from tests.projects.projectkit import site_data

GPUHUB = Path(sys.executable).parent / "gpuhub"
TODAY = date.today()  # the subprocess runs on the real clock; the windows are set around it


@pytest.fixture
def site(tmp_path):
    """A site config with an open project (cohort) and a closed one (old), and a migrated hub database."""
    db_url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    data = site_data(
        {"starts": TODAY - timedelta(days=10), "expires": TODAY + timedelta(days=20), "dua": {"file": "dua.txt"}},
        hub={"db_url": db_url, "admin_users": ["root"]},
    )
    old = dict(data["projects"]["cohort"], starts=date(2025, 1, 1), expires=date(2025, 6, 30), members=["alice"])
    old["dua"] = "old terms"
    data["projects"]["old"] = old
    (tmp_path / "dua.txt").write_text("cohort terms v1\n", encoding="utf-8")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    db.upgrade(db_url)
    return path


def gpuhub(site: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(GPUHUB), "--site", str(site), *args], capture_output=True, text=True, timeout=120, check=False
    )


def ok(site: Path, *args: str) -> str:
    r = gpuhub(site, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def fails(site: Path, *args: str) -> str:
    r = gpuhub(site, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    return r.stderr


def store_of(site: Path) -> ProjectStore:
    return ProjectStore.from_url(f"sqlite:///{site.parent / 'hub.sqlite'}", migrate=False)


def test_list_shows_window_members_stewards_and_state(site):
    out = ok(site, "project", "list").splitlines()
    assert out[0].split() == ["project", "org", "window", "members", "state", "stewards"]
    window = f"{TODAY - timedelta(days=10)}..{TODAY + timedelta(days=20)}"
    assert out[1].split() == ["cohort", "hospital", window, "2", "open", "steve", "+1", "IdP", "group(s)"]
    assert out[2].split()[:5] == ["old", "hospital", "2025-01-01..2025-06-30", "1", "closed"]
    rows = json.loads(ok(site, "project", "list", "--format", "json"))
    assert [(r["project"], r["members"], r["state"], r["stewards"]) for r in rows] == [
        ("cohort", 2, "open", ["steve"]),
        ("old", 1, "closed", ["steve"]),
    ]


def test_add_and_remove_members_show_in_members_and_the_audit_log(site):
    out = ok(site, "project", "add-member", "cohort", "carol", "--by", "steve")
    assert out.startswith("added carol to project cohort (by steve); audit log row 1")
    assert "already a member" in ok(site, "project", "add-member", "cohort", "carol", "--by", "steve")
    out = ok(site, "project", "remove-member", "cohort", "bob", "--by", "root")
    assert out.startswith("removed bob from project cohort (by root); audit log row 2")
    assert "already removed" in ok(site, "project", "remove-member", "cohort", "bob", "--by", "steve")
    rows = json.loads(ok(site, "project", "members", "cohort", "--format", "json"))
    assert [(r["user"], r["source"]) for r in rows] == [("alice", "config"), ("carol", "added"), ("bob", "removed")]
    assert json.loads(ok(site, "project", "list", "--format", "json"))[0]["members"] == 2  # alice, carol
    s = store_of(site)
    try:
        acts = [(r.action, r.project, r.account, r.target) for r in s.audit.rows()]
    finally:
        s.engine.dispose()
    assert acts == [
        ("membership.added", "cohort", "steve", "carol"),
        ("membership.removed", "cohort", "root", "bob"),
    ]
    assert ok(site, "audit", "verify").startswith("audit log ok: 2 rows")
    days = ("--from", str(TODAY - timedelta(days=1)), "--to", str(TODAY + timedelta(days=1)))  # any host zone
    exported = list(csv.reader(io.StringIO(ok(site, "audit", "export", "--project", "cohort", *days))))
    assert [(acc, target, action) for acc, _at, _src, target, action in exported[1:]] == [
        ("steve", "carol", "membership.added"),
        ("root", "bob", "membership.removed"),
    ]


def test_members_show_idp_group_members_and_each_ones_dua_acceptance(site):
    with db.make_engine(f"sqlite:///{site.parent / 'hub.sqlite'}").begin() as conn:  # JupyterHub's group tables
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(255))"))
        conn.execute(text("CREATE TABLE groups (id INTEGER PRIMARY KEY, name VARCHAR(255))"))
        conn.execute(text("CREATE TABLE user_group_map (user_id INTEGER, group_id INTEGER)"))
        conn.execute(text("INSERT INTO users VALUES (1, 'zoe'), (2, 'yuri')"))
        conn.execute(text("INSERT INTO groups VALUES (1, 'cohort-team'), (2, 'elsewhere')"))
        conn.execute(text("INSERT INTO user_group_map VALUES (1, 1), (2, 2)"))
    current = yaml.safe_load(site.read_text())
    assert current["projects"]["cohort"]["dua"] == {"file": "dua.txt"}
    from gpuhub.core.site import load_site

    sha = load_site(site).projects["cohort"].dua_sha256
    s = store_of(site)
    try:
        s.accept_dua("cohort", "alice", sha, "10.0.0.5")
        s.accept_dua("cohort", "zoe", "0" * 64, "10.0.0.6")  # the text has changed since
    finally:
        s.engine.dispose()
    rows = {r["user"]: r for r in json.loads(ok(site, "project", "members", "cohort", "--format", "json"))}
    assert {u: (r["source"], r["dua"]) for u, r in rows.items()} == {
        "alice": ("config", "accepted"),
        "bob": ("config", "not accepted"),
        "zoe": ("idp", "accepted an older text"),
    }
    assert rows["alice"]["dua_source"] == "10.0.0.5" and rows["alice"]["dua_accepted_at"]
    table = ok(site, "project", "members", "cohort")
    assert table.splitlines()[0] == "project cohort (Cancer cohort); stewards: steve"
    assert any(line.split()[:3] == ["alice", "config", "accepted"] for line in table.splitlines())


def test_extend_moves_the_last_day_later_only(site):
    new = TODAY + timedelta(days=60)
    out = ok(site, "project", "extend", "cohort", str(new), "--by", "steve")
    assert out.startswith(f"project cohort is open through {new} (Asia/Seoul), was {TODAY + timedelta(days=20)}")
    assert json.loads(ok(site, "project", "list", "--format", "json"))[0]["expires"] == str(new)
    err = fails(site, "project", "extend", "cohort", str(new - timedelta(days=1)), "--by", "steve")
    assert f"is not after project cohort's last day {new}; extend only moves it later" in err
    assert ok(site, "project", "extend", "old", str(TODAY + timedelta(days=1)), "--by", "root")
    assert json.loads(ok(site, "project", "list", "--format", "json"))[1]["state"] == "open"  # reopened
    s = store_of(site)
    try:
        rows = [(r.action, r.account, r.target) for r in s.audit.rows()]
    finally:
        s.engine.dispose()
    assert rows == [
        ("project.extended", "steve", f"expires={new}"),
        ("project.extended", "root", f"expires={TODAY + timedelta(days=1)}"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("add-member", "cohort", "dave", "--by", "mallory"),
            "gpuhub: error: --by 'mallory' is not a steward of project cohort (steve) nor a hub admin",
        ),
        (
            ("add-member", "nope", "dave", "--by", "steve"),
            "gpuhub: error: project 'nope' is not in the site config (projects.nope); projects: cohort, old",
        ),
        (("add-member", "cohort", "Dave Kim", "--by", "steve"), "'Dave Kim' is not a gpuhub username"),
        (("extend", "cohort", "2027-02-30", "--by", "steve"), "'2027-02-30': not a date; write the new last day"),
        (("members", "nope"), "projects.nope"),
    ],
)
def test_mistakes_name_the_fix_and_record_nothing(site, args, message):
    assert message in fails(site, "project", *args)
    s = store_of(site)
    try:
        assert list(s.audit.rows()) == []
    finally:
        s.engine.dispose()


def test_by_is_required(site):
    r = gpuhub(site, "project", "add-member", "cohort", "carol")
    assert r.returncode == 2 and "the following arguments are required: --by" in r.stderr


def test_a_database_the_hub_never_migrated_is_named(site, tmp_path):
    fresh = tmp_path / "fresh.sqlite"
    fresh.touch()
    err = fails(site, "project", "list", "--db-url", f"sqlite:///{fresh}")
    assert "has no project tables" in err and "start the hub once so it migrates the database" in err
    err = fails(site, "project", "list", "--db-url", f"sqlite:///{tmp_path / 'absent.sqlite'}")
    assert "does not exist; start the hub once so it creates it, or check hub.db_url" in err
    assert not (tmp_path / "absent.sqlite").exists()
