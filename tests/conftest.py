"""Shared fixtures: a real hub subprocess, cleanup by label, logs dumped on failure."""

from __future__ import annotations

import os
import subprocess
import uuid

import docker
import pytest
from sqlalchemy import text

from quota import db
from tests.harness import BASE_IMAGE, ROOT, HubProcess
from tests.procs import FAILED_MODULES, cleaned_up


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
    if rep.failed:
        FAILED_MODULES.add(item.module.__name__)


@pytest.fixture(scope="session")
def docker_client():
    """The real engine; a test that needs it fails loudly when it is not running."""
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"Docker engine not reachable ({e}); run `make test`, which starts it", pytrace=False)
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE_IMAGE} is not built; run `make images`", pytrace=False)
    return client


def _hub(request, tmp_path_factory, **kw):
    tmp = tmp_path_factory.mktemp("hub")
    hub = HubProcess(tmp, **kw)
    with cleaned_up(request, hub):
        hub.start()
        yield hub


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client):
    """A hub on SQLite shared by one test module."""
    yield from _hub(request, tmp_path_factory)


@pytest.fixture(scope="session")
def postgres_url():
    """A private PostgreSQL cluster started by scripts/postgres.sh (fails loudly if it cannot start)."""
    url = os.environ.get("GPUHUB_TEST_PG_URL")
    if not url:
        try:
            out = subprocess.run(
                ["bash", str(ROOT / "scripts/postgres.sh")], check=True, capture_output=True, text=True
            )
        except subprocess.CalledProcessError as e:
            pytest.fail(f"PostgreSQL could not start:\n{e.stderr}", pytrace=False)
        url = out.stdout.strip().splitlines()[-1]
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh quota database for each test, once on SQLite (a temp file) and once on PostgreSQL (a new schema
    in the ``postgres_url`` cluster, dropped afterwards); if PostgreSQL is not there, those tests FAIL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.sqlite'}"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_db_url(request):
    """A real hub's ``hub.db_url``, once on SQLite (None: its own file in the state folder) and once on a new
    PostgreSQL database in the ``postgres_url`` cluster (a hub needs a database of its own: JupyterHub's tables
    live beside gpuhub's), dropped after the hub."""
    if request.param == "sqlite":
        yield None
        return
    base = request.getfixturevalue("postgres_url")
    name = f"hub_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def engine(db_url):
    """``db_url`` migrated to the latest schema, as an Engine."""
    db.upgrade(db_url)
    eng = db.make_engine(db_url)
    yield eng
    eng.dispose()
