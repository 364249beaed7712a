"""Fuzz of the GPU queue listing and the airlock API from their OpenAPI documents (schemathesis), live, through a
real hub's proxy: gpuhub/hub/quota_service.openapi.yaml (``GET /services/gpuhub-quota/queue``) and
gpuhub/hub/airlock_service.openapi.yaml (``/services/gpuhub-airlock/api/...``), on the airlock kit's hub
(tests/airlock/hubkit.py: projects ``cohort`` and ``other``, their stewards and members, and carol in none).

Promises (I1, S6): 0 responses >= 500; no token, a garbage token or a token without the right: 401/403; a user's
token never gets another user's queue entries nor an airlock request of a project it has no role in (an
outsider's list is empty and a GET by id is 404); every response conforms to its document.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gpuhub.hub.runtime import quota_store, site
from quota.queue_store import QueueStore
from tests.airlock.hubkit import PREFIX, airlock_hub  # noqa: F401 - the module's hub
from tests.faults.figures import record
from tests.fuzz.kit import FUZZ, Tally, malformed_header, send
from tests.harness import ROOT

pytestmark = pytest.mark.docker

QUEUE_DOC = ROOT / "gpuhub" / "hub" / "quota_service.openapi.yaml"
AIRLOCK_DOC = ROOT / "gpuhub" / "hub" / "airlock_service.openapi.yaml"
TABLE = b"region,patients\nseoul,120\nbusan,30\nulsan,45\n"
CALLERS = ["alice", "steve", "oscar", "olga", "carol"]  # member, steward, other project's member/steward, outsider
ANONYMOUS = ["none", "garbage", "generated", "admin"]  # admin: the hub's service token, not a user's
QUEUED = {"alice": ("gist-ai", "H100"), "carol": ("cnuh-radiology", "A100")}  # one queue entry each
STEWARDS = {"cohort": {"steve", "sara", "sam"}, "other": {"olga"}}
AIRLOCK_FUZZ = settings(FUZZ, max_examples=60)  # per operation and generation mode: 12 runs
GENERATION = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


def _auth(hub, mode: str, case, junk: str) -> str | None:
    if mode in hub.tokens:
        return f"token {hub.tokens[mode]}"
    return {
        "admin": f"token {hub.admin_token}",
        "generated": (case.headers or {}).get("Authorization"),
        "none": None,
        "garbage": f"Bearer {junk}",
    }[mode]


def _refused(r, auth: str | None) -> bool:
    """403 (or the proxy's 400 for a header that is not valid HTTP) and no request data in the body."""
    malformed = malformed_header(auth)
    leaked = any(w in r.text for w in ('"requester"', '"requests": [{', "results/table.csv", "GPU-sim"))
    return (r.status_code in (401, 403) or (malformed and r.status_code == 400)) and not leaked


@pytest.fixture(scope="module")
def seeded(airlock_hub):  # noqa: F811
    """Queue entries of alice (gist-ai) and carol (cnuh-radiology); an export of alice in cohort and of oscar in
    other (real submissions through the service). Every caller's volumes exist first, so a fuzzed submission that
    passes the rules reads a labelled volume the kit removes, never one Docker would make on the fly."""
    hub = airlock_hub
    queue = QueueStore(quota_store(hub.site_path).engine, site(hub.site_path))
    for user, (org, model) in QUEUED.items():
        queue.enqueue(f"{user}/", user, "", org, 1, model, {"image": "python", "gpus": 1, "gpu_model": model})
    vols = hub.volumes
    for user, project in (("alice", "cohort"), ("steve", "cohort"), ("oscar", "other"), ("olga", "other")):
        files = {"results/table.csv": TABLE} if user in ("alice", "oscar") else None
        hub.volume(vols.project_home(user, project), files)
        hub.volume(vols.home(user))
    ids = {}
    for user, project in (("alice", "cohort"), ("oscar", "other")):
        body = {"project": project, "path": "results/table.csv", "why": "table 2"}
        auth = {"Authorization": f"token {hub.tokens[user]}"}
        r = requests.post(f"{hub.service}api/exports", json=body, headers=auth, timeout=60)
        assert r.status_code == 201, r.text
        ids[user] = r.json()["id"]
    return hub, ids


def test_queue_listing_fuzzed_with_and_without_tokens(seeded):
    """Promise: the queue listing never answers 5xx; a user's token lists only that user's requests (none of the
    class windows); a token with access to the service lists everyone's; no token or a bad one: 403."""
    hub, _ = seeded
    op = schemathesis.openapi.from_path(QUEUE_DOC)["/services/gpuhub-quota/queue"]["GET"]
    tally = Tally()
    modes = st.sampled_from([*QUEUED, "steve", "oscar", *ANONYMOUS])

    @FUZZ
    @given(case=op.as_strategy(), mode=modes, junk=st.text(st.characters(min_codepoint=32, max_codepoint=255)))
    def run(case, mode, junk):
        auth = _auth(hub, mode, case, junk)
        r = send(case, hub.url, auth)
        tally.add(r.status_code)
        assert r.status_code < 500, (mode, r.status_code, r.text[:300])
        if mode == "admin":
            assert r.status_code == 200, r.text[:300]
            assert {e["user"] for e in r.json()["requests"]} >= {"alice", "carol"}
        elif mode in hub.tokens:
            assert r.status_code == 200, (mode, r.text[:300])
            assert len(r.json()["requests"]) == (mode in QUEUED), r.text[:300]  # its own entry, not only a part
        else:
            assert _refused(r, auth), (mode, auth, r.status_code, r.text[:300])
        if not (r.status_code == 400 and malformed_header(auth)):  # the proxy's answer to a header that is not HTTP
            case.validate_response(r, additional_checks=[_check_own_queue_entries(mode)] if mode in hub.tokens else [])

    run()
    record("I1-queue", tally.line("queue listing"), **tally.figures())
    assert tally.fivexx == 0 and tally.cases >= FUZZ.max_examples // 2


def _check_own_queue_entries(user: str):
    """A schemathesis check: a user's token gets only that user's queue entries and none of the class windows."""

    def own_queue_entries(ctx, response, case):
        if response.status_code != 200:
            return None
        body = response.json()
        foreign = [(e["id"], e["user"]) for e in body["requests"] if e["user"] != user]
        assert not foreign and body["reservations"] == [], f"{user}'s token was shown {foreign}, {body['reservations']}"
        return None

    return own_queue_entries


def _visible_to(user: str, request: dict) -> bool:
    return request["requester"] == user or user in STEWARDS.get(request["project"], set())


def _check_no_foreign_request(user: str):
    """A schemathesis check: every airlock request in a response is the caller's own or of a project it
    stewards; an outsider (carol) sees none."""

    def no_foreign_request(ctx, response, case):
        kind = response.headers.get("content-type") or response.headers.get("Content-Type") or ""
        if response.status_code >= 300 or "json" not in (kind[0] if isinstance(kind, list) else kind):
            return None
        body = response.json()
        shown = body.get("requests", []) if "requests" in body else [body]
        foreign = [(q["id"], q["project"], q["requester"]) for q in shown if not _visible_to(user, q)]
        assert not foreign, f"{user} was shown requests it has no role in: {foreign}"
        return None

    return no_foreign_request


OPERATIONS = [
    ("/services/gpuhub-airlock/api/{direction}", "GET"),
    ("/services/gpuhub-airlock/api/{direction}", "POST"),
    ("/services/gpuhub-airlock/api/{direction}/{id}", "GET"),
    ("/services/gpuhub-airlock/api/{direction}/{id}/reviews", "POST"),
    ("/services/gpuhub-airlock/api/{direction}/{id}/cancel", "POST"),
    ("/services/gpuhub-airlock/api/{direction}/{id}/revoke", "POST"),
]


def test_airlock_api_fuzzed_with_and_without_tokens(seeded):
    """Promise: the airlock API never answers 5xx; without a user's token 403 (rule airlock-token); a member, a
    steward, another project's member and steward, and an outsider only ever see requests they have a role in: an
    outsider's list is empty and a GET of any request by id is 404."""
    hub, ids = seeded
    schema = schemathesis.openapi.from_path(AIRLOCK_DOC)
    tally = Tally()
    for path, method in OPERATIONS:
        for mode in GENERATION:
            _airlock_run(hub, ids, schema[path][method], mode, tally)()
    record("I1-airlock", tally.line("airlock API"), **tally.figures())
    assert tally.fivexx == 0 and tally.cases >= len(OPERATIONS) * AIRLOCK_FUZZ.max_examples


def _steer(case, project, rid, ids) -> None:
    """Point some cases at what exists (the real projects, the seeded requests, the real file) so the fuzz reaches
    the role decisions and not only the 400s of random strings."""
    if project is not None:
        if isinstance(case.query, dict) and "project" in case.query:
            case.query["project"] = project
        if isinstance(case.body, dict) and "project" in case.body:
            case.body = {**case.body, "project": project, "path": "results/table.csv"}
    if rid is not None and case.path_parameters and "id" in case.path_parameters:
        case.path_parameters = {**case.path_parameters, "id": ids[rid]}


def _airlock_run(hub, ids, op, generation, tally: Tally):
    maybe = st.one_of(st.none(), st.sampled_from(["cohort", "other"]))

    @AIRLOCK_FUZZ
    @given(
        case=op.as_strategy(generation_mode=generation),
        mode=st.sampled_from([*CALLERS, *ANONYMOUS]),
        project=maybe,
        rid=st.one_of(st.none(), st.sampled_from(sorted(ids))),
        junk=st.text(st.characters(min_codepoint=32, max_codepoint=255)),
    )
    def run(case, mode, project, rid, junk):
        _steer(case, project, rid, ids)
        auth = _auth(hub, mode, case, junk)
        r = send(case, hub.url, auth)
        tally.add(r.status_code, f"{op.label} ({generation.value})")
        assert r.status_code < 500, (op.label, generation, mode, r.status_code, r.text[:300])
        if not _routed(case):  # a direction or id the API has no route for: tornado's 404 before any token check
            expected = 400 if malformed_header(auth) else 404
            assert r.status_code == expected and '"requester"' not in r.text, (op.label, mode, r.text[:300])
            return
        checks = [_check_no_foreign_request(mode)]
        # a schema-valid body may still name no project of the site or no file: a 400 by rule, not a schema gap
        conforms = dict(additional_checks=checks, excluded_checks=[positive_data_acceptance])
        if mode not in hub.tokens:
            assert _refused(r, auth), (op.label, mode, auth, r.status_code, r.text[:300])
            if not (r.status_code == 400 and malformed_header(auth)):  # the proxy's answer, not the service's
                case.validate_response(r, **conforms)
            return
        if mode == "carol" and r.status_code == 200 and op.method.upper() == "GET":
            assert r.json().get("requests", []) == [], r.text[:300]
        if rid is not None and op.method.upper() == "GET" and "{id}" in op.path:
            seen = case.path_parameters["direction"] == "exports" and (mode == rid or mode in _stewards_of(rid))
            assert r.status_code == (200 if seen else 404), (op.label, mode, rid, r.status_code, r.text[:300])
        case.validate_response(r, **conforms)

    return run


def _routed(case) -> bool:
    """Whether the case's path parameters match the service's routes (airlock_service.make_app)."""
    params = case.path_parameters or {}
    rid = str(params.get("id", "1"))
    return params.get("direction") in ("exports", "imports") and rid.isascii() and rid.isdigit() and len(rid) <= 12


def _stewards_of(requester: str) -> set[str]:
    return STEWARDS["cohort" if requester == "alice" else "other"]
