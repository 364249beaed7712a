"""The airlock API through a real hub: the service as gpuhub/hub/hubconfig.py registers it, real tokens, HubOAuth,
the hub's proxy, the service process the hub starts, the volumes the spawner would use (the service computes their
names), release into the ordinary home."""

from __future__ import annotations

import hashlib

import pytest
import requests

from tests.airlock.conftest import read_file
from tests.airlock.hubkit import airlock_hub  # noqa: F401 - the module's hub

pytestmark = pytest.mark.docker
TABLE = b"region,patients\nseoul,120\nbusan,3\nulsan,45\n"


def test_export_through_the_hub(airlock_hub, docker_client):  # noqa: F811
    hub = airlock_hub
    vols = hub.volumes
    project_home, home = hub.volume(vols.project_home("alice", "cohort")), hub.volume(vols.home("alice"))
    hub.volume(project_home, {"results/table.csv": TABLE})
    api = f"{hub.service}api/exports"

    def call(user, path="", body=None, token=None):
        auth = {"Authorization": f"token {token or hub.tokens[user]}"}
        return requests.post(api + path, json=body or {}, headers=auth, timeout=60)

    r = hub.api("POST", "/users/carol/tokens", json={"note": "no airlock", "scopes": ["read:users:name!user"]})
    assert r.status_code == 201, r.text
    r = call("carol", token=r.json()["token"], body={"project": "cohort", "path": "results/table.csv", "why": "x"})
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (403, "airlock-token")
    r = call("carol", body={"project": "cohort", "path": "results/table.csv", "why": "x"})
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (403, "airlock-not-member")
    r = call("alice", body={"project": "cohort", "path": "results/table.csv", "why": "table 2"})
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["sha256"] == hashlib.sha256(TABLE).hexdigest() and req["requester"] == "alice"
    assert [c["rule"] for c in req["checks"] if not c["passed"]] == ["cell-count"]
    r = call("alice", f"/{req['id']}/reviews", {"decision": "approve", "reason": "mine"})
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (403, "airlock-not-steward")
    assert (
        call("steve", f"/{req['id']}/reviews", {"decision": "approve", "reason": "hospitals"}).json()["state"]
        == "in_review"
    )
    r = call("sara", f"/{req['id']}/reviews", {"decision": "approve", "reason": "agreed"})
    assert r.status_code == 201 and r.json()["state"] == "released", r.text
    body, uid = read_file(docker_client, home, "exports/cohort/table.csv")
    assert hashlib.sha256(body).hexdigest() == req["sha256"] and uid == vols.uid("alice")


def test_a_servers_own_token_reaches_the_service_from_inside_the_server(airlock_hub):  # noqa: F811
    """What gpuhub-export relies on: $JUPYTERHUB_API_TOKEN of a server is let in (server_token_scopes), and the
    service answers on the user network's gateway, where the server's container reaches it."""
    hub = airlock_hub
    r = hub.spawn("alice", {"image": "python"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice", timeout=120)
    port = hub.site["hub"]["airlock_service_port"]
    code = f"""
import json, os, urllib.request, urllib.error
gateway = os.environ["JUPYTERHUB_API_URL"].split("//")[1].split(":")[0]
url = f"http://{{gateway}}:{port}/services/gpuhub-airlock/api/exports"
req = urllib.request.Request(url, headers={{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}})
try:
    with urllib.request.urlopen(req, timeout=20) as r:
        print("STATUS", r.status, json.load(r))
except urllib.error.HTTPError as e:
    print("STATUS", e.code, e.read().decode())
"""
    try:
        out = hub.run_code("alice", code, timeout=60)
        assert "STATUS 200 {'requests': [" in out, out
    finally:
        hub.stop_server("alice")
