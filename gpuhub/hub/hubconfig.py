"""The ``apply_*(c, site, facts)`` functions that ``jupyterhub_config.py`` calls.

Each one only sets config values, so each is unit-tested against a plain
``traitlets.config.Config()``. Everything that touches the outside world (Docker, the
environment, the state directory) happens once in :func:`prepare` and is handed in as
:class:`HubFacts`.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gpuhub.core.site import SERVER_START_TIMEOUT_SECONDS, Site, load_site, site_config_path
from gpuhub.hub.container import HOME_VOLUME

QUOTA_SERVICE = "gpuhub-quota"
AUTOMATION_SERVICE = "gpuhub-automation"
METRICS_SERVICE = "gpuhub-metrics"
PROJECT_PROXY_SERVICE = "gpuhub-project-proxy"
AIRLOCK_SERVICE = "gpuhub-airlock"
SERVER_ROLE_SCOPES = ["users:activity!user", "access:servers!server"]  # JupyterHub's default server role


class CatalogError(RuntimeError):
    """A catalog image is missing from the local engine; the message names the build command."""


@dataclass(frozen=True)
class HubFacts:
    """What the hub config needs from the world outside the site file."""

    hub_ip: str  # the user network's gateway: reachable from containers, not from elsewhere
    network: str
    demo_password: str | None
    admin_password: str | None
    admin_token: str | None
    quota_service_token: str
    crypt_key: str  # encrypts auth_state (OIDC tokens) in the hub database
    hub_metrics_token: str  # Prometheus reads /hub/metrics with it (state/hub-metrics-token)
    proxy_command: str
    service_env: dict = field(default_factory=dict)  # passed to managed services (e.g. PGPASSFILE)


def _state_secret(state_dir: Path, name: str, make=lambda: secrets.token_urlsafe(24)) -> str:
    """A secret kept in the state directory so it survives restarts (created mode 0600, never wider)."""
    path = state_dir / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make() + "\n")
    return path.read_text().strip()


def prepare(environ: dict | None = None, *, docker_client=None, log=print) -> tuple[Site, HubFacts]:
    """Load the site config and gather the facts the apply functions need."""
    from gpuhub.host.dockerenv import docker_client as make_client
    from gpuhub.host.dockerenv import ensure_user_network

    env = os.environ if environ is None else environ
    site = load_site(site_config_path(env))
    state = site.hub.state_dir
    state.mkdir(parents=True, exist_ok=True)
    client = docker_client or make_client()
    from gpuhub.host.images import check_catalog

    problems = check_catalog(site, client)
    if problems:  # refuse to start a hub whose catalog would fail every spawn
        raise CatalogError("the site's image catalog is not available locally:\n  " + "\n  ".join(problems))
    if site.hub.engine == "swarm":  # servers on Swarm nodes: an attachable overlay; the hub faces the manager
        from gpuhub.host.swarm_network import ensure_overlay

        net = ensure_overlay(client, site.hub.network)
    else:
        net = ensure_user_network(client, site.hub.network)
    password = admin_password = None
    if site.hub.auth.type == "shared-password":
        password = env.get("GPUHUB_DEMO_PASSWORD") or _state_secret(
            state, "demo-password", lambda: secrets.token_urlsafe(9)
        )
        admin_password = env.get("GPUHUB_ADMIN_PASSWORD") or _state_secret(state, "admin-password")
        if not env.get("GPUHUB_DEMO_PASSWORD"):
            log(
                f"gpuhub: shared demo password is {password!r} (kept in {state / 'demo-password'}; "
                "set GPUHUB_DEMO_PASSWORD to choose one)"
            )
        if not env.get("GPUHUB_ADMIN_PASSWORD"):
            log(
                f"gpuhub: admins ({', '.join(site.hub.admin_users) or 'none'}) log in with the password in "
                f"{state / 'admin-password'} (or set GPUHUB_ADMIN_PASSWORD, >= 32 characters)"
            )
    chp = Path(sys.prefix) / "bin" / "configurable-http-proxy"
    facts = HubFacts(
        hub_ip=net.gateway,
        network=net.name,
        demo_password=password,
        admin_password=admin_password,
        admin_token=env.get("GPUHUB_ADMIN_TOKEN") or None,
        quota_service_token=_state_secret(state, "quota-service-token", lambda: secrets.token_urlsafe(32)),
        hub_metrics_token=_state_secret(state, "hub-metrics-token", lambda: secrets.token_urlsafe(32)),
        crypt_key=env.get("JUPYTERHUB_CRYPT_KEY") or _state_secret(state, "crypt-key", lambda: secrets.token_hex(32)),
        proxy_command=str(chp) if chp.exists() else "configurable-http-proxy",
        service_env={
            **{k: env[k] for k in ("PGPASSFILE", "PGPASSWORD", "DOCKER_HOST") if k in env},
            "GPUHUB_HUB_PID": str(os.getpid()),  # prepare() runs in the hub (quota_service.bind_to_hub)
        },
    )
    return site, facts


def apply_hub(c, site: Site, facts: HubFacts) -> None:
    """Where the hub listens, where it keeps state, and that it never stops servers on exit."""
    state = site.hub.state_dir
    c.JupyterHub.bind_url = site.hub.bind_url
    if site.hub.hub_connect_ip:  # hub in a container (docker-compose): users reach it by name
        c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{site.hub.api_port}"
        c.JupyterHub.hub_connect_url = f"http://{site.hub.hub_connect_ip}:{site.hub.api_port}"
    else:  # hub on the host: only the user network's gateway, never 0.0.0.0
        c.JupyterHub.hub_bind_url = f"http://{facts.hub_ip}:{site.hub.api_port}"
        c.JupyterHub.hub_connect_url = f"http://{facts.hub_ip}:{site.hub.api_port}"
    c.JupyterHub.db_url = site.hub.database_url
    from gpuhub.hub import db_guard  # JupyterHub has no setting for it: wraps its BaseHandler (see the module)

    db_guard.install()  # while hub.db_url fails: 503 naming it and the fix, not 403 "invalid credentials" / 500
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = False  # a hub restart must not stop running research servers
    c.JupyterHub.authenticate_prometheus = True
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{site.hub.proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(state / "jupyterhub-proxy.pid")
    c.ConfigurableHTTPProxy.command = [facts.proxy_command]
    c.Authenticator.admin_users = set(site.hub.admin_users)
    c.JupyterHub.template_paths = [str(Path(__file__).parent / "templates")]
    from gpuhub.hub.pages import BudgetBanner, PageLanguage

    c.JupyterHub.template_vars = {
        "gpuhub_quota": BudgetBanner(str(site.path)),
        "gpuhub_i18n": PageLanguage(str(site.path)),  # the request's language (gpuhub.hub.i18n)
    }
    from gpuhub.hub import usage_pages  # imports JupyterHub's handlers: only where a hub is configured

    c.JupyterHub.extra_handlers = usage_pages.handlers(str(site.path))  # /hub/language, /hub/usage, /hub/operators
    if site.projects:
        from gpuhub.hub import steward_pages

        c.JupyterHub.extra_handlers += steward_pages.handlers(str(site.path))  # /hub/projects


def apply_auth(c, site: Site, facts: HubFacts) -> None:
    """Who may log in: the shared demo password or the organizations' OIDC provider."""
    from gpuhub.hub.auth import apply_auth as apply_auth_kind

    apply_auth_kind(c, site, demo_password=facts.demo_password, admin_password=facts.admin_password)
    c.CryptKeeper.keys = [facts.crypt_key]


def apply_spawner(c, site: Site, facts: HubFacts) -> None:
    """One container per server, on the user network, from the catalog only.

    Limits (``mem_limit``, ``cpu_limit``, ``cpu_shares``) are not set here: the spawner's defaults come
    from the site config's ``containers`` section, so an operator's own value in the JupyterHub config
    is honoured, and the spawner merges the operator's ``extra_host_config`` / ``extra_create_kwargs`` /
    ``volumes`` with its own at each start, refusing what would weaken the hardening
    (:mod:`gpuhub.hub.container`)."""
    c.JupyterHub.spawner_class = {
        "docker": "gpuhub.hub.spawner.GpuhubSpawner",
        "swarm": "gpuhub.hub.swarm_spawner.GpuhubSwarmSpawner",  # services on the node the allocator picked
    }[site.hub.engine]
    c.GpuhubSpawner.site_config = str(site.path)
    c.GpuhubSpawner.network_name = facts.network
    c.GpuhubSpawner.use_internal_ip = True
    c.GpuhubSpawner.image = next(iter(site.images.values())).image
    # catalog key -> image: DockerSpawner resolves user_options["image"] through this map
    c.GpuhubSpawner.allowed_images = {key: spec.image for key, spec in site.images.items()}
    c.GpuhubSpawner.pull_policy = "never"  # images come from the catalog, built locally
    c.GpuhubSpawner.remove = True
    c.GpuhubSpawner.prefix = site.hub.instance  # containers: <instance>-<user>[__<server>] (gpuhub.core.naming)
    c.GpuhubSpawner.hub_instance = site.hub.instance
    c.GpuhubSpawner.notebook_dir = "/home/jovyan"
    c.GpuhubSpawner.volumes = {HOME_VOLUME: "/home/jovyan"}  # the spawner mounts it even if config replaces this
    c.GpuhubSpawner.default_url = "/lab"
    c.GpuhubSpawner.poll_interval = 10  # a dead server frees its GPUs within ~10 s (inspect is cheap)
    c.GpuhubSpawner.start_timeout = SERVER_START_TIMEOUT_SECONDS  # the reconciler knows it too (gpuhub.core.site)
    c.GpuhubSpawner.http_timeout = 120
    # A queued GPU request is a pending spawn for as long as it waits (gpuhub.hub.queue_wait); JupyterHub's limit
    # on pending spawns would let a long queue refuse CPU-only and other orgs' spawns. start_concurrency gates the
    # expensive part of a start instead.
    c.JupyterHub.concurrent_spawn_limit = 0
    c.GpuhubSpawner.debug = False
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = 4


def apply_services(c, site: Site, facts: HubFacts) -> None:
    """The quota service (enforcer, reconciler, status API) and the automation token."""
    services = [
        {
            "name": QUOTA_SERVICE,
            "command": [sys.executable, "-m", "gpuhub", "service", "quota"],  # gpuhub.hub.quota_service
            "url": f"http://127.0.0.1:{site.hub.quota_service_port}",
            "api_token": facts.quota_service_token,
            "environment": {
                "GPUHUB_SITE_CONFIG": str(site.path),
                **facts.service_env,
            },
            "display": False,
        }
    ]
    roles = [
        {
            "name": "gpuhub-quota",
            # servers: the GPU queue's dispatcher starts the servers of requests a restarted hub forgot
            "scopes": ["list:users", "read:users", "read:servers", "delete:servers", "servers"],
            "services": [QUOTA_SERVICE],
        }
    ]
    services.append({"name": METRICS_SERVICE, "api_token": facts.hub_metrics_token, "display": False})
    roles.append({"name": METRICS_SERVICE, "scopes": ["read:metrics"], "services": [METRICS_SERVICE]})
    if site.projects:  # the download filter in front of project servers (gpuhub.host.project_proxy); no hub API use
        services.append(
            {
                "name": PROJECT_PROXY_SERVICE,
                "command": [sys.executable, "-m", "gpuhub", "service", "project-proxy"],
                "environment": {"GPUHUB_SITE_CONFIG": str(site.path), **facts.service_env},
                "display": False,
            }
        )
        _airlock_service(c, site, facts, services, roles)
    if facts.admin_token:
        services.append({"name": AUTOMATION_SERVICE, "api_token": facts.admin_token})
        roles.append({"name": "admin", "services": [AUTOMATION_SERVICE]})
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles


def _airlock_service(c, site: Site, facts: HubFacts, services: list, roles: list) -> None:
    """gpuhub-airlock (gpuhub.hub.airlock_service): the export/import REST API and the stewards' page, with the
    hub's OAuth. It listens on the user network's gateway (like the hub API) so that servers reach it; the proxy
    reaches it there too. Every user may reach it (JupyterHub 5 asks ``access:services!service=...``): members
    change at run time (stewards add them, IdP groups), and what a caller may do is the service's decision, by
    their role in the project. Server tokens get the scope too, so ``gpuhub-export`` works from a server."""
    host = "127.0.0.1" if site.hub.hub_connect_ip else facts.hub_ip
    services.append(
        {
            "name": AIRLOCK_SERVICE,
            "command": [sys.executable, "-m", "gpuhub.hub.airlock_service"],
            "url": f"http://{host}:{site.hub.airlock_service_port}",
            "oauth_no_confirm": True,  # the hub's own page, not a third party asking for the user's identity
            "oauth_client_allowed_scopes": ["read:users:groups!user"],  # IdP groups make project members
            "environment": {"GPUHUB_SITE_CONFIG": str(site.path), **facts.service_env},
            "display": True,
        }
    )
    access = f"access:services!service={AIRLOCK_SERVICE}"
    roles.append({"name": "user", "scopes": ["self", access]})
    c.GpuhubSpawner.server_token_scopes = [*SERVER_ROLE_SCOPES, "read:users:groups!user", access]


def apply_courses(c, site: Site, facts: HubFacts) -> None:
    """nbgrader courses (see :mod:`gpuhub.hub.courses`): the hub groups ``formgrade-<course>`` /
    ``nbgrader-<course>`` from the site and the IdP, the scopes nbgrader's JupyterHub plugin
    needs on the server token, and each course's instructors' view of its students' servers.
    Call after :func:`apply_auth` and :func:`apply_services` (it extends what they set)."""
    from gpuhub.hub import courses

    if not site.courses:
        return
    courses.check_usernames(site)
    earlier = list(c.GpuhubSpawner.server_token_scopes) if "server_token_scopes" in c.GpuhubSpawner else []
    c.GpuhubSpawner.server_token_scopes = list(dict.fromkeys([*courses.SERVER_TOKEN_SCOPES, *earlier]))  # + airlock's
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    c.JupyterHub.load_roles = roles + courses.roles(site)
    members = {name for course in site.courses.values() for name in course.instructors + course.students}
    idp_groups = {
        g for course in site.courses.values() for g in course.instructors_idp_groups + course.students_idp_groups
    }
    if site.hub.auth.type == "oidc":
        # the authenticator manages groups (load_groups is refused then): it adds the derived
        # groups at every login, and course members may log in
        cfg = c.GpuhubOIDCAuthenticator
        cfg.course_groups = {"users": courses.groups_by_user(site), "idp_groups": courses.groups_by_idp_group(site)}
        cfg.allowed_users = set(cfg.allowed_users if "allowed_users" in cfg else ()) | members
        cfg.allowed_groups = set(cfg.allowed_groups if "allowed_groups" in cfg else ()) | idp_groups
    else:
        groups = dict(c.JupyterHub.load_groups) if "load_groups" in c.JupyterHub else {}
        c.JupyterHub.load_groups = {**groups, **courses.load_groups(site)}
