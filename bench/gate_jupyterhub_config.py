"""bench/spawn.py --start-concurrency N: the project's own config, with the spawner's start gate set from the
bench's environment (BENCH_START_CONCURRENCY), so one run can compare gate sizes."""

import os

load_subconfig(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "jupyterhub_config.py"))  # noqa: F821
c.GpuhubSpawner.start_concurrency = int(os.environ["BENCH_START_CONCURRENCY"])  # noqa: F821
