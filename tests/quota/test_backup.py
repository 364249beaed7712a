"""`gpuhub backup --to DIR` / `gpuhub restore --from DIR`: a restore into a fresh database gives the same
statements, on SQLite and on PostgreSQL; a damaged or newer dump, or a database with rows, is refused with the fix."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from quotakit import SITE
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from gpuhub import cli
from quota import backup, db
from quota.audit import AuditLog
from quota.models import spawn_refusals, usage_intervals

NOW = datetime(2026, 12, 3, 5, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def two_databases(request, tmp_path):
    """(source url, fresh target url): two SQLite files, or two new PostgreSQL databases (public schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'a.sqlite'}", f"sqlite:///{tmp_path / 'b.sqlite'}"
        return
    base = request.getfixturevalue("postgres_url")  # tests/conftest.py: the test cluster
    admin = db.make_engine(base, isolation_level="AUTOCOMMIT")
    names = [f"gpuhub_bk_{uuid.uuid4().hex[:8]}_{s}" for s in "ab"]
    with admin.connect() as conn:
        for n in names:
            conn.execute(text(f'CREATE DATABASE "{n}"'))
    try:
        yield tuple(make_url(base).set(database=n).render_as_string(hide_password=False) for n in names)
    finally:
        with admin.connect() as conn:
            for n in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
        admin.dispose()


def site_file(tmp_path: Path, name: str, url: str) -> str:
    data = {**SITE, "hub": {"state_dir": str(tmp_path / f"state-{name}"), "db_url": url}}
    path = tmp_path / f"site-{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def gpuhub(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv), clock=lambda: NOW)
    out = capsys.readouterr()
    return code, out.out, out.err


def interval(
    user: str, server_name: str, org: str, model: str, gpus: int, started_at: datetime, ended_at=None, **kw
) -> dict:
    """One ``gpuhub_usage_intervals`` row as the hub writes it (closed ones ``stopped`` unless told otherwise)."""
    return dict(
        server_key=f"{user}/{server_name}",
        user=user,
        server_name=server_name,
        org=org,
        image=kw.pop("image", "python"),
        device_uuids=kw.pop("device_uuids", ""),
        gpus=gpus,
        model=model,
        weight=kw.pop("weight", 1.0),
        started_at=started_at,
        ended_at=ended_at,
        end_reason=kw.pop("end_reason", None if ended_at is None else "stopped"),
        heartbeat_at=kw.pop("heartbeat_at", started_at),
        **kw,
    )


def fill(url: str) -> None:
    """A ledger like a hub's: closed intervals in two months, a month-crossing and a still-open one, refusals,
    audit rows (a hash chain), on the revision the hub runs."""
    db.upgrade(url)
    engine = db.make_engine(url)
    t = datetime(2026, 11, 3, 1, 0, tzinfo=UTC)
    rows = []
    for i, (user, org, model, gpus, w) in enumerate(
        [("alice", "lab-a", "H100", 2, 1.0), ("bob", "lab-a", "A100", 1, 0.5), ("carol", "lab-b", "H100", 1, 1.0)] * 7
    ):
        start = t + timedelta(days=i, minutes=17 * i)
        end = start + timedelta(hours=1, seconds=i * 37.123457)
        rows.append(interval(user, str(i), org, model, gpus, start, end, device_uuids=f"GPU-{model}-{i}", weight=w))
    cross = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)  # 23:00 KST on the last day of November
    end = cross + timedelta(hours=3)
    rows.append(
        interval("bob", "cross", "lab-b", "H100", 1, cross, end, device_uuids="GPU-H100-9", end_reason="culled")
    )
    open_since = NOW - timedelta(hours=5)
    rows.append(
        interval(
            "alice", "", "lab-a", "H100", 1, open_since, image="torch", device_uuids="GPU-H100-0", heartbeat_at=NOW
        )
    )
    with engine.begin() as conn:
        conn.execute(insert(usage_intervals), rows)
        conn.execute(
            insert(spawn_refusals),
            [dict(org="lab-a", reason="gpu_limit", count=3), dict(org="lab-b", reason="budget", count=1)],
        )
    audit = AuditLog(engine, clock=lambda: NOW)
    for i in range(5):
        audit.append("test.event", project="lab-a", account="alice", target=f"t{i}", detail={"i": i})
    engine.dispose()


def statements(capsys, site: str) -> list[str]:
    outs = []
    for period in ("2026-11", "2026-12"):
        for fmt in ("json", "csv", "html"):
            code, out, err = gpuhub(capsys, "--site", site, "billing", "statement", "--period", period, "--format", fmt)
            assert code == 0, err
            outs.append(out)
    return outs


def test_restore_into_a_fresh_database_gives_identical_statements(two_databases, tmp_path, capsys):
    src_url, dst_url = two_databases
    fill(src_url)
    src, dst = site_file(tmp_path, "src", src_url), site_file(tmp_path, "dst", dst_url)
    before = statements(capsys, src)
    assert '"gpu_seconds"' in before[0] and "lab-b" in before[0] and "alice" in before[3]  # not empty

    code, out, err = gpuhub(capsys, "--site", src, "backup", "--to", str(tmp_path / "bk"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["revision"] == backup.known_revisions()[-1]
    assert manifest["tables"]["gpuhub_usage_intervals"] == 23 and manifest["tables"]["gpuhub_audit_log"] == 5
    assert manifest["tables"]["gpuhub_spawn_refusals"] == 2
    assert len(manifest["sha256"]) == 64 and "23" not in err and "backed up" in out

    code, out, err = gpuhub(capsys, "--site", dst, "restore", "--from", str(tmp_path / "bk"))
    assert code == 0, err
    assert "restored" in out
    assert statements(capsys, dst) == before
    assert AuditLog(db.make_engine(dst_url)).verify().ok  # the hash chain came across intact

    # the hub then writes on from the restored ledger: new ids continue after the restored ones
    engine = db.make_engine(dst_url)
    with engine.begin() as conn:
        conn.execute(insert(usage_intervals).values(interval("dave", "", "lab-c", "H100", 1, NOW)))
        assert conn.execute(text("SELECT count(*) FROM gpuhub_usage_intervals")).scalar_one() == 24
    engine.dispose()


def test_restore_refuses_a_database_with_rows_unless_forced(two_databases, tmp_path, capsys):
    src_url, dst_url = two_databases
    fill(src_url)
    fill(dst_url)  # a database in use: its own ledger
    engine = db.make_engine(dst_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "DELETE FROM gpuhub_usage_intervals WHERE user = 'carol'"
                if dst_url.startswith("sqlite")
                else "DELETE FROM gpuhub_usage_intervals WHERE \"user\" = 'carol'"
            )
        )
    engine.dispose()
    src, dst = site_file(tmp_path, "src", src_url), site_file(tmp_path, "dst", dst_url)
    assert gpuhub(capsys, "--site", src, "backup", "--to", str(tmp_path / "bk"))[0] == 0
    kept = statements(capsys, dst)

    code, out, err = gpuhub(capsys, "--site", dst, "restore", "--from", str(tmp_path / "bk"))
    assert code == 2
    assert "already holds quota rows (gpuhub_audit_log 5, " in err and "pass --force" in err, err
    assert statements(capsys, dst) == kept  # untouched

    code, out, err = gpuhub(capsys, "--site", dst, "restore", "--from", str(tmp_path / "bk"), "--force")
    assert code == 0, err
    assert statements(capsys, dst) == statements(capsys, src) != kept


def test_restore_refuses_a_newer_schema_and_a_damaged_dump(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    fill(url)
    site = site_file(tmp_path, "a", url)
    assert gpuhub(capsys, "--site", site, "backup", "--to", str(tmp_path / "bk"))[0] == 0
    fresh = site_file(tmp_path, "b", f"sqlite:///{tmp_path / 'b.sqlite'}")
    manifest_path = tmp_path / "bk" / "manifest.json"
    good = manifest_path.read_text()

    manifest_path.write_text(good.replace(json.loads(good)["revision"], "9999_from_the_future"))
    code, _, err = gpuhub(capsys, "--site", fresh, "restore", "--from", str(tmp_path / "bk"))
    assert code == 2
    assert "schema revision 9999_from_the_future is newer than this gpuhub knows" in err, err
    assert "upgrade gpuhub first" in err
    assert (
        not (tmp_path / "b.sqlite").exists()
        or backup.row_counts(db.make_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")) == {}
    )

    manifest_path.write_text(good)
    with open(tmp_path / "bk" / "gpuhub.sqlite", "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 16)
    code, _, err = gpuhub(capsys, "--site", fresh, "restore", "--from", str(tmp_path / "bk"))
    assert code == 2 and "sha256 differs from the manifest's" in err and "copy the backup folder again" in err

    code, _, err = gpuhub(capsys, "--site", site, "backup", "--to", str(tmp_path / "bk"))
    assert code == 2 and "the folder is not empty" in err


def test_sqlite_backup_holds_only_the_quota_tables(tmp_path, capsys):
    """The hub's SQLite file also holds JupyterHub's tables (tokens, OAuth clients): they stay out of a backup."""
    url = f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"
    fill(url)
    with sqlite3.connect(tmp_path / "jupyterhub.sqlite") as conn:
        conn.execute("CREATE TABLE api_tokens (id INTEGER PRIMARY KEY, hashed TEXT)")
        conn.execute("INSERT INTO api_tokens (hashed) VALUES ('sha512:secret')")
    site = site_file(tmp_path, "a", url)
    assert gpuhub(capsys, "--site", site, "backup", "--to", str(tmp_path / "bk"))[0] == 0
    with sqlite3.connect(tmp_path / "bk" / "gpuhub.sqlite") as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "api_tokens" not in names and "gpuhub_usage_intervals" in names
    assert b"sha512:secret" not in (tmp_path / "bk" / "gpuhub.sqlite").read_bytes()


def test_an_older_backup_restores_into_a_database_the_hub_has_migrated(two_databases, tmp_path, capsys):
    """A backup made by an older gpuhub (schema 0001) into a database a new hub has already created (head,
    no rows yet): no --force needed, the rows come back, and the schema ends at this code's head."""
    src_url, dst_url = two_databases
    db.upgrade(src_url, "0001")
    engine = db.make_engine(src_url)
    start = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    with engine.begin() as conn:
        row = interval("alice", "", "lab-a", "H100", 2, start, start + timedelta(hours=2), device_uuids="GPU-0")
        conn.execute(insert(usage_intervals).values(row))
    engine.dispose()
    db.upgrade(dst_url)  # the new hub started once
    src, dst = site_file(tmp_path, "src", src_url), site_file(tmp_path, "dst", dst_url)
    assert gpuhub(capsys, "--site", src, "backup", "--to", str(tmp_path / "bk"))[0] == 0
    assert json.loads((tmp_path / "bk" / "manifest.json").read_text())["revision"] == "0001"
    code, _, err = gpuhub(capsys, "--site", dst, "restore", "--from", str(tmp_path / "bk"))
    assert code == 0, err
    code, out, _ = gpuhub(capsys, "--site", dst, "billing", "statement", "--period", "2026-11")
    assert [(r["user"], r["gpu_seconds"]) for r in json.loads(out)] == [("alice", 2 * 7200)]
    engine = db.make_engine(dst_url)
    assert db.current_revision(engine) == backup.known_revisions()[-1]
    engine.dispose()
