"""Migrations: from empty, twice, beside JupyterHub's own tables and alembic_version."""

import threading

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from quota import db
from quota.models import metadata

OURS = {t.name for t in metadata.sorted_tables}
HEAD = ScriptDirectory.from_config(db.alembic_config()).get_current_head()  # raises if the migrations fork


def test_upgrade_from_empty_twice_and_leave_jupyterhub_alone(db_url):
    eng = db.make_engine(db_url)
    with eng.begin() as conn:  # what JupyterHub has in the same database
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('4621fec11365')"))
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(255))"))
    db.upgrade(db_url)
    db.upgrade(db_url)  # idempotent
    tables = set(inspect(eng).get_table_names())
    assert OURS | {"gpuhub_alembic_version", "alembic_version", "users"} == tables
    assert db.current_revision(eng) == HEAD
    with eng.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "4621fec11365"
        assert conn.execute(text("SELECT count(*) FROM gpuhub_alloc_lock")).scalar() == 1
    eng.dispose()


def test_concurrent_upgrades_from_empty(db_url):
    """Hub, quota service and CLI may all migrate at start; they must not trip over each other."""
    errors = []

    def up():
        try:
            db.upgrade(db_url)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=up) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    eng = db.make_engine(db_url)
    assert db.current_revision(eng) == HEAD
    eng.dispose()


def test_store_from_site_creates_and_migrates_the_default_sqlite(tmp_path):
    from quotakit import make_site

    from quota.store import QuotaStore

    store = QuotaStore.from_site(make_site(hub={"state_dir": str(tmp_path / "state")}))
    assert (tmp_path / "state" / "jupyterhub.sqlite").exists() and store.holdings() == []
    store.engine.dispose()


def test_sqlite_engines_use_wal_and_a_busy_timeout(tmp_path):
    eng = db.make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    eng.dispose()


def test_models_match_the_migration(db_url):
    """Autogenerate finds nothing to do: the tables the code uses are the tables the migration makes."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    db.upgrade(db_url)
    eng = db.make_engine(db_url)
    with eng.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_name": lambda n, t, p: (
                    t != "table" or n.startswith("gpuhub_") and n != "gpuhub_alembic_version"
                ),
                "compare_type": False,
            },
        )
        assert compare_metadata(ctx, metadata) == []
    eng.dispose()
