"""The allocatable GPU units: declared in the site (``inventory: static``) or read from NVML.

With ``inventory: nvml`` every physical GPU whose NVML name contains a declared model key
(``"H100"`` in ``"NVIDIA H100 80GB HBM3"``) is one unit of that model; a GPU in MIG mode is
not allocatable itself, its MIG instances are, each as model ``<model>-MIG-<profile>``
(``H100-MIG-1g.10gb``) with the weight the site declares for that key. Units whose model the
site does not declare cannot be charged, so they are left out and named in the log with the key
to add. The NVML source is the GPU exporter's (:mod:`gpuhub.host.nvml`), injected.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from gpuhub.core.site import Device, Site
from gpuhub.host.nvml import PynvmlSource

log = logging.getLogger("gpuhub.quota")
MIG_PROFILE = re.compile(r"MIG\s+(\S+)\s*$")


def model_of(name: str, models) -> str | None:
    """The longest declared (non-MIG) model key contained in an NVML device name."""
    hits = [m for m in models if "-MIG-" not in m and m.lower() in name.lower()]
    return max(hits, key=len) if hits else None


def devices_from_snapshot(snapshot, site: Site) -> tuple[Device, ...]:
    """Allocatable units from one NVML snapshot (GPUs not in MIG mode, and MIG instances)."""
    models = site.gpus.models
    parents = {d.uuid: d for d in snapshot.devices if not d.is_mig}
    out, skipped = [], []
    for d in snapshot.devices:
        if d.is_mig:
            parent = parents.get(d.parent_uuid)
            base = model_of(parent.name if parent else d.name, models)
            match = MIG_PROFILE.search(d.name)
            key = f"{base}-MIG-{match.group(1)}" if base and match else None
        elif d.mig_enabled:
            continue  # its MIG instances are the units
        else:
            key = model_of(d.name, models)
        if key and key in models:
            out.append(Device(uuid=d.uuid, model=key))
        else:
            skipped.append(f"{d.uuid} ({d.name!r}: declare gpus.models.{key or '<model>'} to allocate it)")
    if skipped:
        log.warning("NVML units not allocatable: %s", "; ".join(skipped))
    return tuple(out)


def nvml_inventory(
    site: Site, source=None, ttl_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic
) -> Callable[[], tuple[Device, ...]]:
    """A cached inventory callable for :class:`quota.store.QuotaStore` (re-read every ``ttl_seconds``).

    When NVML cannot be read the last good inventory is kept; with none yet, the inventory is
    empty, so GPU spawns are refused ("no free device") rather than handed unknown devices.
    """
    if source is None:
        source = PynvmlSource(slow_interval=0)  # this cache has its own TTL: enumerate on every read
    lock = threading.Lock()
    cache: dict = {"at": None, "devices": ()}

    def inventory() -> tuple[Device, ...]:
        with lock:
            if cache["at"] is None or clock() - cache["at"] >= ttl_seconds:
                snap = source.sample()
                if snap.ok:
                    cache["devices"] = devices_from_snapshot(snap, site)
                else:
                    log.error("NVML unavailable for the GPU inventory: %s", [e.detail for e in snap.errors])
                cache["at"] = clock()
            return cache["devices"]

    return inventory


def site_inventory(site: Site) -> Callable[[], tuple[Device, ...]] | None:
    """The inventory a store of ``site`` allocates from: NVML's (``gpus.inventory: nvml``), or
    None for the site's declared ``gpus.devices``."""
    return nvml_inventory(site) if site.gpus.inventory == "nvml" else None
