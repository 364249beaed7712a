"""Alembic environment for gpuhub's quota tables.

Run through :func:`quota.db.upgrade` (no alembic.ini needed). It only ever looks at tables named
``gpuhub_*`` and keeps its own version table, so JupyterHub's tables and its ``alembic_version``
in the same database are never touched.
"""

from alembic import context

from quota.models import metadata

VERSION_TABLE = "gpuhub_alembic_version"
config = context.config


def include_name(name, type_, parent_names):
    if type_ == "table":
        return bool(name) and name.startswith("gpuhub_")
    return True


def _configure(**kw):
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        compare_type=True,
        **kw,
    )


def run_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    conn = config.attributes.get("connection")
    if conn is None:  # plain `alembic -x` use: build our engine from the URL
        from quota.db import make_engine

        engine = make_engine(config.get_main_option("sqlalchemy.url"))
        with engine.begin() as conn:
            _configure(connection=conn, render_as_batch=conn.dialect.name == "sqlite")
            with context.begin_transaction():
                context.run_migrations()
        engine.dispose()
        return
    _configure(connection=conn, render_as_batch=conn.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
