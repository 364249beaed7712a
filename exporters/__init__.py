"""Prometheus exporters for gpuhub.

- :mod:`exporters.gpu`: live GPU state from NVML (devices, MIG units, processes attributed to
  user containers) plus allocation-based holder series and sampler-accumulated GPU-seconds.
- :mod:`exporters.usage`: per-organization counters derived from the durable usage ledger, so
  they stay monotonic across exporter restarts.
- :mod:`exporters.server`: the HTTP endpoint (optional bearer token) and the entry points
  ``run_gpu_exporter`` / ``run_usage_exporter`` / ``main_gpu`` / ``main_usage``.

Nothing here reads the environment or touches NVML, Docker or the database at import time.
"""
