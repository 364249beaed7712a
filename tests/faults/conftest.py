"""Fixtures for the fault suite: hubs made per test (each fault breaks its hub), logs dumped on failure."""

from __future__ import annotations

import pytest
import yaml

from tests.harness import HubProcess, default_site
from tests.procs import module_failed


def _new_hub(hubs: list, where, site_fn, db_url, state) -> HubProcess:
    """A hub in ``where`` (not started) with ``site_fn``'s site written, on ``db_url`` and ``state`` when given."""
    hub = HubProcess(where, db_url=db_url)
    if state is not None:
        hub.state = state
    hub.site = site_fn(hub.instance, hub.port, hub.state)
    if db_url:
        hub.site["hub"]["db_url"] = db_url
    hub.site_path.write_text(yaml.safe_dump(hub.site))
    hubs.append(hub)
    return hub


@pytest.fixture
def make_hub(tmp_path, docker_client, request):
    """``make_hub(site_fn=..., db_url=..., start=True)`` -> a HubProcess; all are cleaned up after the test."""
    hubs = []

    def make(site_fn=default_site, db_url=None, start=True, state=None):
        where = tmp_path / f"h{len(hubs)}"
        where.mkdir(exist_ok=True)
        hub = _new_hub(hubs, where, site_fn, db_url, state)
        return hub.start() if start else hub

    yield make
    for hub in hubs:
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            print(hub.dump_logs())
        hub.cleanup()


@pytest.fixture(scope="module")
def module_hubs(request, tmp_path_factory, docker_client):
    """Like ``make_hub`` for a module-scoped scenario whose observations several tests check."""
    hubs = []

    def make(site_fn=default_site, db_url=None, state=None):
        return _new_hub(hubs, tmp_path_factory.mktemp("fault-hub"), site_fn, db_url, state)

    yield make
    for hub in hubs:
        if module_failed(request):
            print(hub.dump_logs())
        hub.cleanup()
