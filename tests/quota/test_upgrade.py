"""Upgrades: a hub database made by the first released schema (0001), with data, is migrated to head by the
hub's normal start, and every statement is identical before and after (fixtures/make_v1.py builds it)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from alembic.script import ScriptDirectory

from quota import db
from tests.faults.figures import record
from tests.harness import ROOT, HubProcess, default_site

pytestmark = pytest.mark.docker

FIXTURES = ROOT / "tests" / "quota" / "fixtures"
HEAD = ScriptDirectory.from_config(db.alembic_config()).get_current_head()


def _make_v1():
    spec = importlib.util.spec_from_file_location("make_v1", FIXTURES / "make_v1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _revision(path) -> str:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT version_num FROM gpuhub_alembic_version").fetchone()[0]
    finally:
        con.close()


def _cli_statement(site_path, period: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "gpuhub.cli", "billing", "statement", "--period", period, "--format", "json"],
        env={**os.environ, "GPUHUB_SITE_CONFIG": str(site_path)},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_fixture_is_the_first_schema_and_current_code_reads_it_unchanged(tmp_path):
    """The committed file is at revision 0001, and today's billing reads it as the golden statements say."""
    make_v1 = _make_v1()
    copy = tmp_path / "v1.sqlite"
    shutil.copy(FIXTURES / "v1.sqlite", copy)
    assert _revision(copy) == "0001"
    golden = json.loads((FIXTURES / "v1-statements.json").read_text())
    assert golden["2026-10"] and golden["2026-11"]
    assert make_v1.statements(f"sqlite:///{copy}") == golden
    assert _revision(copy) == "0001"  # reading did not migrate


def test_hub_start_migrates_the_v1_database_and_statements_stay_identical(tmp_path, docker_client):
    """Promise: upgrading gpuhub keeps the ledger; the hub's normal start migrates 0001 -> head in place."""
    make_v1 = _make_v1()
    hub = HubProcess(tmp_path)
    hub.site = default_site(hub.instance, hub.port, hub.state) | make_v1.SITE_EXTRA
    hub.site_path.write_text(yaml.safe_dump(hub.site))
    hub.state.mkdir(parents=True)
    dbfile = hub.state / "jupyterhub.sqlite"
    shutil.copy(FIXTURES / "v1.sqlite", dbfile)
    golden = json.loads((FIXTURES / "v1-statements.json").read_text())
    try:
        t0 = time.monotonic()
        hub.start()
        start_s = time.monotonic() - t0
        assert _revision(dbfile) == HEAD != "0001"
        for period, rows in golden.items():
            assert _cli_statement(hub.site_path, period) == rows, period
        con = sqlite3.connect(dbfile)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert con.execute("SELECT uid FROM gpuhub_user_ids WHERE \"user\"='alice'").fetchone()[0] == 20001
            assert con.execute("SELECT count FROM gpuhub_spawn_refusals WHERE org='gist-ai'").fetchone()[0] == 3
            assert con.execute("SELECT count(*) FROM gpuhub_budget_warnings").fetchone()[0] == 1
            assert con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1  # JupyterHub's own
        finally:
            con.close()
        # the migrated ledger takes new allocations: a GPU server starts and is billed beside the old rows
        r = hub.spawn("alice", {"image": "python", "gpus": 1, "gpu_model": "H100"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready("alice")
        hub.stop_server("alice")
        for period, rows in golden.items():
            assert _cli_statement(hub.site_path, period) == rows, period  # past months untouched
        n = sum(len(rows) for rows in golden.values())
        record(
            "U1",
            f"revision 0001 -> {HEAD} by the hub's start ({start_s:.1f} s to answer); {n} statement rows "
            f"of {len(golden)} months identical before and after",
            start_s=round(start_s, 1),
            head=HEAD,
            statement_rows=n,
        )
    except BaseException:
        print(hub.dump_logs())
        raise
    finally:
        hub.cleanup()
