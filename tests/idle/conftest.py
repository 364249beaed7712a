"""The exporter tests' fixtures (a real promtool, a migrated SQLite ledger) for the idle metrics tests."""

from tests.exporters.conftest import ledger_engine, promtool  # noqa: F401
