"""The project records (quota.project_store) on SQLite and PostgreSQL: DUA acceptances, membership, extensions,
each with its audit-log row in the same transaction."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, inspect, select

from quota.audit import AuditLog
from quota.models import metadata, project_dua_acceptance, project_extension, project_membership
from quota.project_store import Acceptance, MembershipEvent, ProjectStore
from quota.projects import Membership

SHA_A, SHA_B = "a" * 64, "b" * 64
T0 = datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC)


@pytest.fixture
def store(engine, clock):
    return ProjectStore(engine, clock)


def audit_rows(store):
    return [(r.action, r.project, r.account, r.source, r.target, r.detail) for r in store.audit.rows()]


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_the_migration_creates_the_tables_the_models_describe(engine):
    insp = inspect(engine)
    for table in (project_dua_acceptance, project_membership, project_extension):
        assert {c["name"] for c in insp.get_columns(table.name)} == {c.name for c in table.columns}
        assert table.name in metadata.tables


def test_a_dua_acceptance_is_recorded_with_time_hash_and_source_and_audited(store, clock):
    assert store.accepted_sha256("cohort", "alice") is None
    row = store.accept_dua("cohort", "alice", SHA_A, "10.0.0.5")
    assert (row.id, row.action, row.at) == (1, "dua.accepted", T0)
    clock.advance(days=1)
    store.accept_dua("cohort", "alice", SHA_B, "2001:db8::7")  # the text changed: a new acceptance
    store.accept_dua("other", "alice", SHA_A, None)
    assert store.accepted_sha256("cohort", "alice") == SHA_B
    assert store.accepted_sha256("cohort", "bob") is None
    assert store.acceptances("cohort") == [
        Acceptance("alice", SHA_A, T0, "10.0.0.5"),
        Acceptance("alice", SHA_B, datetime(2026, 12, 2, 9, 30, 0, 123456, tzinfo=UTC), "2001:db8::7"),
    ]
    assert audit_rows(store)[:2] == [
        ("dua.accepted", "cohort", "alice", "10.0.0.5", "dua", {"sha256": SHA_A}),
        ("dua.accepted", "cohort", "alice", "2001:db8::7", "dua", {"sha256": SHA_B}),
    ]
    assert store.audit.verify().ok


def test_a_malformed_hash_records_nothing(store, engine):
    with pytest.raises(ValueError, match="is not a sha256 hex digest"):
        store.accept_dua("cohort", "alice", "A" * 64, "10.0.0.5")
    assert count(engine, project_dua_acceptance) == 0 and list(store.audit.rows()) == []


def test_membership_changes_latest_event_per_user_wins(store, clock):
    assert store.membership("cohort") == Membership()
    store.add_member("cohort", "carol", "steve")
    clock.advance(minutes=1)
    store.remove_member("cohort", "bob", "steve")
    store.remove_member("cohort", "carol", "root")
    store.add_member("cohort", "bob", "steve")  # undoes the remove
    store.add_member("other", "zoe", "sam")
    assert store.membership("cohort") == Membership(added=frozenset({"bob"}), removed=frozenset({"carol"}))
    assert store.memberships() == {
        "cohort": Membership(added=frozenset({"bob"}), removed=frozenset({"carol"})),
        "other": Membership(added=frozenset({"zoe"})),
    }
    assert store.memberships(["other", "none"]) == {"other": Membership(added=frozenset({"zoe"}))}
    assert store.membership_events("cohort")[0] == MembershipEvent("carol", "added", "steve", T0)
    assert [(a, acc, tgt) for a, _p, acc, _s, tgt, _d in audit_rows(store)] == [
        ("membership.added", "steve", "carol"),
        ("membership.removed", "steve", "bob"),
        ("membership.removed", "root", "carol"),
        ("membership.added", "steve", "bob"),
        ("membership.added", "sam", "zoe"),
    ]


def test_extensions_the_latest_counts_and_each_is_audited(store):
    store.extend("cohort", date(2027, 3, 31), "steve")
    row = store.extend("cohort", date(2027, 2, 28), "root")
    assert store.membership("cohort").expires_override == date(2027, 2, 28)
    assert (row.action, row.account, row.target, row.detail) == (
        "project.extended",
        "root",
        "expires=2027-02-28",
        {"expires": "2027-02-28"},
    )
    with pytest.raises(ValueError, match="new_expires must be a date"):
        store.extend("cohort", datetime(2027, 1, 1, tzinfo=UTC), "steve")
    with pytest.raises(ValueError, match="by must be a non-empty name"):
        store.extend("cohort", date(2027, 4, 1), "")
    assert count(store.engine, project_extension) == 2


def test_a_failed_audit_write_records_nothing(store, engine, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr(AuditLog, "_append", staticmethod(broken))
    with pytest.raises(RuntimeError, match="audit table unavailable"):
        store.add_member("cohort", "carol", "steve")
    with pytest.raises(RuntimeError):
        store.accept_dua("cohort", "alice", SHA_A, "10.0.0.5")
    assert count(engine, project_membership) == 0 and count(engine, project_dua_acceptance) == 0


def test_concurrent_writers_keep_one_verified_chain(db_url, clock):
    from quota import db

    db.upgrade(db_url)
    errors = []

    def work(i: int):
        s = ProjectStore(db.make_engine(db_url), clock)
        try:
            for j in range(5):
                s.add_member("cohort", f"user{i}-{j}", "steve")
                s.accept_dua("cohort", f"user{i}-{j}", SHA_A, f"10.0.0.{i}")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            s.engine.dispose()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    s = ProjectStore.from_url(db_url, clock)
    try:
        v = s.audit.verify()
        assert (v.ok, v.rows) == (True, 40)
        assert len(s.membership("cohort").added) == 20 and len(s.acceptances("cohort")) == 20
    finally:
        s.engine.dispose()


def test_from_url_migrates_a_new_sqlite_database(tmp_path, clock):
    s = ProjectStore.from_url(f"sqlite:///{tmp_path / 'new.sqlite'}", clock)
    try:
        s.add_member("cohort", "carol", "steve")
        assert s.membership("cohort").added == {"carol"}
    finally:
        s.engine.dispose()
