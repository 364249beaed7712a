"""Minimal JupyterHub config for the login tests: the site's auth and nothing else.

Read from the environment set by tests/auth/hubproc.py (test-only; gpuhub's real config is
jupyterhub_config.py). No spawning happens in these tests.
"""

import os
from pathlib import Path

from gpuhub.core.site import load_site
from gpuhub.hub.auth import apply_auth

c = get_config()  # noqa: F821

site = load_site(os.environ["GPUHUB_SITE_CONFIG"])
apply_auth(c, site, demo_password=os.environ.get("GPUHUB_DEMO_PASSWORD"))

state = Path(site.hub.state_dir)
state.mkdir(parents=True, exist_ok=True)
c.JupyterHub.bind_url = site.hub.bind_url
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["GPUHUB_TEST_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['GPUHUB_TEST_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.command = [os.environ["GPUHUB_TEST_PROXY_COMMAND"]]
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.JupyterHub.default_url = "/hub/home"
c.JupyterHub.cleanup_servers = True
c.JupyterHub.services = [{"name": "auth-tests", "api_token": os.environ["GPUHUB_TEST_API_TOKEN"]}]
c.JupyterHub.load_roles = [{"name": "admin", "services": ["auth-tests"]}]
c.Authenticator.auth_refresh_age = int(os.environ.get("GPUHUB_TEST_AUTH_REFRESH_AGE", "300"))
c.JupyterHub.log_level = "DEBUG" if os.environ.get("GPUHUB_TEST_DEBUG") else "INFO"
