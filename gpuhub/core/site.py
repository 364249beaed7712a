"""The operator's site config: one YAML file, validated at load.

Every tool (hub, CLI, exporters, tests) reads the site through :func:`load_site`, so the
schema here is the contract. Errors name the key path, what was given and what is allowed,
because the person reading them is an operator editing YAML at a terminal.
"""

from __future__ import annotations

import os
import re
import zlib
import zoneinfo
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from gpuhub.core import airlock_config, naming, queue_config
from gpuhub.core.projects import AuditSettings, Project, parse_audit, parse_projects
from gpuhub.core.siteconfig_reader import KEY_RE, SiteConfigError, _key_ok, _nonneg, _positive, _Reader

DEFAULT_SITE_CONFIG = "examples/site.yaml"
ORG_GROUP_PREFIX = "gpuhub-org-"
# Course GIDs (the group a course's instructors share on its volumes) are derived from the course
# key into this range, far above the user UIDs (20000 + one per user, never reused).
COURSE_GID_BASE = 1_900_000_000
COURSE_GID_SPAN = 100_000_000


@dataclass(frozen=True)
class AuthSettings:
    type: str = "shared-password"
    issuer: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    groups_claim: str = "groups"
    admin_groups: tuple[str, ...] = ()
    username_claim: str = "preferred_username"
    trusted_email_domains: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HubSettings:
    bind_url: str = "http://127.0.0.1:8000"
    state_dir: Path = Path("state")
    db_url: str | None = None
    auth: AuthSettings = AuthSettings()
    admin_users: tuple[str, ...] = ()
    network: str = "gpuhub-users"
    instance: str = "gpuhub"
    api_port: int = 8081
    proxy_api_port: int = 8001
    quota_service_port: int = 10101
    project_proxy_port: int = 8010  # the download filter (nginx) in front of project servers, on loopback
    airlock_service_port: int = 10103  # gpuhub-airlock (REST API, stewards' page), on the user network's gateway
    hub_connect_ip: str | None = None
    allow_cpu_without_org: bool = True
    # docker: servers are containers on this host's engine; swarm: Swarm services placed on GPU nodes (issue 19)
    engine: str = "docker"

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of the hub database (our tables live beside JupyterHub's)."""
        return self.db_url or f"sqlite:///{self.state_dir / 'jupyterhub.sqlite'}"


@dataclass(frozen=True)
class GpuModel:
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Device:
    uuid: str
    model: str


@dataclass(frozen=True)
class GpuSettings:
    runtime: str = "none"
    inventory: str = "static"
    devices: tuple[Device, ...] = ()
    models: dict[str, GpuModel] = field(default_factory=dict)
    max_gpus_per_user: int = 8


@dataclass(frozen=True)
class ImageSpec:
    key: str
    image: str
    display_name: str
    gpu: bool = True


@dataclass(frozen=True)
class Organization:
    key: str
    display_name: str
    members: tuple[str, ...] = ()
    idp_groups: tuple[str, ...] = ()
    gpu_limit: int = 0
    gpu_hours_per_month: float = 0.0
    max_gpus_per_server: int = 1
    images: tuple[str, ...] = ()
    idle_timeout_minutes: float | None = None  # GPU idle cull (None: idle.timeout_minutes)
    idle_http_timeout_minutes: float | None = None  # CPU-only HTTP idle cull (None: idle.http_timeout_minutes)


def course_gid(key: str) -> int:
    """The stable numeric group of a course's instructors (see :mod:`gpuhub.hub.courses`)."""
    return COURSE_GID_BASE + zlib.crc32(key.encode()) % COURSE_GID_SPAN


@dataclass(frozen=True)
class Course:
    """An nbgrader course; its GPU use is charged to ``org`` (members may spawn for it)."""

    key: str
    display_name: str
    org: str
    image: str  # catalog key the course's notebooks expect
    instructors: tuple[str, ...] = ()
    students: tuple[str, ...] = ()
    instructors_idp_groups: tuple[str, ...] = ()
    students_idp_groups: tuple[str, ...] = ()
    idle_timeout_minutes: float | None = None  # for members' servers charged to ``org`` (see quota.idle)
    idle_http_timeout_minutes: float | None = None

    @property
    def gid(self) -> int:
        return course_gid(self.key)

    def role_of(self, username: str, groups: frozenset[str] = frozenset()) -> str | None:
        """``"instructor"``, ``"student"`` or None: listed by name or in one of the IdP groups.

        Instructor wins when both apply. The JupyterHub groups ``formgrade-<key>`` and
        ``nbgrader-<key>`` are derived from this, never read back (see gpuhub.hub.courses).
        """
        if username in self.instructors or groups & set(self.instructors_idp_groups):
            return "instructor"
        if username in self.students or groups & set(self.students_idp_groups):
            return "student"
        return None


# The hub's start timeout (JupyterHub's Spawner.start_timeout, set by gpuhub.hub.hubconfig): a class of 50
# starting at once on 2 cores needs minutes. The reconciler keeps a pending spawn's devices that long (+60 s).
SERVER_START_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class QuotaSettings:
    min_remaining_gpu_hours: float = 0.1
    enforce_interval_seconds: float = 30.0
    grace_seconds: float = 300.0
    warn_fractions: tuple[float, ...] = (0.8, 0.95)
    reconcile_interval_seconds: float = 60.0
    unknown_containers: str = "stop"


@dataclass(frozen=True)
class IdleSettings:
    """Idle culling (see :mod:`quota.idle`): GPU servers on utilisation windows, CPU-only on HTTP."""

    gpu_threshold: float = 0.05  # a window whose peak utilisation is <= this counts as idle
    window_seconds: float = 30.0
    timeout_minutes: float = 30.0
    warn_minutes: float = 10.0
    http_timeout_minutes: float = 120.0
    check_interval_seconds: float | None = None  # the culler's tick (default: window_seconds)
    gpu_exporters: tuple[str, ...] = ()  # base URLs of the GPU exporters (their /idle endpoint)
    cull_http: bool = True  # run jupyterhub-idle-culler for CPU-only servers

    @property
    def interval(self) -> float:
        return self.check_interval_seconds or self.window_seconds


@dataclass(frozen=True)
class ContainerSettings:
    mem_limit: str = "4G"
    cpu_limit: float = 2.0
    # CPU weight under contention: a user container weighs half of the hub and the system services (1024)
    cpu_shares: int = 512
    pids_limit: int = 512
    read_only_root: bool = True
    stop_timeout_seconds: int = 5


@dataclass(frozen=True)
class Site:
    path: Path
    timezone: str
    hub: HubSettings
    gpus: GpuSettings
    images: dict[str, ImageSpec]
    organizations: dict[str, Organization]
    quota: QuotaSettings = QuotaSettings()
    containers: ContainerSettings = ContainerSettings()
    rates: dict[str, float] = field(default_factory=dict)
    currency: str = "KRW"
    metrics_token_env: str | None = None
    courses: dict[str, Course] = field(default_factory=dict)
    idle: IdleSettings = IdleSettings()
    queue: queue_config.QueueSettings = queue_config.QueueSettings()  # gpuhub.core.queue_config
    projects: dict[str, Project] = field(default_factory=dict)  # gpuhub.core.projects
    audit: AuditSettings = AuditSettings()
    airlock: airlock_config.AirlockSettings = airlock_config.AirlockSettings()  # gpuhub.core.airlock_config
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def orgs_of(self, username: str, groups: frozenset[str] = frozenset()) -> list[str]:
        """Organizations a user belongs to: listed in ``members``, in one of the org's
        ``idp_groups``, or in the JupyterHub group ``gpuhub-org-<key>`` (which the login
        layer grants, e.g. for a verified email in a trusted domain), or an instructor or
        student of a course charged to the org."""
        return [
            key
            for key, org in self.organizations.items()
            if username in org.members
            or groups & set(org.idp_groups)
            or f"{ORG_GROUP_PREFIX}{key}" in groups
            or any(c.org == key and c.role_of(username, groups) for c in self.courses.values())
        ]

    def courses_of(self, username: str, groups: frozenset[str] = frozenset()) -> dict[str, str]:
        """{course key: "instructor" | "student"} for the courses a user belongs to."""
        roles = {key: c.role_of(username, groups) for key, c in self.courses.items()}
        return {key: role for key, role in roles.items() if role}

    def projects_of(self, username: str, groups: frozenset[str] = frozenset()) -> list[str]:
        """Projects that list the user (config only; quota.projects applies the stewards' changes)."""
        return [key for key, p in self.projects.items() if p.is_listed_member(username, groups)]

    def weight_of(self, model: str) -> float:
        return self.gpus.models[model].weight


# ---------------------------------------------------------------- sections


def _auth(data) -> AuthSettings:
    r = _Reader(data, "hub.auth")
    kind = r.choice("type", ("shared-password", "oidc"), "shared-password")
    if kind == "shared-password":
        r.done()
        return AuthSettings()
    auth = AuthSettings(
        type=kind,
        issuer=r.get("issuer", str, allowed="the issuer URL, e.g. https://sso.example.kr/realms/gpuhub"),
        client_id=r.get("client_id", str),
        client_secret_env=r.get("client_secret_env", str, allowed="the name of an environment variable"),
        groups_claim=r.get("groups_claim", str, "groups"),
        admin_groups=r.str_list("admin_groups"),
        username_claim=r.get("username_claim", str, "preferred_username"),
        trusted_email_domains=r.get("trusted_email_domains", dict, {}, allowed="a mapping of domain: org"),
    )
    r.done()
    return auth


def _hub(data, base: Path) -> HubSettings:
    r = _Reader(data, "hub")
    bind_url = r.get(
        "bind_url",
        str,
        "http://127.0.0.1:8000",
        check=lambda v: re.match(r"^https?://", v),
        allowed="an http(s) URL like http://127.0.0.1:8000",
    )
    state_dir = Path(r.get("state_dir", str, "state"))
    hub = HubSettings(
        bind_url=bind_url,
        state_dir=state_dir if state_dir.is_absolute() else (base / state_dir).resolve(),
        db_url=r.get(
            "db_url",
            str,
            None,
            check=lambda v: v.startswith(("sqlite", "postgresql")),
            allowed="a sqlite:/// or postgresql+psycopg:// URL",
        ),
        auth=_auth(r.get("auth", dict, {})),
        admin_users=r.str_list("admin_users"),
        network=r.get("network", str, "gpuhub-users"),
        instance=r.get(
            "instance",
            str,
            "gpuhub",
            check=lambda v: KEY_RE.match(v) and naming.is_name_prefix(v),
            allowed="lowercase letters, digits and single '-' (prefix of container and volume names)",
        ),
        api_port=r.get("api_port", int, 8081, check=lambda v: 0 < v < 65536, allowed="a TCP port"),
        proxy_api_port=r.get("proxy_api_port", int, 8001, check=lambda v: 0 < v < 65536, allowed="a TCP port"),
        quota_service_port=r.get("quota_service_port", int, 10101, check=lambda v: 0 < v < 65536, allowed="a TCP port"),
        project_proxy_port=r.get("project_proxy_port", int, 8010, check=lambda v: 0 < v < 65536, allowed="a TCP port"),
        airlock_service_port=r.get(
            "airlock_service_port", int, 10103, check=lambda v: 0 < v < 65536, allowed="a TCP port"
        ),
        hub_connect_ip=r.get("hub_connect_ip", str, None),
        allow_cpu_without_org=r.get("allow_cpu_without_org", bool, True),
        engine=r.choice("engine", ("docker", "swarm"), "docker"),
    )
    r.done()
    return hub


def _gpus(data) -> GpuSettings:
    r = _Reader(data, "gpus")
    runtime = r.choice("runtime", ("none", "nvidia"), "none")
    inventory = r.choice("inventory", ("static", "nvml"), "static")
    models = {}
    for name, spec in r.get("models", dict, {}).items():
        m = _Reader(spec, f"gpus.models.{name}")
        models[str(name)] = GpuModel(str(name), m.get("weight", float, 1.0, check=_positive, allowed="a number > 0"))
        m.done()
    devices = []
    seen = set()
    for i, spec in enumerate(r.get("devices", list, [])):
        d = _Reader(spec, f"gpus.devices[{i}]")
        dev = Device(d.get("uuid", str), d.get("model", str))
        d.done()
        if dev.model not in models:
            raise SiteConfigError(
                f"gpus.devices[{i}].model: {dev.model!r} is not declared under gpus.models; "
                f"declared: {', '.join(models) or '(none)'}"
            )
        if dev.uuid in seen:
            raise SiteConfigError(f"gpus.devices[{i}].uuid: {dev.uuid!r} is listed twice")
        seen.add(dev.uuid)
        devices.append(dev)
    if inventory == "static" and runtime == "nvidia" and not devices:
        raise SiteConfigError("gpus.devices: runtime nvidia with static inventory needs the devices listed")
    gpus = GpuSettings(
        runtime=runtime,
        inventory=inventory,
        devices=tuple(devices),
        models=models,
        max_gpus_per_user=r.get("max_gpus_per_user", int, 8, check=_nonneg, allowed="an integer >= 0"),
    )
    r.done()
    return gpus


def _images(data) -> dict[str, ImageSpec]:
    if not data:
        raise SiteConfigError("images: at least one image is required in the catalog")
    r = _Reader(data, "images")
    out = {}
    for key, spec in r.data.items():
        _key_ok("images", key)
        r.seen.add(key)
        s = _Reader(spec, f"images.{key}")
        out[key] = ImageSpec(
            key=key,
            image=s.get("image", str, allowed="a Docker image reference like gpuhub/base-notebook:latest"),
            display_name=s.get("display_name", str, key),
            gpu=s.get("gpu", bool, True),
        )
        s.done()
    return out


def _orgs(data, images: dict, gpus: GpuSettings) -> dict[str, Organization]:
    r = _Reader(data, "organizations")
    out = {}
    for key, spec in r.data.items():
        _key_ok("organizations", key)
        r.seen.add(key)
        o = _Reader(spec, f"organizations.{key}")
        org = Organization(
            key=key,
            display_name=o.get("display_name", str, key),
            members=o.str_list("members"),
            idp_groups=o.str_list("idp_groups"),
            gpu_limit=o.get("gpu_limit", int, 0, check=_nonneg, allowed="an integer >= 0"),
            gpu_hours_per_month=o.get("gpu_hours_per_month", float, 0.0, check=_nonneg, allowed="a number >= 0"),
            max_gpus_per_server=o.get("max_gpus_per_server", int, 1, check=_nonneg, allowed="an integer >= 0"),
            images=o.str_list("images") or tuple(images),
            **_idle_overrides(o),
        )
        o.seen.update(queue_config.ORG_KEYS)  # read by queue_config.parse
        o.done()
        for i, img in enumerate(org.images):
            if img not in images:
                raise SiteConfigError(
                    f"organizations.{key}.images[{i}]: {img!r} is not in the image catalog; "
                    f"catalog keys: {', '.join(images)}"
                )
        out[key] = org
    return out


def _courses(data, images: dict, orgs: dict[str, Organization]) -> dict[str, Course]:
    r = _Reader(data, "courses")
    out: dict[str, Course] = {}
    gids: dict[int, str] = {}
    for key, spec in r.data.items():
        _key_ok("courses", key)
        r.seen.add(key)
        where = f"courses.{key}"
        c = _Reader(spec, where)
        org = c.get(
            "org",
            str,
            allowed=f"the organization charged for the course's GPUs; declared: {', '.join(orgs) or '(none)'}",
        )
        if org not in orgs:
            raise SiteConfigError(
                f"{where}.org: {org!r} is not an organization key; declared: {', '.join(orgs) or '(none)'}"
            )
        allowed_images = orgs[org].images
        image = c.get("image", str, allowed_images[0] if allowed_images else next(iter(images)))
        if image not in images:
            raise SiteConfigError(
                f"{where}.image: {image!r} is not in the image catalog; catalog keys: {', '.join(images)}"
            )
        if image not in allowed_images:
            raise SiteConfigError(
                f"{where}.image: {image!r} is not allowed for organization {org!r}; "
                f"allowed: {', '.join(allowed_images)}"
            )
        course = Course(
            key=key,
            display_name=c.get("display_name", str, key),
            org=org,
            image=image,
            instructors=c.str_list("instructors"),
            students=c.str_list("students"),
            instructors_idp_groups=c.str_list("instructors_idp_groups"),
            students_idp_groups=c.str_list("students_idp_groups"),
            **_idle_overrides(c),
        )
        c.seen.update(queue_config.COURSE_KEYS)  # read by queue_config.parse
        c.done()
        both = sorted(set(course.instructors) & set(course.students))
        if both:
            raise SiteConfigError(
                f"{where}.students: {both[0]!r} is also listed under {where}.instructors; "
                "list each person once (instructors can do everything students can)"
            )
        if course.gid in gids:
            raise SiteConfigError(
                f"{where}: its group id {course.gid} collides with course {gids[course.gid]!r}; "
                "rename one of the two courses"
            )
        gids[course.gid] = key
        out[key] = course
    return out


def _quota(data) -> QuotaSettings:
    r = _Reader(data, "quota")
    q = QuotaSettings(
        min_remaining_gpu_hours=r.get("min_remaining_gpu_hours", float, 0.1, check=_nonneg, allowed="a number >= 0"),
        enforce_interval_seconds=r.get(
            "enforce_interval_seconds", float, 30.0, check=_positive, allowed="a number > 0"
        ),
        grace_seconds=r.get("grace_seconds", float, 300.0, check=_nonneg, allowed="a number >= 0"),
        warn_fractions=tuple(r.get("warn_fractions", list, [0.8, 0.95])),
        reconcile_interval_seconds=r.get(
            "reconcile_interval_seconds", float, 60.0, check=_positive, allowed="a number > 0"
        ),
        unknown_containers=r.choice("unknown_containers", ("stop", "adopt"), "stop"),
    )
    r.seen.update(queue_config.QUOTA_KEYS)  # read by queue_config.parse
    r.done()
    return q


def _idle_overrides(r: _Reader) -> dict:
    """An organization's or course's own idle timeouts (minutes > 0; absent: the ``idle`` section's)."""
    return {
        k: r.get(k, float, None, check=_positive, allowed="minutes > 0")
        for k in ("idle_timeout_minutes", "idle_http_timeout_minutes")
    }


def _idle(data) -> IdleSettings:
    r = _Reader(data, "idle")
    i = IdleSettings(
        gpu_threshold=r.get("gpu_threshold", float, 0.05, check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
        window_seconds=r.get("window_seconds", float, 30.0, check=_positive, allowed="seconds > 0"),
        timeout_minutes=r.get("timeout_minutes", float, 30.0, check=_positive, allowed="minutes > 0"),
        warn_minutes=r.get("warn_minutes", float, 10.0, check=_nonneg, allowed="minutes >= 0"),
        http_timeout_minutes=r.get("http_timeout_minutes", float, 120.0, check=_positive, allowed="minutes > 0"),
        check_interval_seconds=r.get("check_interval_seconds", float, None, check=_positive, allowed="seconds > 0"),
        gpu_exporters=tuple(u.rstrip("/") for u in r.str_list("gpu_exporters")),
        cull_http=r.get("cull_http", bool, True),
    )
    r.done()
    for n, url in enumerate(i.gpu_exporters):
        if not re.match(r"^https?://", url):
            raise SiteConfigError(
                f"idle.gpu_exporters[{n}]: {url!r} is not allowed; allowed: the GPU exporter's "
                "base URL, e.g. http://gpu-host-1:9835"
            )
    return i


def _containers(data) -> ContainerSettings:
    r = _Reader(data, "containers")
    c = ContainerSettings(
        mem_limit=r.get(
            "mem_limit", str, "4G", check=lambda v: re.match(r"^\d+[kmgKMG]?$", v), allowed="a size like 512M or 4G"
        ),
        cpu_limit=r.get("cpu_limit", float, 2.0, check=_positive, allowed="a number > 0"),
        cpu_shares=r.get(
            "cpu_shares",
            int,
            512,
            check=lambda v: 2 <= v <= 262144,
            allowed="an integer from 2 to 262144 (Docker's range; 1024 is an unweighted container)",
        ),
        pids_limit=r.get("pids_limit", int, 512, check=_positive, allowed="an integer > 0"),
        read_only_root=r.get("read_only_root", bool, True),
        stop_timeout_seconds=r.get("stop_timeout_seconds", int, 5, check=_nonneg, allowed="an integer >= 0"),
    )
    r.done()
    return c


def parse_site(data: Any, path: Path) -> Site:
    """Validate a parsed YAML document; ``path`` anchors relative paths."""
    r = _Reader(data, "")
    tz = r.get("timezone", str, "Asia/Seoul")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SiteConfigError(f"timezone: {tz!r} is not an IANA time zone; e.g. Asia/Seoul or UTC") from None
    base = path.parent.resolve()
    images = _images(r.get("images", dict, allowed="a mapping of catalog key: {image, display_name}"))
    gpus = _gpus(r.get("gpus", dict, {}))
    rates = r.get("rates", dict, {}, allowed="a mapping of GPU model: price per weighted GPU-hour")
    for model, price in rates.items():
        if model not in gpus.models:
            raise SiteConfigError(
                f"rates.{model}: {model!r} is not a GPU model in gpus.models; declare it there "
                f"(gpus.models.{model}: {{weight: ...}}) or remove its rate; models: "
                f"{', '.join(gpus.models) or '(none)'}"
            )
        if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
            raise SiteConfigError(f"rates.{model}: expected a price >= 0 per weighted GPU-hour, got {price!r}")
    hub = _hub(r.get("hub", dict, {}), base)
    organizations = _orgs(r.get("organizations", dict, {}), images, gpus)
    site = Site(
        path=path.resolve(),
        timezone=tz,
        hub=hub,
        gpus=gpus,
        images=images,
        organizations=organizations,
        quota=_quota(r.get("quota", dict, {})),
        containers=_containers(r.get("containers", dict, {})),
        idle=_idle(r.get("idle", dict, {})),
        rates={k: float(v) for k, v in rates.items()},
        currency=r.get("currency", str, "KRW"),
        metrics_token_env=r.get("metrics_token_env", str, None),
        courses=_courses(
            r.get("courses", dict, {}, allowed="a mapping of course id: {org, instructors, students, ...}"),
            images,
            organizations,
        ),
        projects=(projects := parse_projects(r.get("projects", dict, {}), organizations, images, base)),
        audit=parse_audit(r.get("audit", dict, {})),
        airlock=airlock_config.parse(
            r.get("airlock", dict, {}),
            state_dir=hub.state_dir,
            base=base,
            helper_image=next(iter(images.values())).image,
            used=bool(projects) or "airlock" in (data or {}),
        ),
        raw=dict(data or {}),
    )
    r.done()
    return replace(site, queue=queue_config.parse(data, site))


def site_config_path(environ: dict | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("GPUHUB_SITE_CONFIG") or DEFAULT_SITE_CONFIG)


def load_site(path: str | Path | None = None) -> Site:
    """Load and validate the site config (``GPUHUB_SITE_CONFIG`` when no path is given)."""
    p = Path(path) if path else site_config_path()
    try:
        text = p.read_text()
    except OSError as e:
        raise SiteConfigError(f"cannot read site config {p}: {e.strerror}; set GPUHUB_SITE_CONFIG") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SiteConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_site(data, p)
