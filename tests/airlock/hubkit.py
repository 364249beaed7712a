"""A real hub with the airlock registered as gpuhub/hub/hubconfig.py does it, two projects and the users' tokens.

Project ``cohort``: stewards steve, sara and sam (sam is also a member), members alice, mona and sam. Project
``other``: steward olga, member oscar. carol is in no project. ``hub.tokens[user]`` is a token of the user's own
(made through the hub's API, the user's permissions); ``hub.volumes`` the names the service computes.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest

from gpuhub.core import labels as lb
from gpuhub.hub.airlock_service import hub_volumes
from gpuhub.hub.runtime import quota_store, site
from tests.airlock.conftest import TEST_LABEL, put_files
from tests.harness import HubProcess, default_site
from tests.procs import cleaned_up, free_port

USERS = ["alice", "mona", "sam", "steve", "sara", "olga", "oscar", "carol"]
PREFIX = "/services/gpuhub-airlock/"


class AirlockHub(HubProcess):
    def __init__(self, tmp, airlock: dict | None = None):
        instance = f"gpuhubtest{uuid.uuid4().hex[:6]}"
        data = default_site(instance, free_port(), tmp / "state")
        data["hub"]["airlock_service_port"] = free_port()
        (tmp / "registry").mkdir()
        (tmp / "registry" / "cohort.csv").write_text("pid,age\nP-000101,54\n")
        today = date.today()
        room = {
            "org": "gist-ai",
            "datasets": {"registry": {"source": str(tmp / "registry"), "identifier_columns": ["pid"]}},
            "purpose": "test",
            "legal_basis": "pipa-28-2-research",
            "starts": today - timedelta(days=2),
            "expires": today + timedelta(days=30),
            "dua": "use it well\n",
        }
        data["projects"] = {
            "cohort": {**room, "display_name": "Cancer cohort", "stewards": ["steve", "sara", "sam"],
                       "members": ["alice", "mona", "sam"]},
            "other": {**room, "display_name": "Other room", "stewards": ["olga"], "members": ["oscar"]},
        }  # fmt: skip
        data["airlock"] = {"quarantine_dir": str(tmp / "quarantine"), **(airlock or {})}
        super().__init__(tmp, data, instance=instance)
        self.tokens: dict[str, str] = {}
        self.made_volumes: list[str] = []

    @property
    def service(self) -> str:
        return self.url + PREFIX

    @property
    def volumes(self):
        return hub_volumes(site(self.site_path), quota_store(self.site_path))

    def make_tokens(self) -> None:
        for user in USERS:
            self.ensure_user(user)
            r = self.api("POST", f"/users/{user}/tokens", json={"note": "airlock test"})
            assert r.status_code == 201, r.text
            self.tokens[user] = r.json()["token"]

    def volume(self, name: str, files: dict | None = None) -> str:
        """Create (once) the labelled volume ``name``, write ``files`` into it."""
        if name not in self.made_volumes:
            self.docker.volumes.create(name, labels={lb.MANAGED: "1", TEST_LABEL: "1"})
            self.made_volumes.append(name)
        if files:
            put_files(self.docker, name, files)
        return name

    def cleanup(self) -> None:
        super().cleanup()
        for c in self.docker.containers.list(all=True, filters={"label": f"{TEST_LABEL}=1"}):
            c.remove(force=True)
        for name in self.made_volumes:
            try:
                self.docker.volumes.get(name).remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


@pytest.fixture(scope="module")
def airlock_hub(request, tmp_path_factory, docker_client):
    h = AirlockHub(tmp_path_factory.mktemp("airlock-hub"))
    with cleaned_up(request, h):
        h.start()
        h.make_tokens()
        yield h
