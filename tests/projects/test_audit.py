"""The project audit log on SQLite and PostgreSQL: chain, tamper detection, concurrency, retention, export, CLI."""

from __future__ import annotations

import argparse
import csv
import io
import threading
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from sqlalchemy import text

from gpuhub import audit_cli, cli
from quota import db
from quota.audit import GENESIS, PRUNE_ACTION, AuditBroken, AuditLog, row_hash, write_csv
from tests.harness import ROOT


def fill(log: AuditLog, clock, n: int = 6, project: str = "cancer") -> None:
    for i in range(n):
        log.append(
            "dataset.read",
            project=project,
            account=f"user{i % 2}",
            source="172.30.0.7",
            target=f"/data/registry/part-{i}.csv",
            detail={"bytes": 1000 + i, "note": "환자 코호트"},
        )
        clock.advance(minutes=1)


@pytest.fixture
def log(engine, clock):
    return AuditLog(engine, clock)


def tamper(engine, sql: str, params: dict | None = None) -> None:
    """Change the audit table behind the appender's back, as someone with write access to the database would."""
    with engine.begin() as conn:
        conn.execute(text(sql), params or {})


def test_append_chains_rows_and_verify_passes(log, clock):
    first = log.append(
        "dua.accepted", project="cancer", account="alice", source="10.0.0.5", target="dua", detail={"sha256": "ab" * 32}
    )
    assert (first.id, first.prev_hash) == (1, GENESIS)
    fill(log, clock, 5)
    rows = list(log.rows())
    assert [r.id for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r.id for r in log.rows(batch=4)] == [1, 2, 3, 4, 5, 6]  # streamed in batches, same rows
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:], strict=False))
    assert rows[0].at == datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC)  # microseconds survive the round trip
    assert rows[1].detail == {"bytes": 1000, "note": "환자 코호트"}
    v = log.verify()
    assert (v.ok, v.rows, v.head_id, v.head_hash, v.finding) == (True, 6, 6, rows[-1].hash, None)


def test_empty_log_verifies(log):
    v = log.verify()
    assert (v.ok, v.rows, v.head_id) == (True, 0, None)


def test_an_sql_update_is_named(log, clock, engine):
    fill(log, clock)
    tamper(engine, "UPDATE gpuhub_audit_log SET target = '/data/registry/other.csv' WHERE id = 3")
    v = log.verify()
    assert not v.ok and (v.finding.row_id, v.finding.kind) == (3, "hash-mismatch")
    assert v.finding.message == "row 3: its content does not match its hash (edited, or inserted outside gpuhub)"


def test_an_update_that_recomputes_its_own_hash_breaks_the_next_link(log, clock, engine):
    fill(log, clock)
    r3 = [r for r in log.rows() if r.id == 3][0]
    forged = row_hash(r3.prev_hash, 3, r3.at, r3.project, "mallory", r3.source, r3.action, r3.target, r3.detail)
    tamper(engine, "UPDATE gpuhub_audit_log SET account = 'mallory', hash = :h WHERE id = 3", {"h": forged})
    v = log.verify()
    assert (v.finding.row_id, v.finding.kind) == (4, "broken-link")
    assert "row 3 was replaced, or row 4 inserted" in v.finding.message


def test_an_sql_insert_is_named(log, clock, engine):
    fill(log, clock)
    head = log.verify().head_hash
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO gpuhub_audit_log (id, at, project, account, source, action, target, detail, "
                "prev_hash, hash) VALUES (7, :at, 'cancer', 'alice', '10.0.0.9', 'export.approved', "
                "'/data/registry', '{}', :prev, :h)"
            ),
            {"at": db_time(engine, clock()), "prev": head, "h": "f" * 64},
        )
    v = log.verify()
    assert not v.ok and (v.finding.row_id, v.finding.kind) == (7, "hash-mismatch")


def test_an_sql_delete_is_named(log, clock, engine):
    fill(log, clock)
    tamper(engine, "DELETE FROM gpuhub_audit_log WHERE id IN (3, 4)")
    v = log.verify()
    assert (v.finding.row_id, v.finding.kind) == (3, "gap")
    assert v.finding.message == "rows 3..4 deleted: a gap in ids between rows 2 and 5"


def test_deleting_the_first_rows_is_named(log, clock, engine):
    fill(log, clock)
    tamper(engine, "DELETE FROM gpuhub_audit_log WHERE id <= 2")
    v = log.verify()
    assert (v.finding.row_id, v.finding.kind) == (3, "front-deleted")
    assert "rows up to 2 were deleted" in v.finding.message


def test_deleting_the_newest_row_needs_the_anchor(log, clock, engine):
    """A shorter chain is self-consistent; the head recorded outside the database catches it."""
    fill(log, clock)
    anchor = (log.verify().head_id, log.verify().head_hash)
    assert log.verify(anchor).ok
    tamper(engine, "DELETE FROM gpuhub_audit_log WHERE id = 6")
    assert log.verify().ok
    v = log.verify(anchor)
    assert (v.ok, v.finding.row_id, v.finding.kind) == (False, 6, "anchor")
    assert "the log ends at row 5" in v.finding.message


def test_concurrent_appenders_keep_one_chain(db_url, clock):
    """Threads on separate engines (as hub, proxy hook and CLI would be) append without a gap or a fork."""
    db.upgrade(db_url)
    engines = [db.make_engine(db_url) for _ in range(4)]
    errors: list[Exception] = []

    def work(eng, k):
        log = AuditLog(eng, clock)
        try:
            for i in range(25):
                log.append("server.start", project="cancer", account=f"w{k}", detail={"i": i})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(e, k)) for k, e in enumerate(engines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        log = AuditLog(engines[0], clock)
        v = log.verify()
        assert (v.ok, v.rows, v.head_id) == (True, 100, 100)
        per_writer = {}
        for r in log.rows():
            per_writer.setdefault(r.account, []).append(r.detail["i"])
        assert per_writer == {f"w{k}": list(range(25)) for k in range(4)}
    finally:
        for e in engines:
            e.dispose()


def test_prune_keeps_every_young_row_and_the_chain(log, clock, engine):
    start = clock()
    log.append("old.1", project="p")  # 800 days before the prune
    clock.advance(days=40)
    log.append("old.2", project="p")  # 760 days before
    clock.advance(days=30)
    log.append("edge", project="p")  # exactly 730 days before: young (kept)
    clock.advance(days=10)
    log.append("young", project="p")
    clock.now = start + timedelta(days=800)
    res = log.prune(730)
    assert (res.deleted, res.through_id, res.checkpoint_id) == (2, 2, 5)
    rows = list(log.rows())
    assert [r.action for r in rows] == ["edge", "young", PRUNE_ACTION]
    assert rows[-1].detail["through_id"] == 2 and rows[-1].detail["rows"] == 2
    assert log.verify().ok
    assert log.prune(730).deleted == 0  # nothing else is old enough
    clock.advance(days=10_000)  # everything old now, the checkpoint too
    res = log.prune(730)
    assert res.deleted == 3 and [r.action for r in log.rows()] == [PRUNE_ACTION]
    assert log.verify().ok
    log.append("after", project="p")
    assert log.verify().ok


def test_prune_stops_at_a_young_row_even_if_older_ones_follow(log, clock, engine):
    """Clock steps back: an old row after a young one stays until the young one is old too."""
    base = clock()
    log.append("a", at=base - timedelta(days=900))
    log.append("b", at=base - timedelta(days=10))  # young
    log.append("c", at=base - timedelta(days=900))  # old, but after a young row
    res = log.prune(730)
    assert res.deleted == 1
    assert [r.action for r in log.rows()] == ["b", "c", PRUNE_ACTION]
    assert log.verify().ok


def test_prune_refuses_to_destroy_evidence(log, clock, engine):
    fill(log, clock)
    tamper(engine, "UPDATE gpuhub_audit_log SET account = 'nobody' WHERE id = 2")
    clock.advance(days=5000)
    with pytest.raises(AuditBroken, match=r"^audit log broken at row 2 \(hash-mismatch\): .* nothing was pruned"):
        log.prune(730)
    assert len(list(log.rows())) == 6


def test_prune_refuses_nonsense_retention(log):
    with pytest.raises(ValueError, match=r"audit.retention_days: 0 must be a whole number of days >= 1"):
        log.prune(0)


def test_export_gives_the_pipc_fields_for_one_project_and_range(log, clock):
    fill(log, clock, 4, project="cancer")
    log.append("server.start", project="mobility", account="bob", source="10.0.0.6", target="mob-server")
    start, end = datetime(2026, 12, 1, 9, 31, tzinfo=UTC), datetime(2026, 12, 1, 9, 33, tzinfo=UTC)
    buf = io.StringIO()
    assert write_csv(log.export("cancer", start, end), buf) == 2
    assert list(csv.reader(io.StringIO(buf.getvalue()))) == [
        ["account", "time", "source_address", "data_touched", "action"],
        ["user1", "2026-12-01T09:31:00.123456Z", "172.30.0.7", "/data/registry/part-1.csv", "dataset.read"],
        ["user0", "2026-12-01T09:32:00.123456Z", "172.30.0.7", "/data/registry/part-2.csv", "dataset.read"],
    ]


# ---------------------------------------------------------------------- the CLI


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    p = argparse.ArgumentParser(prog="gpuhub")
    p.add_argument("--site")
    audit_cli.add_parsers(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def export_day(day: str, db_url: str, capsys, *more: str) -> tuple[int, str, str]:
    """``gpuhub audit export`` of project ``cancer`` for one day in Seoul time."""
    argv = ["audit", "export", "--project", "cancer", "--from", day, "--to", day, *more]
    return run_cli([*argv, "--db-url", db_url, "--timezone", "Asia/Seoul"], capsys)


def test_cli_verify_and_export(log, clock, engine, db_url, capsys, tmp_path):
    fill(log, clock, 3)
    rc, out, _ = run_cli(["audit", "verify", "--db-url", db_url], capsys)
    head = log.verify()
    assert rc == 0 and out.splitlines()[0] == f"audit log ok: 3 rows, head 3:{head.head_hash}"
    rc, _, _ = run_cli(["audit", "verify", "--db-url", db_url, "--anchor", f"3:{head.head_hash}"], capsys)
    assert rc == 0
    rc, out, _ = export_day("2026-12-01", db_url, capsys, "--format", "csv")
    assert rc == 0 and out.splitlines()[0] == "account,time,source_address,data_touched,action"
    assert len(out.splitlines()) == 4  # 09:30 UTC is 18:30 in Seoul, still 1 December
    rc, out, _ = export_day("2026-12-02", db_url, capsys)
    assert rc == 0 and len(out.splitlines()) == 1  # header only
    tamper(engine, "UPDATE gpuhub_audit_log SET action = 'nothing' WHERE id = 2")
    rc, _, err = run_cli(["audit", "verify", "--db-url", db_url], capsys)
    assert rc == 1 and err.startswith("gpuhub: audit log BROKEN at row 2 (hash-mismatch): row 2: its content")


def test_cli_errors_name_the_fix(db_url, engine, capsys, tmp_path):
    rc, _, err = run_cli(
        ["audit", "export", "--project", "p", "--from", "2026-13-01", "--to", "2026-12-31", "--db-url", db_url], capsys
    )
    assert (rc, err) == (2, "gpuhub: error: --from '2026-13-01': not a date; write it as YYYY-MM-DD, e.g. 2026-12-01\n")
    rc, _, err = run_cli(
        ["audit", "export", "--project", "p", "--from", "2026-12-02", "--to", "2026-12-01", "--db-url", db_url], capsys
    )
    assert (rc, err) == (
        2,
        "gpuhub: error: --to 2026-12-01 is before --from 2026-12-02; the range includes both days\n",
    )
    rc, _, err = run_cli(["audit", "verify", "--db-url", db_url, "--anchor", "x"], capsys)
    assert rc == 2 and err.startswith("gpuhub: error: --anchor 'x': write it as ID:HASH")
    rc, _, err = run_cli(["audit", "verify", "--db-url", db_url, "--timezone", "Mars/Olympus"], capsys)
    assert (rc, err) == (
        2,
        "gpuhub: error: --timezone 'Mars/Olympus' is not an IANA time zone; e.g. Asia/Seoul or UTC\n",
    )
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    rc, _, err = run_cli(["audit", "verify", "--db-url", empty], capsys)
    assert rc == 2 and err.startswith("gpuhub: error: database sqlite:///") and "has no audit log" in err


def db_time(engine, at: datetime):
    """``at`` as raw SQL wants it on this backend (SQLite: our fixed-width text)."""
    from quota.models import to_db_text

    return to_db_text(at) if engine.dialect.name == "sqlite" else at


def test_cli_reads_the_hub_database_from_the_site_config(tmp_path, capsys):
    """Without --db-url the commands use the site's hub database (sqlite in state_dir here)."""
    site = yaml.safe_load((ROOT / "examples" / "site.yaml").read_text())
    site["hub"]["state_dir"] = str(tmp_path / "state")
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    (tmp_path / "state").mkdir()
    url = f"sqlite:///{tmp_path / 'state' / 'jupyterhub.sqlite'}"
    log = AuditLog.from_url(url)
    log.append("membership.added", project="cancer", account="steward1", target="alice")
    log.engine.dispose()
    rc, out, _ = run_cli(["--site", str(tmp_path / "site.yaml"), "audit", "verify"], capsys)
    assert rc == 0 and out.startswith("audit log ok: 1 rows, head 1:")
    assert cli.main(["audit", "verify", "--site", str(tmp_path / "site.yaml")]) == 0  # as `gpuhub` wires it
    rc, _, err = run_cli(["--site", str(tmp_path / "nope.yaml"), "audit", "verify"], capsys)
    assert rc == 2 and err.startswith("gpuhub: error: cannot read site config")
