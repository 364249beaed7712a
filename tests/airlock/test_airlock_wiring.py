"""The airlock's registration in the hub config (gpuhub/hub/hubconfig.py): only on a site with projects, reachable
from servers (the user network's gateway), the hub's OAuth without a consent page, every user's and every server's
token may reach it (the service decides by the caller's role in the project), and nbgrader's server scopes keep it."""

from __future__ import annotations

import dataclasses

from traitlets.config import Config

from gpuhub.hub import courses, hubconfig
from tests.courses.test_courses import site as course_site

FACTS = hubconfig.HubFacts("172.30.0.1", "u", None, None, None, "qst", "00" * 32, "hmt", "chp")
ACCESS = "access:services!service=gpuhub-airlock"


def test_registered_only_with_projects_on_the_gateway(site):
    for the_site, expected in ((site, True), (dataclasses.replace(site, projects={}), False)):
        c = Config()
        hubconfig.apply_services(c, the_site, FACTS)
        services = {s["name"]: s for s in c.JupyterHub.services}
        assert ("gpuhub-airlock" in services) is expected
    airlock = services_of(site)["gpuhub-airlock"]
    assert airlock["url"] == f"http://172.30.0.1:{site.hub.airlock_service_port}" and site.hub.airlock_service_port
    assert airlock["command"][-2:] == ["-m", "gpuhub.hub.airlock_service"] and airlock["oauth_no_confirm"] is True
    assert airlock["environment"]["GPUHUB_SITE_CONFIG"] == str(site.path)


def test_users_and_servers_may_reach_it(site):
    c = Config()
    hubconfig.apply_services(c, site, FACTS)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["user"]["scopes"] == ["self", ACCESS]
    assert ACCESS in c.GpuhubSpawner.server_token_scopes
    assert "access:servers!server" in c.GpuhubSpawner.server_token_scopes  # JupyterHub's own server role kept


def test_course_server_scopes_keep_the_airlock(site):
    with_courses = dataclasses.replace(course_site(), projects=site.projects)
    c = Config()
    hubconfig.apply_services(c, with_courses, FACTS)
    hubconfig.apply_courses(c, with_courses, FACTS)
    scopes = c.GpuhubSpawner.server_token_scopes
    assert ACCESS in scopes and set(courses.SERVER_TOKEN_SCOPES) <= set(scopes)


def services_of(site) -> dict:
    c = Config()
    hubconfig.apply_services(c, site, FACTS)
    return {s["name"]: s for s in c.JupyterHub.services}
