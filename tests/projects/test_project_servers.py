"""Project servers through the real hub (issue 13, items 2-5): real JupyterHub, CHP, the download filter (nginx),
real Docker, the host firewall. Every probe aims at this machine only (tests/projects/netkit.py): listeners the
test opens on each Docker bridge gateway, containers of this hub, and a network namespace standing in for the
outside. Each probe and its result is printed (``-s`` shows them).

One hub for the module; the tests run in order and build on each other (servers started in one are probed in
the next), as a member's day would: refused requests, the DUA accepted, the project server started next to an
ordinary one, the room probed from inside, a notebook used through the public URL, the server stopped, the
project's close (warned, then stopped after the operator closes it), and the audit log verified.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml
from traitlets.config import Config

from gpuhub.core.site import load_site
from gpuhub.host import project_network as pn
from gpuhub.host.project_proxy import ProxyPaths
from gpuhub.hub import hubconfig
from gpuhub.hub.options import options_from_form, parse_options, project_option
from gpuhub.hub.project_pages import project_context, project_notices
from gpuhub.hub.projects import container_plan, lab_page_config, operator_host
from quota import projects as qp
from quota.audit import AuditLog
from quota.enforcer import ProjectServer, expiry_plan
from quota.policy import Refusal
from tests.harness import execute, login
from tests.procs import cleaned_up
from tests.projects.netkit import OUTSIDE_IP, FakeDns, Listener, Outside, probe
from tests.projects.serverkit import (
    bridge_gateways,
    cleanup_projects,
    dua_sha,
    gpuhub_cli,
    make_hub,
    project_site,
    today_in,
)

pytestmark = pytest.mark.docker
TAG = uuid.uuid4().hex[:6]
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def room(request, tmp_path_factory, docker_client):
    today = today_in()
    tmp = tmp_path_factory.mktemp("project-hub")
    closing = dict(members=["bob"], starts=today - timedelta(days=1), expires=today, expiry_notice_minutes=2880)
    hub, keys = make_hub(tmp, TAG, closing=closing)
    try:
        with cleaned_up(request, hub):
            hub.start()
            yield {"hub": hub, "keys": keys}
    finally:
        cleanup_projects(hub, keys)


def audit_rows(hub, action: str | None = None, project: str | None = None) -> list:
    log = AuditLog.from_url(load_site(hub.site_path).hub.database_url, migrate=False)
    try:
        return [r for r in log.rows() if (action is None or r.action == action) and (project in (None, r.project))]
    finally:
        log.engine.dispose()


def wait_for(what, fn, timeout: float = 30, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what} not seen within {timeout} s")


def spawn_timed(hub, name: str, user: str, options: dict, server: str = "") -> float:
    t0 = time.monotonic()
    r = hub.spawn(user, options, server=server)
    assert r.status_code in (201, 202), (r.status_code, r.text[:500], hub.log_lines(user))
    hub.wait_ready(user, server, timeout=120)
    TIMES[name] = time.monotonic() - t0
    print(f"start time {name}: {TIMES[name]:.2f} s")
    return TIMES[name]


def one(hub, **labels):
    (c,) = hub.containers(**labels)
    c.reload()
    return c


def ip_of(c) -> str:
    return next(iter(c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]


def ok(result: str) -> bool:
    return result.startswith("ok ")


# ------------------------------------------------------------------ the pure parts (no hub)


@pytest.fixture
def site(tmp_path):
    data, keys = project_site(
        "gpuhubunit",
        tmp_path,
        "u1",
        closing=dict(
            members=["bob"], starts=today_in() - timedelta(days=1), expires=today_in(), expiry_notice_minutes=30
        ),
    )
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(data))
    return load_site(tmp_path / "site.yaml"), keys  # fmt: skip


def test_the_options_contract_for_projects():
    assert project_option({"image": "python"}) == (None, None)
    assert project_option({"project": "p1", "accept_dua": "AB" * 32}) == ("p1", "ab" * 32)
    for bad, rule in (
        ({"project": 3}, "project-unknown"),
        ({"project": "p1", "accept_dua": "nope"}, "project-dua-mismatch"),
        ({"project": "p1", "accept_dua": 7}, "project-dua-mismatch"),
    ):
        with pytest.raises(Refusal) as e:
            project_option(bad)
        assert (e.value.rule, e.value.status) == (rule, 400), bad
    assert parse_options({"project": "p1"}, user="alice", server_name="p1").project == "p1"
    form = {"project": ["p1"], "accept_dua": ["a" * 64], "org": ["gist-ai"], "image": ["python"], "gpus": ["0"]}
    assert options_from_form(form) == {"image": "python", "gpus": "0", "project": "p1", "accept_dua": "a" * 64}


def test_the_plan_mounts_the_room_and_nothing_else(site):
    site, keys = site
    project = site.projects[keys["main"]]
    net = pn.ProjectNetwork(keys["main"], "gpuhub-project-x", "br-x", "10.9.0.1", "10.9.0.0/24")
    plan = container_plan(project, net, instance="gh", uid=20001, hub=pn.HubPath("10.8.0.1", 8081),
                          notebook_dir="/home/jovyan", lab_config_dir=Path("/state/lab"),
                          route_prefix=f"/user/alice/{keys['main']}/")  # fmt: skip
    cohort = str(project.datasets["cohort"].source)
    assert plan.binds == {
        f"gh-project-{keys['main']}-user-20001": {"bind": "/home/jovyan", "mode": "rw"},
        "/state/lab": {"bind": "/srv/gpuhub/project-config", "mode": "ro"},
        cohort: {"bind": "/data/cohort", "mode": "ro"},
        "gpuhubunit-ds-imaging": {"bind": "/data/imaging", "mode": "ro"},
    }
    assert plan.env == {"GPUHUB_PROJECT": keys["main"], "JUPYTER_CONFIG_PATH": "/srv/gpuhub/project-config"}
    assert plan.host == {"dns": ["10.9.0.1"], "dns_opt": ["timeout:1", "attempts:2"]}
    assert plan.hub_connect_url == "http://10.9.0.1:8081" and plan.labels == {"gpuhub.project": keys["main"]}
    assert lab_page_config() == {"disabledExtensions": {
        "@jupyterlab/docmanager-extension:download": True, "@jupyterlab/filebrowser-extension:download": True,
        "@jupyterlab/filebrowser-extension:open-browser-tab": True, "@jupyterlab/notebook-extension:export": True,
    }}  # fmt: skip
    assert operator_host(plan, {"links": {}}, {"binds": {"/x": {}}, "shm_size": "1g", "dns": ["8.8.8.8"]}) == {
        "shm_size": "1g"
    }


def test_the_picker_and_the_notices(site):
    site, keys = site
    now = datetime.now(UTC)
    ctx = project_context(site, "alice", frozenset(), keys["main"], {}, {keys["main"]: dua_sha()}, now)
    assert sorted(p["key"] for p in ctx["projects"]) == sorted([keys["main"], keys["future"], keys["closed"]])
    assert ctx["project"]["key"] == keys["main"] and ctx["project"]["accepted"] is True
    assert project_context(site, "carol", frozenset(), "", {}, {}, now)["project"] is None
    removed = {keys["main"]: qp.Membership(removed=frozenset({"alice"}))}
    assert keys["main"] not in [p["key"] for p in project_context(site, "alice", frozenset(), "", removed, {}, now)
                                ["projects"]]  # fmt: skip
    closing = site.projects[keys["closing"]].closes_at(site.tz)
    assert project_notices(site, "bob", frozenset(), {}, closing - timedelta(minutes=40)) == []
    (n,) = project_notices(site, "bob", frozenset(), {}, closing - timedelta(minutes=10))
    assert n["level"] == "closing" and "in 10 min: its servers will be stopped then" in n["message"]
    (n,) = project_notices(site, "bob", frozenset(), {}, closing + timedelta(hours=1))
    assert n["level"] == "closed" and "A steward (dana) can extend it" in n["message"]
    later = {keys["closing"]: qp.Membership(expires_override=today_in() + timedelta(days=5))}
    assert project_notices(site, "bob", frozenset(), later, closing + timedelta(hours=1)) == []


def test_the_expiry_plan_warns_once_and_stops_until_gone(site):
    site, keys = site
    s = ProjectServer(keys["closing"], "bob", keys["closing"], "c1")
    closes = site.projects[keys["closing"]].closes_at(site.tz)
    assert expiry_plan(site, [s], {}, closes - timedelta(minutes=31), set()) == []
    ((action, _, detail, new),) = expiry_plan(site, [s], {}, closes - timedelta(minutes=29), set())
    assert (action, new, detail["closes_at"]) == ("project.expiry-warned", True, closes.isoformat())
    done = {("project.expiry-warned", s.project, "bob", s.server, closes.isoformat())}
    assert expiry_plan(site, [s], {}, closes - timedelta(minutes=1), done) == []
    ((action, _, _, new),) = expiry_plan(site, [s], {}, closes, done)
    assert (action, new) == ("project.expired", True)
    done.add(("project.expired", s.project, "bob", s.server, closes.isoformat()))
    assert [(a, n) for a, _, _, n in expiry_plan(site, [s], {}, closes, done)] == [("project.expired", False)]


def test_the_download_filter_service_runs_only_on_a_site_with_projects(site):
    site, _ = site
    facts = hubconfig.HubFacts("172.30.0.1", "u", None, None, None, "qst", "00" * 32, "hmt", "chp")
    for the_site, expected in ((site, True), (dataclasses.replace(site, projects={}), False)):
        c = Config()
        hubconfig.apply_services(c, the_site, facts)
        services = {s["name"]: s for s in c.JupyterHub.services}
        assert ("gpuhub-project-proxy" in services) is expected
    proxy = {s["name"]: s for s in _services(site, facts)}["gpuhub-project-proxy"]
    assert proxy["command"][-3:] == ["gpuhub", "service", "project-proxy"] and "api_token" not in proxy
    assert proxy["environment"]["GPUHUB_SITE_CONFIG"] == str(site.path)


def _services(site, facts) -> list[dict]:
    c = Config()
    hubconfig.apply_services(c, site, facts)
    return c.JupyterHub.services


# ------------------------------------------------------------------ refusals: no container, no network


def refusal_cases(keys, today):
    main, future, closed = keys["main"], keys["future"], keys["closed"]
    sha = dua_sha()
    return [
        ("non-member", "carol", main, {"project": main, "accept_dua": sha}, 403, "project-not-member",
         f"carol is not a member of project {main}; ask a steward of project {main} (dana) to add you"),
        ("before-start", "alice", future, {"project": future, "accept_dua": sha}, 403, "project-not-started",
         f"project {future} is not open yet: the project opens on {(today + timedelta(days=10)).isoformat()} "
         "(Asia/Seoul); try again then"),
        ("expired", "alice", closed, {"project": closed, "accept_dua": sha}, 403, "project-expired",
         f"project {closed} closed on {today.isoformat()} (Asia/Seoul; its last open day was "
         f"{(today - timedelta(days=1)).isoformat()}); a steward can extend it with `gpuhub project extend {closed}"),
        ("no-DUA", "bob", main, {"project": main}, 403, "project-dua-required",
         f"bob has not accepted the current data use agreement of project {main}; accept the data use agreement "
         f"in the spawn form (or send 'accept_dua': its sha256 {sha})"),
        ("stale-DUA", "bob", main, {"project": main, "accept_dua": "0" * 64}, 400, "project-dua-mismatch",
         f"'accept_dua' is not the hash of project {main}'s current data use agreement"),
        ("wrong-server-name", "alice", "work", {"project": main, "accept_dua": sha}, 400, "project-server-name",
         f"a server of project {main} must be the named server '{main}', not 'work'"),
        ("other-org", "bob", main, {"project": main, "accept_dua": sha, "org": "cnuh-radiology"}, 400,
         "project-org-mismatch", f"project {main} is charged to organization gist-ai, not cnuh-radiology"),
    ]  # fmt: skip


def test_refused_requests_name_their_rule_and_make_nothing(room):
    hub, keys = room["hub"], room["keys"]
    for name, user, server, options, status, rule, message in refusal_cases(keys, today_in()):
        r = hub.spawn(user, options, server=server)
        got = r.json().get("message", "") if r.headers.get("content-type", "").startswith("application/json") else ""
        print(f"refusal {name}: {user} -> {server}: {r.status_code} {r.headers.get('X-Gpuhub-Rule')} {got!r}")
        assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (status, rule), (name, r.status_code, r.text[:400])
        assert message in got, (name, got)
        assert hub.containers(all=True, user=user) == [], name
        assert hub.api("GET", f"/users/{user}").json()["servers"] == {}, name
    made = {n.name for n in hub.docker.networks.list() if n.name.startswith("gpuhub-project-h3")}
    assert not made & {f"gpuhub-project-{keys[k]}" for k in ("future", "closed")}, made
    assert audit_rows(hub, "dua.accepted") == []  # a refused request records no acceptance


# ------------------------------------------------------------------ the project server next to an ordinary one


def test_a_member_starts_a_project_server_in_its_room(room):
    hub, keys = room["hub"], room["keys"]
    main = keys["main"]
    spawn_timed(hub, "ordinary (cold)", "alice", {"image": "python"})
    spawn_timed(hub, "project (cold: network, firewall, home)", "alice", {"project": main, "accept_dua": dua_sha()},
                server=main)  # fmt: skip
    spawn_timed(hub, "other project (carol)", "carol", {"project": keys["other"], "accept_dua": dua_sha("Other DUA.")},
                server=keys["other"])  # fmt: skip
    c = one(hub, user="alice", server=main)
    assert c.labels["gpuhub.project"] == main and c.labels["gpuhub.org"] == "gist-ai"
    assert list(c.attrs["NetworkSettings"]["Networks"]) == [f"gpuhub-project-{main}"]
    host = c.attrs["HostConfig"]
    gateway = hub.docker.networks.get(f"gpuhub-project-{main}").attrs["IPAM"]["Config"][0]["Gateway"]
    assert host["Dns"] == [gateway] and host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"] is True
    mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
    uid = c.attrs["Config"]["User"].split(":")[0]
    assert mounts["/home/jovyan"]["Name"] == f"{hub.instance}-project-{main}-user-{uid}"
    assert mounts["/data/cohort"]["RW"] is False and mounts["/data/cohort"]["Type"] == "bind"
    assert mounts["/data/imaging"]["RW"] is False and mounts["/data/imaging"]["Name"] == f"{hub.instance}-ds-imaging"
    assert mounts["/srv/gpuhub/project-config"]["RW"] is False
    assert set(mounts) == {"/home/jovyan", "/data/cohort", "/data/imaging", "/srv/gpuhub/project-config"}
    env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
    assert env["GPUHUB_PROJECT"] == main and env["JUPYTER_CONFIG_PATH"] == "/srv/gpuhub/project-config"
    assert env["JUPYTERHUB_API_URL"].startswith(f"http://{gateway}:")  # the door: the DNAT on its own gateway
    # JupyterHub's proxy sends the server's prefix to the download filter only; only the filter knows the server
    routes = hub.api("GET", "/proxy").json()
    port = load_site(hub.site_path).hub.project_proxy_port
    assert routes[f"/user/alice/{main}/"]["target"] == f"http://127.0.0.1:{port}"
    assert routes["/user/alice/"]["target"].startswith("http://") and str(port) not in routes["/user/alice/"]["target"]
    filt = json.loads(ProxyPaths.for_state_dir(hub.state).routes.read_text())["routes"]
    assert filt[f"/user/alice/{main}/"]["target"] == f"http://{ip_of(c)}:8888"
    assert filt[f"/user/alice/{main}/"]["max_response_bytes"] == 5 * 1024 * 1024
    print("timings:", {k: round(v, 2) for k, v in TIMES.items()})
    acc = audit_rows(hub, "dua.accepted", main)
    assert [(r.account, r.target) for r in acc][:1] and acc[0].account == "alice", acc
    started = audit_rows(hub, "server.started", main)
    assert started and started[-1].detail["datasets"] == {
        "cohort": str(load_site(hub.site_path).projects[main].datasets["cohort"].source),
        "imaging": f"{hub.instance}-ds-imaging",
    }
    assert sorted(r.target for r in audit_rows(hub, "dataset.mounted", main)) == ["cohort", "imaging"]


def _section(page: str, key: str) -> str:
    start = page.index(f'data-project="{key}"')
    end = page.find('<section class="card mb-4 gpuhub-project"', start)
    return page[start : end if end > 0 else len(page)]


def test_the_steward_sees_members_acceptances_servers_and_the_log(room):
    """Issue 13 item 6: dana stewards the rooms (and is in none); a member is refused the page."""
    hub, keys = room["hub"], room["keys"]
    main = keys["main"]
    r = login(hub, "dana").get(f"{hub.url}/hub/projects", timeout=30)
    assert r.status_code == 200, r.text[:500]
    page = _section(r.text, main)
    assert re.search(r'data-state="open"', page), page[:800]
    alice = re.search(r'<tr data-user="alice" data-dua="accepted">(.*?)</tr>', page, re.S)
    assert alice and "running since" in alice.group(1), page[:3000]
    assert 'data-user="bob" data-dua="not accepted"' in page  # listed, never started, never accepted
    for action in ("dua.accepted", "server.started", "dataset.mounted"):
        assert f'data-action="{action}"' in page, action
    assert f'data-project="{keys["other"]}"' in r.text  # dana stewards the other room too; carol's server runs there
    assert 'data-user="carol" data-dua="accepted"' in _section(r.text, keys["other"])
    refused = login(hub, "alice").get(f"{hub.url}/hub/projects", timeout=30)
    assert refused.status_code == 403 and "you steward no project" in refused.text, refused.text[:500]
    assert "bob" not in refused.text


# ------------------------------------------------------------------ the room from inside


@pytest.fixture(scope="module")
def probes(room):
    """Listeners on every bridge gateway, a resolver stand-in on the project gateway, the outside stand-in."""
    hub, keys = room["hub"], room["keys"]
    gateways = bridge_gateways(hub.docker)
    listeners = []
    outside = Outside(TAG)
    gw = hub.docker.networks.get(f"gpuhub-project-{keys['main']}").attrs["IPAM"]["Config"][0]["Gateway"]
    try:
        for ip in sorted(set(gateways.values())):
            listeners += [Listener("tcp", ip).start(), Listener("udp", ip).start()]
        dns = FakeDns("udp", gw, 53, banner="dns").start()
        outside.up(tcp_port=18080, udp_port=18081)
        yield {"gateways": gateways, "listeners": listeners, "dns": dns, "project_gw": gw}
        dns.close()
    finally:
        outside.down()
        for lst in listeners:
            lst.close()


def show(who: str, got: dict[str, str]) -> None:
    for target, result in got.items():
        print(f"probe from {who}: {target} -> {result}")


def test_nothing_answers_a_project_server_but_the_hub(room, probes):
    hub, keys = room["hub"], room["keys"]
    proj, ordinary = one(hub, user="alice", server=keys["main"]), one(hub, user="alice", server="")
    other = one(hub, user="carol", server=keys["other"])
    host = [(lst.kind, lst.ip, lst.port) for lst in probes["listeners"]]
    peers = [("tcp", ip_of(other), 8888), ("tcp", ip_of(ordinary), 8888), ("udp", ip_of(other), 8888)]
    outside = [("tcp", OUTSIDE_IP, 18080), ("udp", OUTSIDE_IP, 18081)]
    got = probe(proj, host + peers + outside + [("dns", "example.com", 0), ("dns", "example.org", 0)])
    show("project server", got)
    assert not [k for k, v in got.items() if ok(v)], "a project server reached something"
    subnet = ipaddress.ip_network(hub.docker.networks.get(f"gpuhub-project-{keys['main']}").attrs["IPAM"]["Config"][0]
                                  ["Subnet"])  # fmt: skip
    for lst in [*probes["listeners"], probes["dns"]]:
        assert not [s for s in lst.seen if ipaddress.ip_address(s) in subnet], (lst.kind, lst.ip, lst.seen)
    routes = proj.exec_run(["cat", "/proc/net/route"]).output.decode()
    print("project server routing table:\n" + routes)
    assert not [line for line in routes.splitlines()[1:] if line.split()[1] == "00000000"], "a default route is left"
    # the ordinary server behaves as today: it reaches the outside stand-in, not the project server
    got = probe(ordinary, outside + [("tcp", ip_of(proj), 8888)])
    show("ordinary server", got)
    assert got == {
        f"tcp {OUTSIDE_IP}:18080": "ok outside-tcp",
        f"udp {OUTSIDE_IP}:18081": "ok outside-udp",
        f"tcp {ip_of(proj)}:8888": got[f"tcp {ip_of(proj)}:8888"],
    } and not ok(got[f"tcp {ip_of(proj)}:8888"])


def test_datasets_are_read_only_and_homes_apart(room):
    hub, keys = room["hub"], room["keys"]
    proj, ordinary = one(hub, user="alice", server=keys["main"]), one(hub, user="alice", server="")
    code = (
        "import errno\n"
        "for p in ('/data/cohort/cohort.csv', '/data/cohort/new.csv', '/data/imaging/index.txt', '/data/imaging/x'):\n"
        "    try:\n"
        "        open(p, 'a').write('x'); print(p, 'written')\n"
        "    except OSError as e:\n"
        "        print(p, errno.errorcode[e.errno])\n"
        "print(open('/data/cohort/cohort.csv').read().splitlines()[1])\n"
    )
    out = proj.exec_run(["python3", "-c", code]).output.decode()
    print("dataset writes from the project server:\n" + out)
    assert out.splitlines() == [
        "/data/cohort/cohort.csv EROFS",
        "/data/cohort/new.csv EROFS",
        "/data/imaging/index.txt EROFS",
        "/data/imaging/x EROFS",
        "p-001,54,I21",
    ]
    assert proj.exec_run(["sh", "-c", "echo project > ~/in-project.txt"]).exit_code == 0
    assert ordinary.exec_run(["sh", "-c", "echo ordinary > ~/in-ordinary.txt"]).exit_code == 0
    seen = {
        who: c.exec_run(["sh", "-c", "ls -a ~; ls /data 2>&1 | head -3"]).output.decode().split()
        for who, c in (("project", proj), ("ordinary", ordinary))
    }
    print("homes:", seen)
    assert "in-project.txt" in seen["project"] and "in-ordinary.txt" not in seen["project"]
    assert "in-ordinary.txt" in seen["ordinary"] and "in-project.txt" not in seen["ordinary"]
    assert "cohort" not in seen["ordinary"]  # no /data in an ordinary server
    ordinary_vols = {m.get("Name") for m in ordinary.attrs["Mounts"]}
    assert not [v for v in ordinary_vols if v and "-project-" in v], ordinary_vols
    project_vols = {m.get("Name") for m in proj.attrs["Mounts"]}
    assert f"{hub.instance}-home-alice" not in project_vols and f"{hub.instance}-home-alice" in ordinary_vols


# ------------------------------------------------------------------ through the public URL (CHP + nginx)


NOTEBOOK = {
    "cells": [{"cell_type": "code", "source": "print(1)", "metadata": {}, "outputs": [], "execution_count": None}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def test_a_notebook_runs_and_saves_while_downloads_are_blocked_and_audited(room):
    hub, keys = room["hub"], room["keys"]
    main = keys["main"]
    prefix = f"{hub.url}/user/alice/{main}/"
    token = hub.user_token("alice")
    h = {"Authorization": f"token {token}"}
    code = (
        "import csv, shutil\n"
        "rows = list(csv.DictReader(open('/data/cohort/cohort.csv')))\n"
        "print(len(rows), rows[0]['diagnosis'])\n"
        "shutil.copy('/data/cohort/cohort.csv', 'cohort.csv'); shutil.copy('/data/cohort/big.txt', 'big.txt')\n"
    )
    out = execute(prefix, token, code, username="alice", strict=True, timeout=60)
    print("cell through the public URL:", out.strip())
    assert out.strip() == "3 I21"
    r = requests.put(f"{prefix}api/contents/analysis.ipynb", headers=h, json={"type": "notebook", "content": NOTEBOOK})
    print("save analysis.ipynb:", r.status_code)
    assert r.status_code in (200, 201), r.text[:300]
    r = requests.get(f"{prefix}api/contents/analysis.ipynb", headers=h, timeout=30)
    assert r.status_code == 200 and r.json()["content"]["cells"][0]["source"] == "print(1)"
    r = requests.get(f"{prefix}api/contents/cohort.csv?type=file&format=text", headers=h, timeout=30)
    print("text read of cohort.csv:", r.status_code)
    assert r.status_code == 200 and "p-001" in r.json()["content"]
    blocked = [
        "files/cohort.csv",
        "files/analysis.ipynb?download=1",
        "nbconvert/html/analysis.ipynb?download=true",
        "view/cohort.csv",
        "api/contents/cohort.csv?type=file&format=base64",
        "api/contents/big.txt?type=file&format=text",
    ]
    for path in blocked:
        r = requests.get(prefix + path, headers=h, timeout=30)
        print(f"GET {path} -> {r.status_code} {len(r.content)} bytes")
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert b"p-001" not in r.content and b"xxxxxxxxxx" not in r.content

    def audited():
        rows = audit_rows(hub, "request.blocked", main)
        text = [json.dumps([r.account, r.target, r.detail]) for r in rows]
        return rows if all(any(p.split("?")[0] in t for t in text) for p in blocked) else None

    rows = wait_for("request.blocked rows for each blocked path", audited, timeout=30)
    for r in rows:
        print("audit", r.id, r.action, r.account, r.source, r.target, r.detail)
    assert {r.account for r in rows} == {"alice"}


# ------------------------------------------------------------------ stop, start again, the project's close


def test_stop_takes_the_server_out_of_the_filter_and_a_second_start_is_warm(room):
    hub, keys = room["hub"], room["keys"]
    main = keys["main"]
    hub.stop_server("alice", main)
    filt = json.loads(ProxyPaths.for_state_dir(hub.state).routes.read_text())["routes"]
    assert f"/user/alice/{main}/" not in filt
    stopped = audit_rows(hub, "server.stopped", main)
    assert stopped and stopped[-1].target == "alice" and stopped[-1].detail["reason"] == "stopped"
    spawn_timed(hub, "project (warm: network and home exist)", "alice", {"project": main}, server=main)
    assert len(audit_rows(hub, "dua.accepted", main)) == 1  # accepted once, for this text
    pairs = []
    for i in range(3):  # warm starts, alternating, same hub and load: the project's extra steps vs an ordinary start
        hub.stop_server("alice", "")
        ordinary = spawn_timed(hub, f"ordinary (warm {i + 1})", "alice", {"image": "python"})
        hub.stop_server("alice", main)
        project = spawn_timed(hub, f"project (warm {i + 1})", "alice", {"project": main}, server=main)
        pairs.append((ordinary, project))
    med = sorted(pairs, key=lambda p: p[1] - p[0])[1]
    print("warm start pairs (ordinary, project):", [(round(a, 2), round(b, 2)) for a, b in pairs],
          f"median difference {med[1] - med[0]:+.2f} s")  # fmt: skip
    assert med[1] - med[0] < 10, pairs  # the network, firewall and route steps cost seconds at most, never a spawn


def test_a_closing_project_warns_its_running_servers(room):
    hub, keys = room["hub"], room["keys"]
    closing = keys["closing"]
    spawn_timed(hub, "closing project (bob)", "bob", {"project": closing, "accept_dua": dua_sha()}, server=closing)
    rows = wait_for("project.expiry-warned", lambda: audit_rows(hub, "project.expiry-warned", closing), timeout=30)
    print("audit", [(r.action, r.target, r.detail) for r in rows])
    assert [r.target for r in rows] == ["bob"]
    home = login(hub, "bob").get(f"{hub.url}/hub/home", timeout=30).text
    assert f'data-gpuhub-project="{closing}" data-gpuhub-level="closing"' in home
    assert "its servers will be stopped then. Save your work now." in home
    time.sleep(3)  # another enforcer round: warned once
    assert len(audit_rows(hub, "project.expiry-warned", closing)) == 1


def test_a_closed_project_stops_its_servers_refuses_new_ones_and_says_why(room):
    """The operator closes the project (expires set to yesterday) and restarts the hub: the enforcer stops the
    running server, audits project.expired, new starts are refused and the home page says why."""
    hub, keys = room["hub"], room["keys"]
    main = keys["main"]
    assert hub.containers(user="alice", server=main)
    yesterday = today_in() - timedelta(days=1)
    hub.site["projects"][main].update(starts=yesterday.isoformat(), expires=yesterday.isoformat())
    hub.stop()
    hub.site_path.write_text(yaml.safe_dump(hub.site))
    hub.start()
    hub.wait_containers_gone(timeout=60, user="alice", server=main)
    rows = wait_for("project.expired", lambda: audit_rows(hub, "project.expired", main), timeout=30)
    print("audit", [(r.action, r.account, r.target, r.detail) for r in rows])
    assert [r.target for r in rows] == ["alice"]
    r = hub.spawn("alice", {"project": main}, server=main)
    print("start after the close:", r.status_code, r.headers.get("X-Gpuhub-Rule"), r.json().get("message"))
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (403, "project-expired")
    home = login(hub, "alice").get(f"{hub.url}/hub/home", timeout=30).text
    assert f'data-gpuhub-project="{main}" data-gpuhub-level="closed"' in home
    assert "its servers were stopped then and new ones are refused (rule project-expired)" in home
    assert one(hub, user="alice", server="")  # the ordinary server is untouched
    # another project's server came through the hub restart and still answers through CHP and the filter
    # (the hub routes it again once its start-up check through the filter answers, a few seconds after the start)
    route = f"/user/carol/{keys['other']}/"
    wait_for("carol's route after the restart", lambda: route in hub.api("GET", "/proxy").json(), timeout=60)
    code = "print(sum(r.split()[1] == '00000000' for r in open('/proc/net/route').readlines()[1:]))"
    out = hub.run_code("carol", code, server=keys["other"])
    print("carol's project server after the hub restart:", out.strip())
    assert out.strip() == "0"  # reachable, and still without a default route


def test_the_audit_log_verifies(room):
    hub = room["hub"]
    r = gpuhub_cli(hub, "audit", "verify")
    print("gpuhub audit verify:", r.returncode, r.stdout.strip(), r.stderr.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    actions = {row.action for row in audit_rows(hub)}
    assert {"dua.accepted", "server.started", "dataset.mounted", "request.blocked", "server.stopped",
            "project.expiry-warned", "project.expired"} <= actions, actions  # fmt: skip
    print("timings:", {k: round(v, 2) for k, v in TIMES.items()})
