"""Process-wide handles (site config, quota store) shared by spawners and services.

Loaded lazily on first use, never at import, and keyed by the site-config path so tests can
run several sites in one process.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from gpuhub.core.site import Site, load_site
from quota.inventory import site_inventory
from quota.store import QuotaStore

_lock = threading.Lock()


@lru_cache(maxsize=8)
def _site(path: str) -> Site:
    return load_site(path)


def site(path: str | Path) -> Site:
    """The validated site at ``path`` (read once per process)."""
    return _site(str(Path(path).resolve()))


_stores: dict[str, QuotaStore] = {}


def quota_store(path: str | Path) -> QuotaStore:
    """The quota store for the site at ``path``; migrates the database on first use."""
    key = str(Path(path).resolve())
    with _lock:
        store = _stores.get(key)
        if store is None:
            the_site = site(key)
            offers = _swarm_offers(the_site) if the_site.hub.engine == "swarm" else None
            store = _stores[key] = QuotaStore.from_site(the_site, inventory=site_inventory(the_site), offers=offers)
        return store


def _swarm_offers(the_site: Site):
    """hub.engine swarm: the nodes' GPUs, read from the manager the hub's Docker client talks to (DOCKER_HOST)."""
    from gpuhub.host.dockerenv import docker_client
    from quota.swarm_cluster import SwarmOffers

    return SwarmOffers(docker_client(), the_site.gpus.models)


_status_cache: dict[str, tuple[float, dict]] = {}


def quota_status(path: str | Path, max_age: float = 2.0) -> dict:
    """The quota store's ``status()``, shared for ``max_age`` seconds.

    Pages (home banner, spawn form) render it for every request; one read every couple of
    seconds serves them all. The spawner drops it after each allocation and release it makes
    (:func:`forget_status`), so this hub's own changes show at once. Admission never uses it:
    it decides inside its transaction.
    """
    key = str(Path(path).resolve())
    hit = _status_cache.get(key)
    if hit and time.monotonic() - hit[0] < max_age:
        return hit[1]
    status = quota_store(key).status(datetime.now(UTC))
    _status_cache[key] = (time.monotonic(), status)
    return status


def forget_status(path: str | Path) -> None:
    _status_cache.pop(str(Path(path).resolve()), None)
