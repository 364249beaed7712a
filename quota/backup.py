"""Backups of the quota tables (the ledger and every ``gpuhub_*`` table) and their restore.

``backup(url, folder)`` writes one dump and ``manifest.json`` into an empty folder:

- PostgreSQL: ``pg_dump --format=custom`` of the ``gpuhub_*`` tables and their sequences
  (a consistent snapshot; JupyterHub's own tables are not part of it).
- SQLite: the online backup API (``sqlite3.Connection.backup``: consistent while the hub writes), with
  everything that is not ``gpuhub_*`` dropped from the copy (JupyterHub's tables hold its secrets).

The manifest names the backend, the schema revision (``gpuhub_alembic_version``), each table's row count
and the dump's sha256. ``restore(url, folder)`` checks the sha256, refuses a revision this code does not
know (a dump made by a newer gpuhub) and a database whose quota tables already hold rows unless
``force``, loads the dump, checks the row counts against the manifest and migrates to this code's head.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine, make_url

from quota import db

PREFIX = "gpuhub_"
MANIFEST = "manifest.json"
FORMAT = 1
DUMP_FILES = {"postgresql": "gpuhub.pgdump", "sqlite": "gpuhub.sqlite"}
PG_BIN_ENV = "GPUHUB_PG_BIN"


class BackupError(Exception):
    """A backup or restore the operator can fix; the message names the rule and the fix."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def known_revisions() -> list[str]:
    """Every schema revision this code's migrations know, oldest first."""
    script = ScriptDirectory.from_config(db.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows per ``gpuhub_*`` table (the version table included) in the engine's schema."""
    names = sorted(n for n in inspect(engine).get_table_names() if n.startswith(PREFIX))
    with engine.connect() as conn:
        return {n: conn.execute(text(f'SELECT count(*) FROM "{n}"')).scalar_one() for n in names}


#: tables whose rows the migrations write themselves (a freshly migrated database has rows only here)
SEEDED = {db.VERSION_TABLE, "gpuhub_alloc_lock"}


def data_rows(counts: dict[str, int]) -> int:
    """Rows written by use (not by the migrations): 0 for a new database, also one the hub has migrated."""
    return sum(v for k, v in counts.items() if k not in SEEDED)


def _pg_tool(name: str) -> str:
    """pg_dump/pg_restore: $GPUHUB_PG_BIN, else PATH, else the newest /usr/lib/postgresql/N/bin."""
    candidates = [Path(os.environ[PG_BIN_ENV]) / name] if os.environ.get(PG_BIN_ENV) else []
    if found := shutil.which(name):
        candidates.append(Path(found))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    candidates += [d / name for d in versions if d.parent.name.isdigit()]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise BackupError(
        f"{name} not found: PostgreSQL backups need the PostgreSQL client tools at least as new as the server "
        f"(Debian: postgresql-client); install them or set {PG_BIN_ENV} to their bin folder"
    )


def _libpq(url: str) -> tuple[str, dict]:
    """The libpq URL (no password on the command line) and the environment that carries the password."""
    u = make_url(url)
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = u.password
    return u.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def _run(argv: list[str], env: dict, what: str) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout).split())[:600]
        raise BackupError(f"{what} failed (exit {proc.returncode}): {detail}")


def _schema(engine: Engine) -> str | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return conn.execute(text("SELECT current_schema()")).scalar_one()


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"{url}: an in-memory SQLite database cannot be backed up; set hub.db_url to a file")
    return Path(database)


def backup(url: str, folder: Path) -> dict:
    """Dump the quota tables of the database at ``url`` into the empty (or new) ``folder``; return the manifest."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"--to {folder}: the folder is not empty; name a new or empty folder for each backup")
    engine = db.make_engine(url)
    try:
        revision = db.current_revision(engine)
        if revision is None:
            raise BackupError(f"{_safe(url)} has no gpuhub tables (no schema revision); check hub.db_url")
        backend, schema = engine.dialect.name, _schema(engine)
        folder.mkdir(parents=True, exist_ok=True)
        dump = folder / DUMP_FILES[backend]
        if backend == "postgresql":
            counts = _pg_backup(url, engine, schema, dump)
        else:
            counts = _sqlite_backup(_sqlite_path(url), dump)
    finally:
        engine.dispose()
    manifest = {
        "format": FORMAT,
        "backend": backend,
        "schema": schema,
        "revision": revision,
        "tables": counts,
        "file": dump.name,
        "sha256": _sha256(dump),
        "bytes": dump.stat().st_size,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _pg_backup(url: str, engine: Engine, schema: str, dump: Path) -> dict[str, int]:
    """pg_dump in the snapshot the row counts were taken in (an exported snapshot), so they agree."""
    libpq, env = _libpq(url)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            names = sorted(n for n in inspect(conn).get_table_names() if n.startswith(PREFIX))
            counts = {n: conn.execute(text(f'SELECT count(*) FROM "{n}"')).scalar_one() for n in names}
            _run(
                [
                    _pg_tool("pg_dump"),
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    f"--snapshot={snapshot}",
                    f'--table="{schema}".{PREFIX}*',
                    f"--file={dump}",
                    libpq,
                ],
                env,
                "pg_dump",
            )
    return counts


def _sqlite_backup(src_path: Path, dump: Path) -> dict[str, int]:
    src = sqlite3.connect(src_path, timeout=db.SQLITE_BUSY_TIMEOUT_S)
    dst = sqlite3.connect(dump)
    try:
        src.backup(dst)  # the online backup API: a consistent copy while the hub keeps writing
        names = [r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in names:
            if not name.startswith(PREFIX) and not name.startswith("sqlite_"):
                dst.execute(f'DROP TABLE "{name}"')
        dst.commit()
        dst.execute("VACUUM")
        return {
            n: dst.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in sorted(names) if n.startswith(PREFIX)
        }
    finally:
        src.close()
        dst.close()


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def read_manifest(folder: Path) -> dict:
    """The manifest of the backup in ``folder``, with its dump's sha256 checked."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise BackupError(
            f"--from {folder}: no readable {MANIFEST} ({e}); name a folder that `gpuhub backup` wrote"
        ) from None
    if manifest.get("format") != FORMAT or manifest.get("backend") not in DUMP_FILES:
        raise BackupError(f"--from {folder}: {MANIFEST} is not a gpuhub backup of format {FORMAT}")
    dump = folder / manifest["file"]
    if not dump.is_file() or _sha256(dump) != manifest["sha256"]:
        raise BackupError(
            f"--from {folder}: {manifest['file']} is missing or its sha256 differs from the manifest's (a damaged "
            "or partial copy); copy the backup folder again"
        )
    return manifest


def restore(url: str, folder: Path, force: bool = False) -> dict:
    """Load the backup in ``folder`` into the database at ``url``; return the row counts restored."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    revision, known = manifest["revision"], known_revisions()
    if revision not in known:
        raise BackupError(
            f"--from {folder}: its schema revision {revision} is newer than this gpuhub knows "
            f"(up to {known[-1]}); restore with the gpuhub version that made it, or upgrade gpuhub first"
        )
    engine = db.make_engine(url)
    try:
        if engine.dialect.name != manifest["backend"]:
            raise BackupError(
                f"--from {folder}: a {manifest['backend']} backup cannot be restored into {engine.dialect.name} "
                f"({_safe(url)}); restore into a {manifest['backend']} database"
            )
        present = row_counts(engine)
        if data_rows(present) and not force:
            busy = ", ".join(f"{k} {v}" for k, v in present.items() if v and k not in SEEDED)
            raise BackupError(
                f"{_safe(url)} already holds quota rows ({busy}); a restore replaces them: restore into a new, "
                "empty database, or pass --force to replace them (stop the hub first)"
            )
        if manifest["backend"] == "postgresql":
            _pg_restore(url, engine, folder / manifest["file"], manifest, clean=bool(present))
        else:
            _sqlite_restore(url, folder / manifest["file"])
        restored = row_counts(engine)
    finally:
        engine.dispose()
    if restored != manifest["tables"]:
        raise BackupError(f"restore incomplete: rows {restored} differ from the manifest's {manifest['tables']}")
    db.upgrade(url)  # a backup made by an older gpuhub: migrate it to this code's schema
    return restored


def _pg_restore(url: str, engine: Engine, dump: Path, manifest: dict, clean: bool) -> None:
    """One transaction (psql --single-transaction): drop the quota tables there are, load the dump's."""
    schema = _schema(engine)
    if schema != manifest["schema"]:
        raise BackupError(
            f"the backup's tables are in schema {manifest['schema']!r}, but {_safe(url)} creates tables in "
            f"{schema!r}; restore into a database whose search_path starts with {manifest['schema']!r}"
        )
    libpq, env = _libpq(url)
    names = sorted(n for n in inspect(engine).get_table_names() if n.startswith(PREFIX)) if clean else []
    with tempfile.TemporaryDirectory(prefix="gpuhub-restore-") as tmp:
        script = Path(tmp) / "restore.sql"
        script.write_text("".join(f'DROP TABLE IF EXISTS "{schema}"."{n}" CASCADE;\n' for n in names))
        body = Path(tmp) / "dump.sql"
        _run([_pg_tool("pg_restore"), "--no-owner", "--no-privileges", f"--file={body}", str(dump)], env, "pg_restore")
        with open(script, "a") as out:
            out.write(body.read_text())
        _run(
            [
                _pg_tool("psql"),
                "--no-psqlrc",
                "--quiet",
                "--single-transaction",
                "-v",
                "ON_ERROR_STOP=1",
                f"--file={script}",
                f"--dbname={libpq}",
            ],
            env,
            "psql (loading the dump)",
        )


def _sqlite_restore(url: str, dump: Path) -> None:
    """One transaction: drop the quota tables there are, create the dump's (its own DDL), copy its rows."""
    conn = sqlite3.connect(_sqlite_path(url), timeout=db.SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS bk", (str(dump),))
        objects = conn.execute(
            "SELECT type, name, sql FROM bk.sqlite_master WHERE tbl_name LIKE 'gpuhub\\_%' ESCAPE '\\' "
            "AND sql IS NOT NULL ORDER BY type = 'table' DESC"
        ).fetchall()
        present = [
            r[0]
            for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")
            if r[0].startswith(PREFIX)
        ]
        conn.execute("BEGIN IMMEDIATE")
        for name in present:
            conn.execute(f'DROP TABLE main."{name}"')
        for kind, name, sql in objects:
            conn.execute(sql)
            if kind == "table":
                conn.execute(f'INSERT INTO main."{name}" SELECT * FROM bk."{name}"')
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE bk")
    finally:
        conn.close()
