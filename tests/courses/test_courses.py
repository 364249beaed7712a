"""Courses without services: the site section, gpuhub.hub.courses' pure functions, apply_courses
against a plain Config(), the files written into containers, and the CLI."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from gpuhub import cli
from gpuhub.core.site import SiteConfigError, load_site, parse_site
from gpuhub.hub import courses, hubconfig
from tests.unit.test_hubconfig import FACTS  # the facts prepare() would find, for apply_* tests

ROOT = Path(__file__).resolve().parents[2]


def site_data(**courses_) -> dict:
    data = yaml.safe_load((ROOT / "examples/site.yaml").read_text())
    data["images"]["torch"] = {"image": "gpuhub/pytorch:latest"}
    data["organizations"]["ai-academy"]["images"] = ["python"]
    data["courses"] = courses_ or {
        "ml101": {
            "org": "ai-academy",
            "instructors": ["prof"],
            "students": ["ann", "ben"],
            "instructors_idp_groups": ["ml101-staff"],
            "students_idp_groups": ["ml101-2026"],
        },
        "cs50": {"org": "ai-academy", "students": ["dave"], "display_name": "CS 50"},
    }
    return data


def site(**courses_):
    return parse_site(site_data(**courses_), ROOT / "examples/site.yaml")


# ---------------------------------------------------------------- site section


def test_courses_parse_with_defaults_and_charge_their_org():
    s = site()
    ml = s.courses["ml101"]
    assert (ml.display_name, ml.org, ml.image) == ("ml101", "ai-academy", "python")
    assert s.courses["cs50"].display_name == "CS 50"
    assert ml.gid != s.courses["cs50"].gid and ml.gid >= 1_900_000_000
    # members (by name or IdP group) may spawn for the course's org, and only for it
    assert s.orgs_of("ann") == ["ai-academy"]
    assert s.orgs_of("zoe", frozenset({"ml101-2026"})) == ["ai-academy"]
    assert s.orgs_of("zoe") == []
    assert "ai-academy" not in s.orgs_of("alice")
    assert s.courses_of("prof") == {"ml101": "instructor"}
    assert s.courses_of("zoe", frozenset({"ml101-2026", "ml101-staff"})) == {"ml101": "instructor"}
    assert s.courses_of("dave") == {"cs50": "student"}


def test_the_example_site_has_a_course():
    s = load_site(ROOT / "examples/site.yaml")
    assert s.courses["ml101"].org == "ai-academy"


@pytest.mark.parametrize(
    "spec,words",
    [
        ({"students": ["ann"]}, "courses.c1.org: required key is missing"),
        ({"org": "nope"}, "courses.c1.org: 'nope' is not an organization key"),
        ({"org": "ai-academy", "image": "nope"}, "courses.c1.image: 'nope' is not in the image catalog"),
        (
            {"org": "ai-academy", "image": "torch"},
            "courses.c1.image: 'torch' is not allowed for organization 'ai-academy'",
        ),
        (
            {"org": "ai-academy", "instructors": ["ann"], "students": ["ann"]},
            "courses.c1.students: 'ann' is also listed",
        ),
        ({"org": "ai-academy", "teachers": ["ann"]}, "courses.c1.teachers: unknown key"),
        ({"org": "ai-academy", "students": "ann"}, "courses.c1.students: expected a list of strings"),
    ],
)
def test_course_errors_name_the_key_path(spec, words):
    with pytest.raises(SiteConfigError) as e:
        site(c1=spec)
    assert words in str(e.value), str(e.value)


def test_course_keys_are_checked():
    with pytest.raises(SiteConfigError, match="courses.ML 101: invalid key"):
        site(**{"ML 101": {"org": "ai-academy"}})


# ---------------------------------------------------------------- groups and roles


def test_hub_groups_are_derived_from_site_and_idp_groups():
    s = site()
    assert courses.hub_groups_of(s, "prof") == {"formgrade-ml101"}
    assert courses.hub_groups_of(s, "ann") == {"nbgrader-ml101"}
    assert courses.hub_groups_of(s, "zoe", frozenset({"ml101-2026"})) == {"nbgrader-ml101"}
    assert courses.hub_groups_of(s, "alice") == set()
    assert courses.load_groups(s) == {
        "formgrade-ml101": {"users": ["prof"]},
        "nbgrader-ml101": {"users": ["ann", "ben"]},
        "formgrade-cs50": {"users": []},
        "nbgrader-cs50": {"users": ["dave"]},
    }
    by_user, by_idp = courses.groups_by_user(s), courses.groups_by_idp_group(s)
    assert courses.derived_groups(by_user, by_idp, "ann", set()) == {"nbgrader-ml101"}
    assert courses.derived_groups(by_user, by_idp, "zoe", {"ml101-2026"}) == {"nbgrader-ml101"}
    # instructor wins within a course, as in Course.role_of
    assert courses.derived_groups(by_user, by_idp, "zoe", {"ml101-2026", "ml101-staff"}) == {"formgrade-ml101"}


def test_roles_let_members_list_services_and_instructors_see_their_students_only():
    roles = {r["name"]: r for r in courses.roles(site())}
    assert roles["gpuhub-course-members"]["scopes"] == ["list:services"]
    assert set(roles["gpuhub-course-members"]["groups"]) == {
        "formgrade-ml101",
        "nbgrader-ml101",
        "formgrade-cs50",
        "nbgrader-cs50",
    }
    ml = roles["gpuhub-course-ml101-instructors"]
    assert ml["groups"] == ["formgrade-ml101"]
    assert "read:servers!group=nbgrader-ml101" in ml["scopes"] and "list:users!group=nbgrader-ml101" in ml["scopes"]
    assert not any(s.startswith(("admin:", "servers", "access:")) for s in ml["scopes"])


class FakeUser:
    def __init__(self, name, groups):
        self.name = name
        self.groups = [type("G", (), {"name": g})() for g in groups]
        self.synced = None

    def sync_groups(self, names):
        self.synced = sorted(names)


def test_sync_hub_groups_adds_and_removes_course_groups_only():
    user = FakeUser("ann", ["nbgrader-cs50", "gpuhub-org-x", "some-idp-group"])
    added, removed = courses.sync_hub_groups(user, site(), frozenset())
    assert (added, removed) == ({"nbgrader-ml101"}, {"nbgrader-cs50"})
    assert user.synced == ["gpuhub-org-x", "nbgrader-ml101", "some-idp-group"]
    user = FakeUser("ann", ["nbgrader-ml101"])
    assert courses.sync_hub_groups(user, site(), frozenset()) == (set(), set()) and user.synced is None


# ---------------------------------------------------------------- containers


def test_container_plan_mounts_only_the_members_courses():
    s = site()
    assert courses.container_plan(s, "alice", 20001, instance="hub1") is None
    prof = courses.container_plan(s, "prof", 20002, instance="hub1")
    assert prof.binds == {
        "hub1-nbgrader-config": {"bind": "/srv/nbgrader/config", "mode": "ro"},
        "hub1-exchange-ml101": {"bind": "/srv/nbgrader/exchange/ml101", "mode": "rw"},
        "hub1-course-ml101": {"bind": "/home/jovyan/ml101", "mode": "rw"},
    }
    assert prof.group_add == [str(s.courses["ml101"].gid)]
    assert prof.env == {"JUPYTER_CONFIG_PATH": "/srv/nbgrader/config", "GPUHUB_COURSES": "ml101:instructor"}
    ann = courses.container_plan(s, "ann", 20003, instance="hub1")
    assert set(ann.binds) == {"hub1-nbgrader-config", "hub1-exchange-ml101"} and ann.group_add == []
    # course work happens in servers charged to the course's org
    assert courses.container_plan(s, "ann", 20003, instance="hub1", org="gist-ai") is None
    assert set(courses.container_plan(s, "ann", 20003, instance="hub1", org="ai-academy").binds) == set(ann.binds)
    dave = courses.container_plan(s, "dave", 20004, instance="hub1")
    assert set(dave.binds) == {"hub1-nbgrader-config", "hub1-exchange-cs50"}
    assert dave.env["GPUHUB_COURSES"] == "cs50:student"


def test_a_server_named_after_a_taught_course_grades_that_course():
    s = site()
    named = courses.container_plan(s, "prof", 20002, instance="hub1", server_name="ml101")
    assert named.env["GPUHUB_SERVER_COURSE"] == "ml101"
    assert (
        "GPUHUB_SERVER_COURSE"
        not in courses.container_plan(s, "prof", 20002, instance="hub1", server_name="scratch").env
    )
    # a student's server named after their course is an ordinary server
    assert (
        "GPUHUB_SERVER_COURSE" not in courses.container_plan(s, "ann", 20003, instance="hub1", server_name="ml101").env
    )


def test_init_script_sets_the_permission_model():
    s = site()
    gid = s.courses["ml101"].gid
    plan = courses.container_plan(s, "prof", 20002, instance="hub1")
    script = plan.init_command[-1]
    ex = "/gpuhub/exchange/ml101"
    for line in (
        f"mkdir -p {ex} && chown 0:{gid} {ex} && chmod 2775 {ex}",
        f"chown 0:{gid} {ex}/outbound && chmod 2775 {ex}/outbound",
        f"chown 0:{gid} {ex}/inbound && chmod 3773 {ex}/inbound",
        f"chown 0:{gid} {ex}/feedback && chmod 2771 {ex}/feedback",
        f"chown 0:{gid} /gpuhub/course/ml101 && chmod 2770 /gpuhub/course/ml101",
        f"{ex}/.gpuhub/uids/20002",
    ):
        assert line in script, line
    assert plan.init_binds["hub1-course-ml101"] == {"bind": "/gpuhub/course/ml101", "mode": "rw"}
    assert len(plan.init_env) == len(courses.CONTAINER_FILES)
    assert "FSETID" in courses.INIT_CAPS and "SYS_ADMIN" not in courses.INIT_CAPS
    # a student's plan prepares no course folder
    assert "/gpuhub/course" not in courses.container_plan(s, "ann", 20003).init_command[-1]


def _run_config(name: str, env: dict, cwd: Path) -> Config:
    path = Path(courses.__file__).parent / "nbgrader_container" / name
    cfg = Config()
    old_env, old_cwd = dict(os.environ), os.getcwd()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        exec(compile(path.read_text(), str(path), "exec"), {"get_config": lambda: cfg, "__file__": str(path)})
    finally:
        os.environ.clear()
        os.environ.update(old_env)
        os.chdir(old_cwd)
    return cfg


def test_container_files_parse_and_configure_nbgrader_per_role(tmp_path):
    for name, text in courses.container_files().items():
        ast.parse(text, name)
    (tmp_path / "cs50").mkdir()
    env = {"HOME": str(tmp_path), "GPUHUB_COURSES": "cs50:instructor,ml101:instructor,x:student"}
    cfg = _run_config("nbgrader_config.py", env, tmp_path)
    assert cfg.Exchange.root == "/srv/nbgrader/exchange"
    assert cfg.CourseDirectory.groupshared is True
    assert cfg.Authenticator.plugin_class == "gpuhub_nbgrader.GpuhubAuthPlugin"
    assert (cfg.CourseDirectory.course_id, cfg.CourseDirectory.root) == ("cs50", str(tmp_path / "cs50"))
    assert cfg.CourseDirectory.db_url == f"sqlite:///{tmp_path}/cs50/gradebook.db?timeout=30"
    cfg = _run_config("nbgrader_config.py", {**env, "GPUHUB_COURSES": "ml101:instructor"}, tmp_path / "cs50")
    assert cfg.CourseDirectory.course_id == "ml101"
    # formgrader runs in the home folder: the server's course, unless the shell is inside another one
    cfg = _run_config("nbgrader_config.py", {**env, "GPUHUB_SERVER_COURSE": "ml101"}, tmp_path)
    assert (cfg.CourseDirectory.course_id, cfg.CourseDirectory.root) == ("ml101", str(tmp_path / "ml101"))
    cfg = _run_config("nbgrader_config.py", {**env, "GPUHUB_SERVER_COURSE": "ml101"}, tmp_path / "cs50")
    assert cfg.CourseDirectory.course_id == "cs50"
    cfg = _run_config("nbgrader_config.py", {**env, "GPUHUB_SERVER_COURSE": "x"}, tmp_path)  # not taught
    assert cfg.CourseDirectory.course_id == "cs50"
    cfg = _run_config("nbgrader_config.py", {**env, "GPUHUB_COURSES": "ml101:student"}, tmp_path)
    assert "course_id" not in cfg.CourseDirectory and cfg.ExchangeFactory.submit == "gpuhub_nbgrader.ExchangeSubmit"
    student = _run_config("jupyter_server_config.py", {"GPUHUB_COURSES": "ml101:student"}, tmp_path)
    ext = student.ServerApp.jpserver_extensions.get_value({})
    assert ext == {"nbgrader.server_extensions.formgrader": False, "nbgrader.server_extensions.course_list": False}
    teacher = _run_config("jupyter_server_config.py", {"GPUHUB_COURSES": "ml101:instructor"}, tmp_path)
    ext = teacher.ServerApp.jpserver_extensions.get_value({})
    assert ext == {"nbgrader.server_extensions.course_list": False, "gpuhub_nbgrader": True}


# ---------------------------------------------------------------- apply_courses


def test_apply_courses_shared_password_loads_groups_and_extends_roles():
    s = site()
    c = Config()
    hubconfig.apply_services(c, s, FACTS)
    before = list(c.JupyterHub.load_roles)
    hubconfig.apply_courses(c, s, FACTS)
    assert c.JupyterHub.load_roles[: len(before)] == before
    names = [r["name"] for r in c.JupyterHub.load_roles]
    assert "gpuhub-course-ml101-instructors" in names and "gpuhub-quota" in names
    assert c.JupyterHub.load_groups["nbgrader-ml101"] == {"users": ["ann", "ben"]}
    assert "read:users:groups!user" in c.GpuhubSpawner.server_token_scopes
    assert "users:activity!user" in c.GpuhubSpawner.server_token_scopes


def test_apply_courses_oidc_adds_groups_at_login_and_lets_members_in():
    data = site_data()
    data["hub"]["auth"] = {
        "type": "oidc",
        "issuer": "https://sso.example.kr/realms/x",
        "client_id": "hub",
        "client_secret_env": "X",
    }
    s = parse_site(data, ROOT / "examples/site.yaml")
    c = Config()
    hubconfig.apply_auth(c, s, FACTS)
    hubconfig.apply_courses(c, s, FACTS)
    assert "load_groups" not in c.JupyterHub  # the authenticator manages groups
    cfg = c.GpuhubOIDCAuthenticator
    assert cfg.course_groups["users"]["ann"] == ["nbgrader-ml101"]
    assert cfg.course_groups["idp_groups"]["ml101-staff"] == ["formgrade-ml101"]
    assert {"prof", "ann", "dave", "alice"} <= cfg.allowed_users
    assert {"ml101-staff", "ml101-2026"} <= cfg.allowed_groups


def test_apply_courses_without_courses_sets_nothing():
    s = load_site(ROOT / "examples/site.yaml")
    s = parse_site({k: v for k, v in s.raw.items() if k != "courses"}, ROOT / "examples/site.yaml")
    c = Config()
    hubconfig.apply_courses(c, s, FACTS)
    assert c == Config()


def test_course_member_names_are_checked():
    with pytest.raises(courses.CourseConfigError, match=r"courses.ml101.students\[0\]: 'Ann Lee'"):
        hubconfig.apply_courses(Config(), site(ml101={"org": "ai-academy", "students": ["Ann Lee"]}), FACTS)


# ---------------------------------------------------------------- reports and CLI


def test_course_servers_reports_members_servers_for_the_course_org():
    s = site()
    status = {
        "period": "2026-11",
        "orgs": {
            "ai-academy": {
                "gpus_in_use": 2,
                "gpu_limit": 2,
                "used_gpu_hours": 3.5,
                "budget_gpu_hours": 60,
                "running_servers": [
                    {
                        "server_key": "ann/",
                        "user": "ann",
                        "gpus": 1,
                        "model": "H100",
                        "devices": ["GPU-1"],
                        "image": "python",
                        "started_at": "x",
                        "running_seconds": 60.0,
                    },
                    {
                        "server_key": "dave/",
                        "user": "dave",
                        "gpus": 1,
                        "model": "H100",
                        "devices": ["GPU-2"],
                        "image": "python",
                        "started_at": "x",
                        "running_seconds": 60.0,
                    },
                ],
            }
        },
    }
    rows = courses.members(s, "ml101", {"nbgrader-ml101": {"zoe"}})
    assert [(r["user"], r["role"], r["source"]) for r in rows] == [
        ("prof", "instructor", "site"),
        ("ann", "student", "site"),
        ("ben", "student", "site"),
        ("zoe", "student", "idp"),
    ]
    report = courses.course_servers(s, "ml101", status, rows)
    assert [x["user"] for x in report["servers"]] == ["ann"] and report["servers"][0]["role"] == "student"
    assert (report["course_gpus_in_use"], report["org_gpus_in_use"], report["org_gpu_limit"]) == (1, 2, 2)


def test_cli_course_list_and_members(tmp_path, capsys):
    data = site_data()
    data["hub"]["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["--site", str(path), "course", "list", "--format", "json"]) == 0
    rows = {r["course"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"ml101", "cs50"} and rows["ml101"]["students"] == ["ann", "ben"]
    assert cli.main(["--site", str(path), "course", "members", "ml101"]) == 0
    out = capsys.readouterr()
    assert "prof" in out.out and "instructor" in out.out and "site config's lists only" in out.err
    assert not (tmp_path / "state").exists()  # no empty hub database created
    assert cli.main(["--site", str(path), "course", "members", "nope"]) == 2
    assert "courses.nope: no such course" in capsys.readouterr().err
