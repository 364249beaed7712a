"""Test-only JupyterHub config: gpuhub's own config plus the airlock service (its registration in
gpuhub/hub/hubconfig.py comes with the wiring; until then tests/airlock/test_airlock_hub.py adds it here)."""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821
load_subconfig(str(Path(__file__).resolve().parents[2] / "jupyterhub_config.py"))  # noqa: F821

c.JupyterHub.services = [
    *c.JupyterHub.services,
    {
        "name": "gpuhub-airlock",
        "command": [sys.executable, "-m", "gpuhub.hub.airlock_service"],
        "url": f"http://127.0.0.1:{os.environ['GPUHUB_TEST_AIRLOCK_PORT']}",
        "api_token": os.environ["GPUHUB_TEST_AIRLOCK_TOKEN"],
        "environment": {"GPUHUB_SITE_CONFIG": os.environ["GPUHUB_SITE_CONFIG"], "GPUHUB_HUB_PID": str(os.getpid())},
        "display": False,
    },
]
c.JupyterHub.load_roles = [
    *c.JupyterHub.load_roles,
    {
        "name": "gpuhub-airlock-users",
        "scopes": ["access:services!service=gpuhub-airlock"],
        "users": os.environ["GPUHUB_TEST_AIRLOCK_USERS"].split(","),
    },
]
