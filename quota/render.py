"""Plain-text rendering of :meth:`quota.store.QuotaStore.status` for ``gpuhub quota status``."""

from __future__ import annotations


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def status_table(status: dict) -> str:
    """Orgs (GPUs in use/limit, budget used/remaining, servers) then devices (holder)."""
    orgs = [
        [
            key,
            f"{o['gpus_in_use']}/{o['gpu_limit']}",
            f"{o['used_gpu_hours']:.2f}/{o['budget_gpu_hours']:g}",
            f"{o['remaining_gpu_hours']:.2f}",
            ", ".join(s["server_key"] for s in o["running_servers"]) or "-",
        ]
        for key, o in status.get("orgs", {}).items()
    ]
    devices = [
        [d["uuid"], d["model"], (d["holder"] or {}).get("server_key", "free"), (d["holder"] or {}).get("org") or ""]
        for d in status.get("devices", [])
    ]
    parts = [
        f"period {status.get('period')} (at {status.get('at')})",
        _table(["org", "gpus", "gpu-hours used/budget", "remaining", "running servers"], orgs),
        "",
        _table(["device", "model", "holder", "org"], devices),
    ]
    return "\n".join(parts)
