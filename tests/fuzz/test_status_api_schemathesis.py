"""Fuzz of our own HTTP APIs from their OpenAPI documents (schemathesis), against live services.

- the quota service's status API (gpuhub/hub/quota_service.openapi.yaml) through a real hub's proxy,
  with an admin token, a plain user's token, schemathesis' generated tokens and no token;
- the exporters' endpoint (exporters/openapi.yaml) with and without its bearer token.
Promises (I1, S6): 0 responses >= 500; without a valid token 401/403; 0 responses to a token without
the right that carry another user's data; every response conforms to the document.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from exporters.server import serve
from tests.faults.figures import record
from tests.fuzz.kit import FUZZ, malformed_header
from tests.fuzz.kit import send as _send
from tests.harness import ROOT

pytestmark = pytest.mark.docker

STATUS_DOC = ROOT / "gpuhub" / "hub" / "quota_service.openapi.yaml"
EXPORTER_DOC = ROOT / "exporters" / "openapi.yaml"
EXAMPLES = FUZZ.max_examples


def test_status_api_fuzzed_with_and_without_tokens(hub):
    """Promise: the status API never answers 5xx, needs a token with access to the service (403 otherwise),
    and a plain user's token sees nothing of the servers other users run."""
    bob = {"image": "python", "gpus": 1, "gpu_model": "A100", "org": "gist-ai"}
    assert hub.spawn("bob", bob).status_code in (201, 202)
    hub.wait_ready("bob")
    hub.ensure_user("alice")
    alice = hub.user_token("alice")  # a plain user: no access:services!service=gpuhub-quota
    op = schemathesis.openapi.from_path(STATUS_DOC)["/services/gpuhub-quota/status"]["GET"]
    seen = {"cases": 0, "5xx": 0, "by_status": {}}
    modes = st.sampled_from(["admin", "admin-bearer", "user", "generated", "none", "garbage"])

    @FUZZ
    @given(case=op.as_strategy(), mode=modes, junk=st.text(st.characters(min_codepoint=32, max_codepoint=255)))
    def run(case, mode, junk):
        generated = (case.headers or {}).get("Authorization")
        auth = {
            "admin": f"token {hub.admin_token}",
            "admin-bearer": f"Bearer {hub.admin_token}",
            "user": f"token {alice}",
            "generated": generated,
            "none": None,
            "garbage": f"token {junk}",
        }[mode]
        r = _send(case, hub.url, auth)
        seen["cases"] += 1
        seen["by_status"][str(r.status_code)] = seen["by_status"].get(str(r.status_code), 0) + 1
        seen["5xx"] += r.status_code >= 500
        assert r.status_code < 500, (mode, auth, r.status_code, r.text[:300])
        malformed = malformed_header(auth)  # a header that is not valid HTTP: the proxy's 400, not the service's
        if mode.startswith("admin"):
            assert r.status_code == 200, r.text[:300]
            assert any(s["user"] == "bob" for s in r.json()["orgs"]["gist-ai"]["running_servers"])
        else:
            assert r.status_code == 403 or (malformed and r.status_code == 400), (mode, auth, r.status_code, r.text)
            assert "bob" not in r.text and "GPU-sim-a100" not in r.text, r.text[:500]
        if not (malformed and r.status_code == 400):
            case.validate_response(r)  # status code, content type and body as the document says

    run()
    record(
        "I1-status",
        f"status API: {seen['cases']} cases, {seen['5xx']} responses >= 500, by status {seen['by_status']}",
        **seen,
    )
    assert seen["5xx"] == 0 and seen["cases"] >= EXAMPLES // 2
    hub.stop_server("bob")


def test_exporter_endpoint_fuzzed_with_and_without_its_token():
    """Promise S6: /metrics without the bearer token is 401, with it 200; nothing answers 5xx."""
    registry = CollectorRegistry()
    Counter("gpuhub_fuzz_probe", "a probe counter for the fuzz", registry=registry).inc()
    token = "fuzz-token-" + "9" * 24
    server = serve(registry, "127.0.0.1:0", token)
    base = f"http://127.0.0.1:{server.port}"
    schema = schemathesis.openapi.from_path(EXPORTER_DOC)
    seen = {"cases": 0, "5xx": 0, "by_status": {}}
    try:
        for path in ("/metrics", "/healthz"):
            _exporter_run(schema[path]["GET"], path, base, token, seen)()
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 401  # no header at all
    finally:
        server.close()
    record(
        "I1-exporters",
        f"exporter endpoint: {seen['cases']} cases, {seen['5xx']} responses >= 500, by status {seen['by_status']}",
        **seen,
    )
    assert seen["5xx"] == 0


def _exporter_run(op, path: str, base: str, token: str, seen: dict):
    @FUZZ
    @given(case=op.as_strategy(), with_token=st.booleans())
    def run(case, with_token):
        auth = f"Bearer {token}" if with_token else (case.headers or {}).get("Authorization")
        r = _send(case, base, auth)
        seen["cases"] += 1
        seen["by_status"][str(r.status_code)] = seen["by_status"].get(str(r.status_code), 0) + 1
        seen["5xx"] += r.status_code >= 500
        if path == "/healthz":
            assert r.status_code == 200
        elif with_token:
            assert r.status_code == 200 and "gpuhub_fuzz_probe_total 1.0" in r.text
        else:
            assert r.status_code == 401 and "gpuhub_fuzz_probe" not in r.text, r.text[:200]
        case.validate_response(r)

    return run
