"""PostgreSQL for the benches: the test cluster scripts/postgres.sh starts, one fresh schema per bench."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sqlalchemy import text

from quota import db

ROOT = Path(__file__).resolve().parent.parent


def pg_schema_url(schema: str) -> str:
    """URL of an empty schema ``schema`` (dropped and recreated) in the local test cluster."""
    base = (
        subprocess.run([str(ROOT / "scripts" / "postgres.sh")], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    eng = db.make_engine(base)
    with eng.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    eng.dispose()
    return f"{base}?options=-csearch_path%3D{schema}"
