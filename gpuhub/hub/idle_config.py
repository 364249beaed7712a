"""``apply_idle(c, site, facts)``: the idle cullers as hub-managed services (config values only).

- ``gpuhub-idle`` (:mod:`gpuhub.hub.idle_service`) culls GPU servers on GPU utilisation and kernel
  state; scopes: list and read servers, stop them, and reach their API for the kernels' state.
- ``jupyterhub-idle-culler`` (:mod:`gpuhub.hub.idle_http`, the PyPI culler with an arbiter) culls
  CPU-only servers on HTTP inactivity, with its documented minimal scopes.
- The hub home page shows the warnings and why a server was stopped (``announcement_home``).

Call after :func:`gpuhub.hub.hubconfig.apply_hub` and :func:`~gpuhub.hub.hubconfig.apply_services`
(it extends the services, roles and template variables they set).
"""

from __future__ import annotations

import sys

from quota import idle

IDLE_SERVICE = "gpuhub-idle"
HTTP_CULLER = "jupyterhub-idle-culler"
IDLE_SCOPES = ["list:users", "read:servers", "delete:servers", "access:servers"]
HTTP_CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]  # its README


def _extend(c, name: str, items: list) -> None:
    have = list(getattr(c.JupyterHub, name)) if name in c.JupyterHub else []
    setattr(c.JupyterHub, name, have + items)


def http_culler_args(site) -> list[str]:
    timeout = max(1, int(min(idle.all_http_timeouts(site))))
    return [f"--timeout={timeout}", f"--cull-every={max(1, min(60, timeout // 2))}"]


def apply_idle(c, site, facts) -> None:
    from gpuhub.hub.idle_service import IdleBanner

    env = {"GPUHUB_SITE_CONFIG": str(site.path), **facts.service_env}
    services = [
        {
            "name": IDLE_SERVICE,
            "command": [sys.executable, "-m", "gpuhub.host.process", "gpuhub.hub.idle_service"],
            "environment": env,
            "display": False,
        }
    ]
    roles = [
        {
            "name": IDLE_SERVICE,
            "description": "gpuhub-idle: stop GPU servers whose GPUs and kernels are idle",
            "scopes": IDLE_SCOPES,
            "services": [IDLE_SERVICE],
        }
    ]
    if site.idle.cull_http:
        services.append(
            {
                "name": HTTP_CULLER,
                "display": False,
                "environment": env,
                "command": [
                    sys.executable,
                    "-m",
                    "gpuhub.host.process",
                    "gpuhub.hub.idle_http",
                    *http_culler_args(site),
                ],
            }
        )
        roles.append(
            {
                "name": HTTP_CULLER,
                "description": "jupyterhub-idle-culler: stop idle CPU-only servers",
                "scopes": HTTP_CULLER_SCOPES,
                "services": [HTTP_CULLER],
            }
        )
    _extend(c, "services", services)
    _extend(c, "load_roles", roles)
    template_vars = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
    template_vars["announcement_home"] = IdleBanner(str(site.path))
    c.JupyterHub.template_vars = template_vars
