"""The airlock REST API (gpuhub.hub.airlock_service) over HTTP, with the real store, real Docker volumes and a
stand-in for the hub's token check (the hub itself is wired next session)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from gpuhub.hub.airlock_service import Volumes, make_app
from tests.airlock.conftest import read_file

pytestmark = pytest.mark.docker
SCOPE = "access:services!service=gpuhub-airlock"
USERS = ["alice", "bob", "steve", "sara", "sam", "olga"]
TABLE = b"region,patients\nseoul,120\nbusan,3\nulsan,45\n"


SPEC = yaml.safe_load((Path(__file__).parents[2] / "gpuhub/hub/airlock_service.openapi.yaml").read_text())


def _json_schema(node):
    """OpenAPI 3.0 -> JSON Schema: ``nullable: true`` becomes a null type."""
    if isinstance(node, dict):
        out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") and "type" in node:
            out["type"] = [node["type"], "null"]
        return out
    return [_json_schema(x) for x in node] if isinstance(node, list) else node


def conforms(body, schema_name):
    schema = {
        "$ref": f"#/components/schemas/{schema_name}",
        "components": _json_schema(copy.deepcopy(SPEC))["components"],
    }
    jsonschema.validate(body, schema)
    return True


class FakeAuth:
    """HubAuth's two calls the handlers make: token -> user model, scope check."""

    access_scopes = {SCOPE}

    def __init__(self):
        self.models = {f"tok-{u}": {"kind": "user", "name": u, "groups": [], "scopes": [SCOPE]} for u in USERS}
        self.models["tok-noscope"] = {"kind": "user", "name": "alice", "groups": [], "scopes": []}

    async def user_for_token(self, token, use_cache=True, sync=True):
        return self.models.get(token)

    def check_scopes(self, required, model):
        return set(required) & set(model["scopes"])


@pytest.fixture
async def api(store, make_volume):
    homes = {u: make_volume() for u in USERS}
    project_homes = {u: make_volume({"results/table.csv": TABLE, "notes.txt": b"ok\n"}) for u in ("alice", "sam")}
    volumes = Volumes(home=homes.__getitem__, project_home=lambda u, k: project_homes[u], uid=lambda u: 1000)
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(make_app(store, FakeAuth(), volumes))
    server.add_sockets(sockets)
    base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/services/gpuhub-airlock/api"
    client = AsyncHTTPClient()

    async def call(method, path, user="alice", body=None):
        headers = {"Authorization": f"token tok-{user}"} if user else {}
        r = await client.fetch(
            base + path,
            method=method,
            headers=headers,
            raise_error=False,
            body=None if method == "GET" else json.dumps(body or {}),
        )
        return r.code, r.headers.get("X-Gpuhub-Rule"), json.loads(r.body) if r.body else None

    call.homes = homes
    yield call
    server.stop()


async def test_export_through_the_api_two_stewards_then_released(api, docker_client):
    code, _, req = await api(
        "POST",
        "/exports",
        body={"project": "cohort", "path": "results/table.csv", "why": "table 2", "sha256": "0" * 64},
    )
    assert code == 201 and req["state"] == "checks_done" and req["sha256"] == hashlib.sha256(TABLE).hexdigest()
    assert conforms(req, "Request")
    failed = {(c["rule"], c["location"]) for c in req["checks"] if not c["passed"]}
    assert failed == {("cell-count", "line 3, column 'patients'"), ("client-hash", None)}
    rid = req["id"]
    assert (await api("POST", f"/exports/{rid}/reviews", "alice", {"decision": "approve"}))[:2] == (
        403,
        "airlock-not-steward",
    )
    assert (await api("GET", f"/exports/{rid}", "olga"))[:2] == (404, "airlock-not-found")
    assert (await api("GET", f"/imports/{rid}", "alice"))[:2] == (404, "airlock-not-found")
    code, rule, body = await api("POST", f"/exports/{rid}/reviews", "steve", {"decision": "approve"})
    assert (code, rule) == (400, "airlock-reason-required") and "reason" in body["message"]
    assert conforms(body, "Refusal")
    code, _, req = await api("POST", f"/exports/{rid}/reviews", "steve", {"decision": "approve", "reason": "hospitals"})
    assert (code, req["state"]) == (201, "in_review")
    code, _, req = await api("POST", f"/exports/{rid}/reviews", "sara", {"decision": "approve", "reason": "agreed"})
    assert (code, req["state"]) == (201, "released") and conforms(req, "Request")
    assert [r["reviewer"] for r in req["reviews"]] == ["steve", "sara"]
    body, _ = read_file(docker_client, api.homes["alice"], "exports/cohort/table.csv")
    assert hashlib.sha256(body).hexdigest() == req["sha256"]
    code, _, listing = await api("GET", "/exports?project=cohort&state=released", "sam")
    assert code == 200 and [r["id"] for r in listing["requests"]] == [rid]
    assert (await api("GET", "/exports", "olga"))[2] == {"requests": []}


def test_the_openapi_document_names_every_route():
    assert sorted(SPEC["paths"]) == sorted(
        "/services/gpuhub-airlock/api/{direction}" + tail
        for tail in ("", "/{id}", "/{id}/reviews", "/{id}/cancel", "/{id}/revoke")
    )
    assert SPEC["components"]["parameters"]["direction"]["schema"]["enum"] == ["exports", "imports"]


async def test_tokens_and_bodies_are_checked(api):
    assert (await api("GET", "/exports", None))[:2] == (403, "airlock-token")
    assert (await api("GET", "/exports", "noscope"))[:2] == (403, "airlock-token")
    code, rule, body = await api("POST", "/exports", body={"project": "nope", "path": "a", "why": "x"})
    assert (code, rule) == (400, "airlock-unknown-project") and "cohort" in body["message"]
    code, rule, _ = await api("POST", "/exports", body={"project": "cohort", "path": "../../etc/passwd", "why": "x"})
    assert (code, rule) == (400, "airlock-path")
    code, rule, _ = await api("POST", "/exports", body={"project": "cohort", "path": "notes.txt"})
    assert (code, rule) == (400, "airlock-why-required")


async def test_cancel_and_own_request(api):
    _, _, req = await api("POST", "/exports", "sam", {"project": "cohort", "path": "notes.txt", "why": "x"})
    assert (await api("POST", f"/exports/{req['id']}/reviews", "sam", {"decision": "approve", "reason": "x"}))[:2] == (
        403,
        "airlock-own-request",
    )
    assert (await api("POST", f"/exports/{req['id']}/cancel", "steve"))[:2] == (403, "airlock-not-requester")
    code, _, req = await api("POST", f"/exports/{req['id']}/cancel", "sam")
    assert (code, req["state"]) == (200, "cancelled")
