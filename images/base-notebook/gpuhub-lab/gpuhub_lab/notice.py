"""The notice the hub sets (no Jupyter imports: the hub's tests read it)."""

from __future__ import annotations

import math

MAX_GPUS = 64


def validate(body: object) -> dict:
    """The notice to keep, or ValueError naming the field and the rule."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object with gpus, idle_since and cull_at")
    gpus = body.get("gpus")
    if not (isinstance(gpus, list) and 0 < len(gpus) <= MAX_GPUS and all(isinstance(g, str) and g for g in gpus)):
        raise ValueError(f"gpus must be a list of 1..{MAX_GPUS} GPU ids (strings)")
    out = {"gpus": gpus}
    for field in ("idle_since", "cull_at"):
        value = body.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{field} must be a number (Unix seconds)")
        out[field] = float(value)
    if out["cull_at"] < out["idle_since"]:
        raise ValueError("cull_at must not be before idle_since")
    if isinstance(body.get("server"), str):
        out["server"] = body["server"][:255]
    return out
