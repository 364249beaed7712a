"""``gpuhub-export`` from inside a real project server, through the real hub: the server's own token, its closed
network's second door (the project gateway's airlock port, DNATed to gpuhub-airlock on the user network's gateway),
the real service copying the file from the project home volume. What the researcher reads in the terminal and what
a steward then sees in the service (the file's real sha256) are both checked; so is the Lab entry in the same
server, through the hub's proxy and the download filter, in a real Chromium.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid

import pytest
import requests

from gpuhub.host import project_network as pn
from tests.airlock.test_export_client import CSV
from tests.browser.kit import browser, fresh_shots  # noqa: F401 - the browser fixture
from tests.harness import ROOT, HubProcess
from tests.procs import cleaned_up, free_port
from tests.projects.serverkit import cleanup_projects, dua_sha, fill_volume, project_site

pytestmark = pytest.mark.docker
TAG = uuid.uuid4().hex[:6]
PREFIX = "/services/gpuhub-airlock/"
ARTIFACTS = ROOT / "tests" / "artifacts" / "airlock" / "hub"  # its own folder: fresh_shots empties it


@pytest.fixture(scope="module")
def room(request, tmp_path_factory, docker_client):
    tmp = tmp_path_factory.mktemp("airlock-export-hub")
    instance = f"gpuhubtest{uuid.uuid4().hex[:6]}"
    site, keys = project_site(instance, tmp, TAG)
    site["hub"]["airlock_service_port"] = free_port()
    site["airlock"] = {"quarantine_dir": str(tmp / "quarantine")}
    hub = HubProcess(tmp, site, instance=instance)
    fill_volume(hub.docker, f"{instance}-ds-imaging", {"index.txt": "scan-1"})
    try:
        with cleaned_up(request, hub):
            hub.start()
            key = keys["main"]
            r = hub.spawn("alice", {"project": key, "accept_dua": dua_sha()}, server=key)
            assert r.status_code in (201, 202), (r.status_code, r.text[:500], hub.log_lines("alice"))
            hub.wait_ready("alice", key, timeout=180)
            (c,) = hub.containers(user="alice", server=key)
            c.reload()
            yield {"hub": hub, "key": key, "container": c}
    finally:
        cleanup_projects(hub, keys)


def test_the_airlock_door_is_one_more_dnat_only_door_to_the_hubs_address():
    """Pure: the rules with gpuhub-airlock's port are the hub API's plus the same two for that port, before the
    rejects; nothing else opens (tests/projects/test_project_network.py probes the rules for real)."""
    net = pn.ProjectNetwork("k", "gpuhub-project-k", "br-x", "10.9.0.1", "10.9.0.0/24")
    plain = pn.Firewall.project_rules(net, pn.HubPath("10.8.0.1", 8081))
    both = pn.Firewall.project_rules(net, pn.HubPath("10.8.0.1", 8081, service_ports=(10103,)))
    added = [" ".join(r) for t, c, r in both if (t, c, r) not in plain]
    assert added == [
        "-i br-x -d 10.9.0.1 -p tcp --dport 10103 -j DNAT --to-destination 10.8.0.1:10103"
        " -m comment --comment gpuhub-project=k",
        "-i br-x -p tcp -d 10.8.0.1 --dport 10103 -m conntrack --ctstate DNAT --ctorigdst 10.9.0.1"
        " --ctorigdstport 10103 -j ACCEPT -m comment --comment gpuhub-project=k",
    ]
    first_reject = next(i for i, (_, _, r) in enumerate(both) if "REJECT" in r)
    assert all(i < first_reject for i, (t, c, r) in enumerate(both) if (t, c, r) not in plain)


def in_server(c, script: str) -> tuple[int, str]:
    """``script`` in the server's login shell, as the server's user, with the server's environment."""
    rc, out = c.exec_run(["bash", "-lc", script], user=c.attrs["Config"]["User"], workdir="/home/jovyan")
    return rc, out.decode(errors="replace")


def steward_view(room, request_id: int, direction: str = "exports") -> dict:
    hub = room["hub"]
    hub.ensure_user("dana")
    r = requests.get(
        f"{hub.url}{PREFIX}api/{direction}/{request_id}",
        headers={"Authorization": f"token {hub.user_token('dana')}"},  # dana stewards the project
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_gpuhub_export_in_a_project_server_reaches_the_service_which_reads_the_real_file(room):
    c, key = room["container"], room["key"]
    env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
    gateway = env["JUPYTERHUB_API_URL"].split("/")[2].split(":")[0]
    assert re.fullmatch(rf"http://{re.escape(gateway)}:\d+{PREFIX}", env["GPUHUB_AIRLOCK_URL"]), env
    rc, out = in_server(
        c, f"mkdir -p results && printf '{CSV.decode()}' > results/table.csv && sha256sum results/table.csv"
    )
    assert rc == 0 and hashlib.sha256(CSV).hexdigest() in out, out

    rc, out = in_server(c, "cd results && gpuhub-export table.csv --why 'Table 2 of the paper' --json")
    assert rc == 0, out
    mine = json.loads(out)
    assert (mine["project"], mine["requester"], mine["path"]) == (key, "alice", "results/table.csv")
    seen = steward_view(room, mine["id"])  # what the steward sees: the bytes the service read from the volume
    assert seen["sha256"] == hashlib.sha256(CSV).hexdigest() and seen["size"] == len(CSV)
    assert seen["why"] == "Table 2 of the paper" and seen["state"] in ("checks_done", "in_review")
    assert not any(f["rule"] == "client-hash" and not f["passed"] for f in seen["checks"])

    rc, out = in_server(c, f"gpuhub-export --status {mine['id']}")
    assert rc == 0 and f"export request {mine['id']}: {seen['state']}" in out, out
    rc, out = in_server(c, "gpuhub-export /data/cohort/cohort.csv --why 'the raw data'")
    assert rc == 1 and "refused (airlock-path): /data/cohort/cohort.csv is not inside your home folder" in out, out
    rc, out = in_server(c, f"gpuhub-export results/table.csv --why x --project {key}x")
    assert rc == 1 and "refused (airlock-unknown-project)" in out, out


def test_request_export_from_jupyterlab_through_the_hub(room, browser):  # noqa: F811
    hub, key = room["hub"], room["key"]
    shots = fresh_shots(ARTIFACTS)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", "alice")
    page.fill("#password_input", hub.password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(re.escape(hub.url) + r"/(hub|user)/"))
    page.goto(f"{hub.url}/user/alice/{key}/lab/tree/results")
    page.locator('.jp-DirListing-item[title*="table.csv"]').first.wait_for(timeout=120_000)
    page.locator('.jp-DirListing-item[title*="table.csv"]').first.click(button="right")
    page.locator(".lm-Menu").last.get_by_text("Request export…").click()
    page.locator(".gpuhub-airlock-dialog textarea").fill("Figure 3 of the paper")
    page.locator(".gpuhub-airlock-submit").click()
    toast = page.get_by_text(re.compile(r"Export request \d+ for results/table.csv: ")).first
    toast.wait_for()
    page.wait_for_timeout(800)
    page.screenshot(path=shots / "hub-01-requested-from-lab.png")
    request_id = int(re.search(r"Export request (\d+)", toast.inner_text()).group(1))
    seen = steward_view(room, request_id)
    assert seen["why"] == "Figure 3 of the paper" and seen["requester"] == "alice"
    assert seen["sha256"] == hashlib.sha256(CSV).hexdigest()
    page.close()


def test_only_the_servers_owner_asks_through_its_lab_endpoint(room):
    """The Lab entry's server hop sends the server's own token: an admin (here the hub's automation service, which
    may use every server) reaching alice's server is refused there and nothing reaches the airlock."""
    hub, key = room["hub"], room["key"]
    url = f"{hub.url}/user/alice/{key}/gpuhub/airlock/exports"
    mine = {"Authorization": f"token {hub.user_token('alice')}"}
    before = requests.get(f"{hub.url}{PREFIX}api/exports", headers=mine, timeout=30).json()["requests"]
    r = requests.post(url, json={"path": "results/table.csv", "why": "x"}, headers={
        "Authorization": f"token {hub.admin_token}"}, timeout=30)  # fmt: skip
    assert r.status_code == 403 and r.headers["X-Gpuhub-Rule"] == "airlock-owner", r.text
    assert "only alice asks the airlock from this server" in r.json()["message"]
    after = requests.get(f"{hub.url}{PREFIX}api/exports", headers=mine, timeout=30).json()["requests"]
    assert len(after) == len(before)


def test_gpuhub_import_in_an_ordinary_server_asks_to_bring_a_file_into_the_project(room):
    hub, key = room["hub"], room["key"]
    r = hub.spawn("alice", {"image": "python"})
    assert r.status_code in (201, 202), (r.status_code, r.text[:500])
    hub.wait_ready("alice", timeout=120)
    (c,) = hub.containers(user="alice", server="")
    c.reload()
    env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
    assert "GPUHUB_PROJECT" not in env and env["GPUHUB_AIRLOCK_URL"].endswith(PREFIX)
    code = b"import pandas as pd\n"
    rc, out = in_server(
        c, f"printf '{code.decode()}' > prep.py && gpuhub-import prep.py --why 'our cleaning code' --project {key}"
    )
    assert rc == 0 and "import request " in out, out
    request_id = int(re.search(r"import request (\d+):", out).group(1))
    seen = steward_view(room, request_id, "imports")
    assert (seen["direction"], seen["path"], seen["requester"]) == ("import", "prep.py", "alice")
    assert seen["sha256"] == hashlib.sha256(code).hexdigest()
    rc, out = in_server(c, "gpuhub-export prep.py --why x")  # not a project server: nothing to export from
    assert rc == 1 and "refused (airlock-unknown-project): no project" in out, out
