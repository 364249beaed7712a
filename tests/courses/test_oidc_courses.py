"""Course membership from IdP groups, through a real OIDC login into the real hub config.

The authenticator manages groups (every login replaces the user's hub groups with the IdP's),
so the derived ``formgrade-``/``nbgrader-`` groups must be added at login, and leave with
the IdP group; the spawner then mounts the course for that member.
"""

from __future__ import annotations

import secrets

import pytest
import requests
import yaml

from tests.auth.hubproc import idp_login
from tests.harness import HubProcess, default_site
from tests.oidc_provider.harness import OIDCProvider, ProviderError, proxy_command
from tests.procs import module_failed

pytestmark = pytest.mark.docker

SECRET_ENV = "GPUHUB_TEST_COURSES_OIDC_SECRET"


@pytest.fixture(scope="module")
def oidc_hub(tmp_path_factory, docker_client, request):
    tmp = tmp_path_factory.mktemp("oidc-courses")
    (tmp / "hub").mkdir()
    hub = HubProcess(tmp / "hub")
    try:
        proxy_command()
        provider = OIDCProvider(tmp / "idp", redirect_uris=[f"{hub.url}/hub/oauth_callback"])
        provider.start()
    except ProviderError as e:
        pytest.fail(str(e), pytrace=False)
    site = default_site(hub.instance, hub.port, hub.state)
    site["hub"].update(instance=hub.instance, bind_url=hub.url)
    site["hub"]["auth"] = {
        "type": "oidc",
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "client_secret_env": SECRET_ENV,
        "groups_claim": "groups",
    }
    site["organizations"]["ai-academy"] = {"gpu_limit": 1, "gpu_hours_per_month": 10}
    site["courses"] = {
        "ml101": {
            "org": "ai-academy",
            "instructors": ["prof"],
            "students_idp_groups": ["ml101-2026"],
            "instructors_idp_groups": ["ml101-staff"],
        }
    }
    hub.site = site
    hub.site_path.write_text(yaml.safe_dump(site))
    env = hub.env()
    env.update({SECRET_ENV: provider.client_secret, "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32)})
    hub.env = lambda: env
    try:
        hub.start()
        yield hub, provider
    finally:
        if module_failed(request):  # a module fixture's node never has rep_call
            print(hub.dump_logs(), provider.logs())
        hub.cleanup()
        provider.stop()


def groups_of(hub, name):
    return set(hub.api("GET", f"/users/{name}").json()["groups"])


def test_idp_group_makes_a_course_member_and_leaving_it_ends_membership(oidc_hub):
    hub, idp = oidc_hub
    idp.set_account("zoe", groups=["ml101-2026", "reading-club"])
    r = idp_login(requests.Session(), hub.url, "zoe", idp.accounts["zoe"]["password"])
    assert r.status_code == 302, r.text[:500]
    assert groups_of(hub, "zoe") == {"ml101-2026", "reading-club", "nbgrader-ml101"}
    # the member may spawn for the course's org (auto-picked: it is zoe's only org), with the exchange mounted
    r = hub.spawn("zoe", {"image": "python"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("zoe")
    (container,) = hub.containers(user="zoe")
    assert container.labels["gpuhub.org"] == "ai-academy"
    mounts = {m["Destination"] for m in container.attrs["Mounts"]}
    assert "/srv/nbgrader/exchange/ml101" in mounts and "/home/jovyan/ml101" not in mounts
    hub.stop_server("zoe")
    # an IdP group of the instructors wins over the students' one
    idp.update_claims("zoe", groups=["ml101-2026", "ml101-staff"])
    idp_login(requests.Session(), hub.url, "zoe", idp.accounts["zoe"]["password"])
    assert groups_of(hub, "zoe") == {"ml101-2026", "ml101-staff", "formgrade-ml101"}
    # leaving the IdP groups leaves the course (and the login is refused: no org any more)
    idp.update_claims("zoe", groups=["reading-club"])
    r = idp_login(requests.Session(), hub.url, "zoe", idp.accounts["zoe"]["password"])
    assert r.status_code == 403, r.status_code
    assert groups_of(hub, "zoe") == {"reading-club"}


def test_listed_instructor_keeps_the_course_group_across_logins(oidc_hub):
    hub, idp = oidc_hub
    idp.set_account("prof", groups=[])
    for _ in range(2):
        r = idp_login(requests.Session(), hub.url, "prof", idp.accounts["prof"]["password"])
        assert r.status_code == 302, r.text[:500]
        assert groups_of(hub, "prof") == {"formgrade-ml101"}
