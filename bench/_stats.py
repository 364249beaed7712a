"""One percentile rule for every bench (nearest rank on the sorted values), so p95 means the same everywhere."""

from __future__ import annotations


def percentile(values, q: float) -> float:
    """The value at rank round(q x (n - 1)) of the sorted values (0.0 when there are none)."""
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else 0.0
