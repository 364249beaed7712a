"""Baseline for bench/spawn.py: stock DockerSpawner as jupyterhub-deploy-docker sets it up.

Same image, same network, same ports as our hub; no quota, one Docker API thread.
"""

import os

c = get_config()  # noqa: F821

c.JupyterHub.bind_url = os.environ["BENCH_BIND_URL"]
c.JupyterHub.hub_bind_url = os.environ["BENCH_HUB_BIND_URL"]
c.ConfigurableHTTPProxy.api_url = os.environ["BENCH_PROXY_API_URL"]
c.JupyterHub.db_url = os.environ["BENCH_DB_URL"]
c.JupyterHub.cookie_secret_file = os.environ["BENCH_STATE"] + "/cookie_secret"
c.ConfigurableHTTPProxy.pid_file = os.environ["BENCH_STATE"] + "/jupyterhub-proxy.pid"
c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.image = os.environ["BENCH_IMAGE"]
c.DockerSpawner.network_name = os.environ["BENCH_NETWORK"]
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True
c.DockerSpawner.prefix = os.environ["BENCH_PREFIX"]
c.DockerSpawner.volumes = {"{prefix}-home-{username}": "/home/jovyan"}
c.DockerSpawner.pull_policy = "never"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.services = [{"name": "bench", "api_token": os.environ["BENCH_TOKEN"]}]
c.JupyterHub.load_roles = [{"name": "admin", "services": ["bench"]}]
# same patience as gpuhub's spawner, so a busy 2-core host does not abort slow starts
c.DockerSpawner.start_timeout = 300
c.DockerSpawner.http_timeout = 120
