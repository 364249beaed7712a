"""Courses: nbgrader for the AI academy on the hub's per-user UIDs.

A course (``courses.<id>`` in the site config, :class:`gpuhub.core.site.Course`) has instructors and
students, listed by name or through IdP groups, and is charged to an organization: its members
may spawn for that org, so caps and budgets apply unchanged (:meth:`Site.orgs_of`). This
module turns a course into what the hub and the containers need. It is pure (no Docker, no
database) except :func:`sync_hub_groups`, which the spawner calls with the hub's user object.

JupyterHub groups (what nbgrader's ``JupyterHubAuthPlugin`` reads)
    ``formgrade-<id>`` = instructors, ``nbgrader-<id>`` = students. They are *derived* from the
    site config and the IdP groups, never read back: loaded at hub start (``load_groups``, for
    the shared-password login), added at every OIDC login (the authenticator's
    ``course_groups``, so ``manage_groups`` keeps them) and brought in line at every spawn
    (:func:`sync_hub_groups`, which also removes people taken off the list).

Volumes (one Docker volume each, mounted only in course members' servers charged to the
course's org, so course work lands on the course's cap and budget)
    ``<instance>-exchange-<id>`` at ``/srv/nbgrader/exchange/<id>`` for every member: nbgrader's
    standard exchange layout, so the stock ``release/fetch/submit/collect/feedback`` commands work.
    ``<instance>-course-<id>`` at ``/home/jovyan/<id>`` for instructors only: the course
    directory (``source/``, ``release/``, ``submitted/``, ``autograded/``, ``feedback/`` and
    the gradebook), shared by the course's instructors, inside the home so JupyterLab and
    formgrader can open its files; ``nbgrader quickstart <id>`` from the home fills it, as
    nbgrader's docs describe. ``<instance>-nbgrader-config`` (read-only) at
    ``/srv/nbgrader/config``, on ``JUPYTER_CONFIG_PATH``: the nbgrader config and plugins in
    :mod:`gpuhub.hub.nbgrader_container`, which read the member's courses and roles from
    ``GPUHUB_COURSES``, and the switches that turn nbgrader's server and lab extensions on
    (:data:`MEMBER_CONFIG`; the images ship them off, so a user in no course has none). A member
    of course A never has course B's volumes, so B's files do not exist in A's container, and the
    course lists show A only.

Permission model (every user runs as their own UID:UID; a course's instructors also get the
course's GID, :func:`gpuhub.core.site.course_gid`, through ``group_add``; students never do)
    ``<id>/`` and ``outbound/`` are ``root:GID 2775`` (instructors release, students read);
    ``inbound/`` is ``root:GID 3773``: students may create entries but not list them (-wx), and
    the sticky bit stops anyone but an entry's author from renaming or deleting it; a
    submission folder (``<user>+<assignment>+<time>+<random>``) is made ``0750`` by its
    author's UID, group GID (inherited from ``inbound``), so only the author and the course's
    instructors can enter it. ``feedback/`` is ``root:GID 2771``: instructors write, nobody
    else can list or create; each released file is ``0640`` plus a POSIX ACL entry
    ``user:<student UID>:r`` (where the file system has ACLs; else nbgrader's 0644, protected
    by its name, an md5 over the 512-bit ``submission_secret.txt`` inside the 0750 submission).
    Collect accepts a submission only when its folder's owner UID is the UID the hub gave the
    student it names (``.gpuhub/uids/<uid>``, root-owned, written at each member's spawn), so
    nobody can submit in someone else's name. A one-shot init container (root with CHOWN,
    FOWNER, DAC_OVERRIDE, FSETID only, no network) lays this out again at every member's spawn
    (about 0.4 s), so a tampered mode does not survive a restart.

Gradebook
    ``/home/jovyan/<id>/gradebook.db``: SQLite on the local course volume (so POSIX locks work
    across containers; NFS is what makes nbgrader's SQLite say "database is locked"), created
    by the init container in WAL mode (readers never wait for a writer), ``root:GID 0660`` so
    every instructor can write it, and opened with a 30 s busy timeout
    (``?timeout=30``). A PostgreSQL gradebook is not wired yet (it needs a database and role per
    course reachable from the user network).

Formgrader
    Runs in each instructor's own server at ``/user/<name>/formgrader`` (opened in its own tab:
    JupyterHub >= 4.1 forbids the iframe, nbgrader#1870), so no per-course service or service
    user is needed (nbgrader#1872). An instructor of several courses grades the first in the
    default server and each other one in a server named after it (``GPUHUB_SERVER_COURSE``).
    Students' servers have the formgrader and course-list server extensions turned off.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from gpuhub.core import labels as lb
from gpuhub.core.site import Course, Site

EXCHANGE_ROOT = "/srv/nbgrader/exchange"
CONFIG_DIR = "/srv/nbgrader/config"
HOME = "/home/jovyan"
INSTRUCTOR_GROUP_PREFIX = "formgrade-"  # nbgrader's JupyterHubAuthPlugin reads these two prefixes
STUDENT_GROUP_PREFIX = "nbgrader-"
MEMBERS_ROLE = "gpuhub-course-members"
# nbgrader's JupyterHubAuthPlugin asks the hub (with the server's token) for the user's groups,
# and the course-list extension for the list of services.
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    "read:users:name!user",
    "read:users:groups!user",
    "list:services",
]
CONTAINER_FILES = ("nbgrader_config.py", "jupyter_server_config.py", "gpuhub_nbgrader.py")
# exchange layout: path inside the course's exchange folder -> mode (owner root, group GID)
EXCHANGE_LAYOUT = {"": 0o2775, "outbound": 0o2775, "inbound": 0o3773, "feedback": 0o2771}
COURSE_DIR_MODE = 0o2770
GRADEBOOK_MODE = 0o660
SUBMISSION_MODE = 0o750  # set by gpuhub_nbgrader.ExchangeSubmit on its own folder
UID_REGISTRY = ".gpuhub/uids"  # in the exchange folder: <uid> -> hub username, root-owned
INIT_CAPS = ["CHOWN", "FOWNER", "DAC_OVERRIDE", "FSETID"]  # FSETID: keep setgid on chmod of root:GID folders


class CourseConfigError(ValueError):
    """The courses section cannot work as written; the message says what to change."""


# ---------------------------------------------------------------- names


def instructor_group(key: str) -> str:
    return f"{INSTRUCTOR_GROUP_PREFIX}{key}"


def student_group(key: str) -> str:
    return f"{STUDENT_GROUP_PREFIX}{key}"


def managed_groups(site: Site) -> set[str]:
    """Every JupyterHub group this module derives (and so may add users to or remove them from)."""
    return {g for key in site.courses for g in (instructor_group(key), student_group(key))}


def exchange_volume(instance: str, key: str) -> str:
    return f"{instance}-exchange-{key}"


def course_volume(instance: str, key: str) -> str:
    return f"{instance}-course-{key}"


def config_volume(instance: str) -> str:
    return f"{instance}-nbgrader-config"


def exchange_path(key: str) -> str:
    return f"{EXCHANGE_ROOT}/{key}"


def course_path(key: str) -> str:
    return f"{HOME}/{key}"


# ---------------------------------------------------------------- membership -> hub groups


def hub_groups_of(site: Site, username: str, groups: frozenset[str] = frozenset()) -> set[str]:
    """The derived groups a user belongs in, from the site lists and their IdP ``groups``."""
    return {
        instructor_group(key) if role == "instructor" else student_group(key)
        for key, role in site.courses_of(username, groups).items()
    }


def load_groups(site: Site) -> dict[str, dict]:
    """``JupyterHub.load_groups`` for the listed members (every course group exists, even empty)."""
    out: dict[str, dict] = {}
    for key, course in site.courses.items():
        out[instructor_group(key)] = {"users": list(course.instructors)}
        out[student_group(key)] = {"users": list(course.students)}
    return out


def _derived_by(site: Site, suffix: str) -> dict[str, list[str]]:
    """{name: derived groups} over ``instructors<suffix>`` and ``students<suffix>`` of every course."""
    out: dict[str, set[str]] = {}
    for key, course in site.courses.items():
        for name in getattr(course, "instructors" + suffix):
            out.setdefault(name, set()).add(instructor_group(key))
        for name in getattr(course, "students" + suffix):
            out.setdefault(name, set()).add(student_group(key))
    return {name: sorted(groups) for name, groups in sorted(out.items())}


def groups_by_user(site: Site) -> dict[str, list[str]]:
    """{username: derived groups} for the members listed by name."""
    return _derived_by(site, "")


def groups_by_idp_group(site: Site) -> dict[str, list[str]]:
    """{IdP group: derived groups} (a member of both lists of one course is an instructor)."""
    return _derived_by(site, "_idp_groups")


def derived_groups(by_user: dict, by_idp_group: dict, username: str, idp_groups) -> set[str]:
    """What the authenticator adds at login: the same rule as :func:`hub_groups_of`, from the
    two maps above (instructor wins within a course)."""
    groups = set(by_user.get(username, ()))
    for g in idp_groups:
        groups.update(by_idp_group.get(g, ()))
    taught = {g[len(INSTRUCTOR_GROUP_PREFIX) :] for g in groups if g.startswith(INSTRUCTOR_GROUP_PREFIX)}
    return {g for g in groups if not (g.startswith(STUDENT_GROUP_PREFIX) and g[len(STUDENT_GROUP_PREFIX) :] in taught)}


def roles(site: Site) -> list[dict]:
    """Hub roles: members may list services (nbgrader's course list asks); each course's
    instructors may see its students and their servers (hub admin page, ``GET /hub/api/users``),
    whose ``user_options`` carry the GPUs, model and org."""
    if not site.courses:
        return []
    out = [
        {
            "name": MEMBERS_ROLE,
            "description": "nbgrader course members: list services (nbgrader's course list)",
            "scopes": ["list:services"],
            "groups": sorted(managed_groups(site)),
        }
    ]
    for key in site.courses:
        students = student_group(key)
        out.append(
            {
                "name": f"gpuhub-course-{key}-instructors",
                "description": f"instructors of course {key}: see its students and their servers "
                "(GPUs in user_options)",
                "scopes": [
                    "admin-ui",
                    f"list:users!group={students}",
                    f"read:users!group={students}",
                    f"read:servers!group={students}",
                ],
                "groups": [instructor_group(key)],
            }
        )
    return out


def check_usernames(site: Site) -> None:
    """Refuse member names the hub could never have (same rule as organizations' members)."""
    from gpuhub.core import naming

    naming.check_listed_usernames(
        (
            (f"courses.{key}.{kind}[{i}]", name)
            for key, course in site.courses.items()
            for kind in ("instructors", "students")
            for i, name in enumerate(getattr(course, kind))
        ),
        CourseConfigError,
    )


# ---------------------------------------------------------------- one container


@dataclass(frozen=True)
class ContainerPlan:
    """What a course member's container gets, and the one-shot root step that prepares it."""

    courses: dict[str, str]  # course key -> "instructor" | "student"
    binds: dict[str, dict]  # volume -> {"bind": path, "mode": "rw" | "ro"} (merged into host_config.binds)
    env: dict[str, str]
    group_add: list[str]  # course GIDs of the courses the user teaches
    volume_labels: dict[str, dict]  # volume -> labels to create it with
    init_binds: dict[str, dict]
    init_command: list[str]
    init_env: dict[str, str] = field(default_factory=dict)


def container_files() -> dict[str, str]:
    """The files written into the config volume (name -> text)."""
    here = Path(__file__).parent / "nbgrader_container"
    return {name: (here / name).read_text() for name in CONTAINER_FILES}


def courses_env(courses: dict[str, str]) -> str:
    """``GPUHUB_COURSES``: ``ml101:instructor,cs50:student`` (sorted)."""
    return ",".join(f"{key}:{role}" for key, role in sorted(courses.items()))


def container_plan(
    site: Site,
    username: str,
    uid: int,
    groups: frozenset[str] = frozenset(),
    instance: str = "gpuhub",
    org: str | None = None,
    server_name: str = "",
) -> ContainerPlan | None:
    """The plan for one server of ``username`` (running as ``uid``) charged to ``org``; None when
    the user is in no course of that org. Course work happens in servers charged to the course's
    org, so its GPU use lands on the course's cap and budget (``org=None``: every course).
    A server named after a course the user teaches is that course's formgrader
    (``GPUHUB_SERVER_COURSE``); other servers grade the first course taught."""
    courses = {
        key: role
        for key, role in site.courses_of(username, groups).items()
        if org is None or site.courses[key].org == org
    }
    if not courses:
        return None
    binds: dict[str, dict] = {config_volume(instance): {"bind": CONFIG_DIR, "mode": "ro"}}
    labels: dict[str, dict] = {config_volume(instance): {lb.HUB: instance, lb.KIND: "nbgrader-config"}}
    init_binds: dict[str, dict] = {config_volume(instance): {"bind": "/gpuhub/config", "mode": "rw"}}
    script = [_files_script("/gpuhub/config")]
    for key, role in sorted(courses.items()):
        course = site.courses[key]
        vol = exchange_volume(instance, key)
        binds[vol] = {"bind": exchange_path(key), "mode": "rw"}
        labels[vol] = {lb.HUB: instance, lb.KIND: "exchange", lb.COURSE: key}
        init_binds[vol] = {"bind": f"/gpuhub/exchange/{key}", "mode": "rw"}
        script.append(_exchange_script(f"/gpuhub/exchange/{key}", course.gid, uid, username))
        if role == "instructor":
            vol = course_volume(instance, key)
            binds[vol] = {"bind": course_path(key), "mode": "rw"}
            labels[vol] = {lb.HUB: instance, lb.KIND: "course", lb.COURSE: key}
            init_binds[vol] = {"bind": f"/gpuhub/course/{key}", "mode": "rw"}
            script.append(_course_dir_script(f"/gpuhub/course/{key}", course.gid))
    files = container_files()
    script.append(_member_config_script("/gpuhub/config"))
    script.append(_student_labconfig_script("/gpuhub/config"))
    teaches = any(role == "instructor" for role in courses.values())
    config_path = CONFIG_DIR if teaches else f"{CONFIG_DIR}/student:{CONFIG_DIR}"
    return ContainerPlan(
        courses=courses,
        binds=binds,
        env={
            "JUPYTER_CONFIG_PATH": config_path,
            "GPUHUB_COURSES": courses_env(courses),
            **({"GPUHUB_SERVER_COURSE": server_name} if courses.get(server_name) == "instructor" else {}),
        },
        group_add=[str(site.courses[key].gid) for key, role in sorted(courses.items()) if role == "instructor"],
        volume_labels=labels,
        init_binds=init_binds,
        init_command=["sh", "-c", "set -eu\numask 022\n" + "\n".join(script)],
        init_env={f"GPUHUB_FILE_{i}": text for i, text in enumerate(files.values())},
    )


# nbgrader is off in the images (a user in no course gets none of it: images/base-notebook/jupyter/);
# these files in the config volume, on every member's JUPYTER_CONFIG_PATH, turn it on for members.
# Jupyter Server merges jupyter_server_config.d/*.json across the config path (this one wins over the
# image's); the role-specific switches in nbgrader_container/jupyter_server_config.py win over both.
NBGRADER_SERVER_EXTENSIONS = ("formgrader", "validate_assignment", "assignment_list", "course_list")
MEMBER_CONFIG = {
    "jupyter_server_config.d/gpuhub-course-member.json": {
        "ServerApp": {
            "jpserver_extensions": {f"nbgrader.server_extensions.{ext}": True for ext in NBGRADER_SERVER_EXTENSIONS}
        }
    },
    "labconfig/page_config.json": {"disabledExtensions": {"@jupyter/nbgrader": False}},
}


def member_config_files() -> dict[str, str]:
    """Path under the config volume -> JSON text (see :data:`MEMBER_CONFIG`)."""
    return {path: json.dumps(data, sort_keys=True) for path, data in MEMBER_CONFIG.items()}


def _member_config_script(target: str) -> str:
    lines = []
    for path, text in member_config_files().items():
        folder = f"{target}/{path.rsplit('/', 1)[0]}"
        lines += [
            f"mkdir -p {folder} && chmod 0755 {folder}",
            _write_sh(folder, f"'%s' {shlex.quote(text)}", path.rsplit("/", 1)[1]),
        ]
    return "\n".join(lines)


# What students have no use for: JupyterLab leaves these nbgrader plugins out for them (instructors keep them).
STUDENT_DISABLED_PLUGINS = (
    "@jupyter/nbgrader:formgrader",
    "@jupyter/nbgrader:create-assignment",
    "@jupyter/nbgrader:course-list",
)


def _student_labconfig_script(target: str) -> str:
    """``<config>/student/labconfig/page_config.json``, on students' JUPYTER_CONFIG_PATH only."""
    page = json.dumps({"disabledExtensions": dict.fromkeys(STUDENT_DISABLED_PLUGINS, True)})
    return (
        f"mkdir -p {target}/student/labconfig && chmod 0755 {target}/student {target}/student/labconfig && "
        f"printf '%s' {shlex.quote(page)} > {target}/student/labconfig/page_config.json && "
        f"chmod 0644 {target}/student/labconfig/page_config.json"
    )


def _write_sh(folder: str, printf_args: str, name: str) -> str:
    """Shell that writes a 0644 file by write-then-rename: a reader sees either version whole."""
    return (
        f't=$(mktemp {folder}/.tmp.XXXXXX) && printf {printf_args} > "$t" && chmod 0644 "$t" '
        f'&& mv -f "$t" {folder}/{name}'
    )


def _files_script(target: str) -> str:
    lines = [f"chown 0:0 {target} && chmod 0755 {target}"]
    for i, name in enumerate(CONTAINER_FILES):  # containers starting right now read either version
        lines.append(_write_sh(target, f'"%s" "$GPUHUB_FILE_{i}"', name))
    return "\n".join(lines)


def _exchange_script(root: str, gid: int, uid: int, username: str) -> str:
    q = shlex.quote
    lines = []
    for sub, mode in EXCHANGE_LAYOUT.items():
        path = f"{root}/{sub}" if sub else root
        lines.append(f"mkdir -p {path} && chown 0:{gid} {path} && chmod {mode:o} {path}")
    reg = f"{root}/{UID_REGISTRY}"
    lines += [
        f"mkdir -p {reg} && chown 0:0 {root}/.gpuhub {reg} && chmod 0755 {root}/.gpuhub {reg}",
        _write_sh(reg, f'"%s\\n" {q(username)}', str(uid)),
    ]
    return "\n".join(lines)


def _course_dir_script(root: str, gid: int) -> str:
    db = f"{root}/gradebook.db"
    wal = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('pragma journal_mode=wal').fetchall()"
    return "\n".join(
        [
            f"chown 0:{gid} {root} && chmod {COURSE_DIR_MODE:o} {root}",
            f"if [ ! -e {db} ] && command -v python3 >/dev/null; then python3 -c {shlex.quote(wal)} {db} "
            f"&& chown 0:{gid} {db} && chmod {GRADEBOOK_MODE:o} {db}; fi",
        ]
    )


# ---------------------------------------------------------------- hub side effects (spawner)


def sync_hub_groups(user, site: Site, groups: frozenset[str]) -> tuple[set[str], set[str]]:
    """Bring ``user``'s derived course groups in line with the site (other groups untouched).

    ``user`` is JupyterHub's ``User`` (``sync_groups`` creates missing groups and commits).
    Returns (added, removed).
    """
    current = {g.name for g in user.groups}
    wanted = hub_groups_of(site, user.name, frozenset(groups))
    managed = managed_groups(site)
    new = (current - managed) | wanted
    if new != current:
        user.sync_groups(sorted(new))
    return new - current, current - new


# ---------------------------------------------------------------- reports (CLI)


def members(site: Site, key: str, hub_groups: dict[str, set[str]] | None = None) -> list[dict]:
    """A course's members: listed in the site, plus those the hub has in its course groups
    (IdP-derived at their last login). ``hub_groups``: {group name: usernames}."""
    course = site.courses[key]
    hub_groups = hub_groups or {}
    rows: dict[str, dict] = {}
    for role, listed, group in (
        ("instructor", course.instructors, instructor_group(key)),
        ("student", course.students, student_group(key)),
    ):
        for name in listed:
            rows.setdefault(name, {"user": name, "role": role, "source": "site"})
        for name in sorted(hub_groups.get(group, ())):
            rows.setdefault(name, {"user": name, "role": role, "source": "idp"})
    return sorted(rows.values(), key=lambda r: (r["role"] != "instructor", r["user"]))


def course_servers(site: Site, key: str, status: dict, member_rows: list[dict]) -> dict:
    """The running servers of a course's members charged to the course's org, from the quota
    store's ``status()``, with the org's GPU numbers."""
    course = site.courses[key]
    roles_by_user = {r["user"]: r["role"] for r in member_rows}
    org = status.get("orgs", {}).get(course.org, {})
    servers = [
        dict(s, role=roles_by_user[s["user"]]) for s in org.get("running_servers", []) if s["user"] in roles_by_user
    ]
    return {
        "course": key,
        "org": course.org,
        "period": status.get("period"),
        "servers": servers,
        "course_gpus_in_use": sum(s["gpus"] for s in servers),
        "org_gpus_in_use": org.get("gpus_in_use", 0),
        "org_gpu_limit": org.get("gpu_limit", 0),
        "org_used_gpu_hours": org.get("used_gpu_hours", 0.0),
        "org_budget_gpu_hours": org.get("budget_gpu_hours", 0.0),
    }


def describe(course: Course) -> dict:
    return {
        "course": course.key,
        "display_name": course.display_name,
        "org": course.org,
        "image": course.image,
        "instructors": list(course.instructors),
        "students": list(course.students),
        "instructors_idp_groups": list(course.instructors_idp_groups),
        "students_idp_groups": list(course.students_idp_groups),
        "gid": course.gid,
    }
