"""The airlock API through a real hub: real tokens, HubAuth, the hub's proxy, the service process the hub starts,
the volumes the spawner would use (the service computes their names), release into the ordinary home."""

from __future__ import annotations

import hashlib
import uuid
from datetime import date, timedelta

import pytest
import requests

from gpuhub.core import labels as lb
from gpuhub.hub.airlock_service import hub_volumes
from gpuhub.hub.runtime import quota_store, site
from tests.airlock.conftest import TEST_LABEL, put_files, read_file
from tests.harness import ROOT, HubProcess, default_site
from tests.procs import cleaned_up, free_port

pytestmark = pytest.mark.docker
TABLE = b"region,patients\nseoul,120\nbusan,3\nulsan,45\n"
ROLE_USERS = ["alice", "steve", "sara"]  # carol has a hub account but no access to the service


class AirlockHub(HubProcess):
    config_file = ROOT / "tests/airlock/hub_config.py"

    def __init__(self, tmp):
        instance = f"gpuhubtest{uuid.uuid4().hex[:6]}"
        port = free_port()
        data = default_site(instance, port, tmp / "state")
        (tmp / "registry").mkdir()
        (tmp / "registry" / "cohort.csv").write_text("pid,age\nP-000101,54\n")
        today = date.today()
        data["projects"] = {
            "cohort": {
                "org": "gist-ai",
                "stewards": ["steve", "sara"],
                "members": ["alice"],
                "datasets": {"registry": {"source": str(tmp / "registry"), "identifier_columns": ["pid"]}},
                "purpose": "test",
                "legal_basis": "pipa-28-2-research",
                "starts": today - timedelta(days=2),
                "expires": today + timedelta(days=30),
                "dua": "use it well\n",
            }
        }
        data["airlock"] = {"quarantine_dir": str(tmp / "quarantine")}
        super().__init__(tmp, data, instance=instance)
        self.airlock_port, self.airlock_token = free_port(), uuid.uuid4().hex

    def env(self) -> dict:
        return {
            **super().env(),
            "GPUHUB_TEST_AIRLOCK_PORT": str(self.airlock_port),
            "GPUHUB_TEST_AIRLOCK_TOKEN": self.airlock_token,
            "GPUHUB_TEST_AIRLOCK_USERS": ",".join(ROLE_USERS),
        }


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client):
    h = AirlockHub(tmp_path_factory.mktemp("airlock-hub"))
    with cleaned_up(request, h):
        h.start()
        yield h


def test_export_through_the_hub(hub, docker_client):
    tokens = {}
    for user in [*ROLE_USERS, "carol"]:
        hub.ensure_user(user)
        r = hub.api("POST", f"/users/{user}/tokens", json={"note": "airlock test"})
        assert r.status_code == 201, r.text
        tokens[user] = r.json()["token"]
    vols = hub_volumes(site(hub.site_path), quota_store(hub.site_path))
    project_home, home = vols.project_home("alice", "cohort"), vols.home("alice")
    for name in (project_home, home):
        docker_client.volumes.create(name, labels={lb.MANAGED: "1", TEST_LABEL: "1"})
    try:
        put_files(docker_client, project_home, {"results/table.csv": TABLE})
        api = f"{hub.url}/services/gpuhub-airlock/api/exports"

        def call(user, path="", body=None):
            return requests.post(
                api + path, json=body or {}, headers={"Authorization": f"token {tokens[user]}"}, timeout=60
            )

        r = call("carol", body={"project": "cohort", "path": "results/table.csv", "why": "x"})
        assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (403, "airlock-token")
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
    finally:
        for name in (project_home, home):
            docker_client.volumes.get(name).remove(force=True)
