"""One rule id per refusal, everywhere: the REST answer, the spawn form, the ledger's counter and the metric.

Each case is a real spawn through the hub's REST API (``POST /hub/api/users/NAME/server`` with
``user_options``): its status, its ``X-Gpuhub-Rule`` header and its JSON ``message`` (the sentence). Where the
form can show the same situation, the user's spawn form (logged in through the hub) disables that option
with ``data-gpuhub-rule`` = the same id and the same sentence; a 429 ("busy now") leaves it selectable, marked
"busy now: you will wait in line" with the same id and the sentence as its title (the form's request waits in
line unless "Wait in line" is unchecked). The quota store's refusal counter for
(organization, rule) goes up by one, and the usage exporter's ``gpuhub_spawn_refusals_total{org, reason}``
reads the same count from the ledger.
"""

from __future__ import annotations

import os
from html.parser import HTMLParser

import pytest
from prometheus_client import CollectorRegistry

from exporters.usage import build_usage_exporter
from gpuhub.core.site import load_site
from gpuhub.hub.runtime import quota_store
from tests.harness import BASE_IMAGE, HubProcess, default_site, login
from tests.procs import module_failed

pytestmark = pytest.mark.docker

H100 = ["GPU-sim-h100-0", "GPU-sim-h100-1"]
A100 = ["GPU-sim-a100-0"]


def rules_site(instance: str, port: int, state) -> dict:
    site = default_site(instance, port, state)
    site["images"] = {
        "python": {"image": BASE_IMAGE, "display_name": "Python"},
        "cpu": {"image": BASE_IMAGE, "display_name": "CPU only", "gpu": False},
    }
    site["gpus"]["devices"] = [{"uuid": u, "model": m} for m, uuids in (("H100", H100), ("A100", A100)) for u in uuids]
    site["gpus"]["max_gpus_per_user"] = 2
    site["organizations"] = {
        "lab": {
            "display_name": "Lab",
            "members": ["ann", "ben", "ivy"],
            "gpu_limit": 1,
            "gpu_hours_per_month": 100,
            "max_gpus_per_server": 1,
        },
        "big": {
            "display_name": "Big",
            "members": ["fay", "gus"],
            "gpu_limit": 3,
            "gpu_hours_per_month": 100,
            "max_gpus_per_server": 2,
            "images": ["python"],
        },
        "small": {
            "display_name": "Small",
            "members": ["dan", "ivy"],
            "gpu_limit": 1,
            "gpu_hours_per_month": 100,
            "images": ["cpu"],
        },
        "broke": {"display_name": "Broke", "members": ["cat"], "gpu_limit": 1, "gpu_hours_per_month": 0},
    }
    return site


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client):
    tmp = tmp_path_factory.mktemp("rules")
    instance = f"gpuhubtest{os.urandom(3).hex()}"
    hub = HubProcess(tmp, instance=instance)
    hub.site = rules_site(instance, hub.port, hub.state)
    hub.site_path.write_text(__import__("yaml").safe_dump(hub.site))
    try:
        yield hub.start()
    finally:
        if module_failed(request):
            print(hub.dump_logs())
        hub.cleanup()


class FormRules(HTMLParser):
    """(field, value) -> (data-gpuhub-rule, the text shown with it) for each option the spawn form disables or
    marks busy: an <option>'s own text, or the rest of an <input>'s <label>; ``busy`` -> (field, value) -> title."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.rules: dict[tuple[str, str], tuple[str, str]] = {}
        self.busy: dict[tuple[str, str], str] = {}
        self._select, self._open, self._end, self._text = None, None, None, []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "select":
            self._select = a.get("name")
        elif "data-gpuhub-rule" in a and ("disabled" in a or "data-gpuhub-busy" in a) and tag in ("option", "input"):
            field = self._select if tag == "option" else a["name"]
            if "data-gpuhub-busy" in a:
                self.busy[(field, a["value"])] = a.get("title") or ""
            self._open, self._end, self._text = (field, a["value"], a["data-gpuhub-rule"]), tag, []
            if tag == "input":
                self._end = "label"

    def handle_data(self, data):
        if self._open:
            self._text.append(data)

    def handle_endtag(self, tag):
        if self._open and tag == self._end:
            field, value, rule = self._open
            self.rules[(field, value)] = (rule, " ".join("".join(self._text).split()))
            self._open = None
        elif tag == "select":
            self._select = None


def counts(hub) -> dict:
    return quota_store(hub.site_path).refusal_counts()


def refuse(hub, user: str, options: dict, status: int, rule: str, org: str, server: str = "") -> str:
    """Spawn through REST; check the answer and the counter; return the message."""
    before = counts(hub).get((org, rule), 0)
    r = hub.spawn(user, options, server=server)
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (status, rule), (r.status_code, r.headers, r.text)
    message = r.json()["message"]
    assert rule not in message and len(message) > 30, message  # the sentence, not the id
    assert counts(hub).get((org, rule), 0) == before + 1, counts(hub)
    assert hub.containers(all=True, user=user, **({"server": server} if server else {})) == []
    return message


def form_rule(hub, user: str, field: str, value: str, server: str = "") -> tuple[str, str, str | None]:
    """(rule id, text shown, the title of a busy option or None for a disabled one) of one form option."""
    page = login(hub, user).get(f"{hub.url}/hub/spawn/{user}/{server}" if server else f"{hub.url}/hub/spawn").text
    form = FormRules(page)
    assert (field, value) in form.rules, (field, value, form.rules, page[:3000])
    assert 'name="queue" value="1" id="gpuhub-queue" checked' in page  # "Wait in line if the GPUs are busy"
    return *form.rules[(field, value)], form.busy.get((field, value))


# (user, user_options, status, rule id, org label, form field/value showing the same situation or None)
BEFORE_ANY_SERVER = [
    ("ann", {"image": "python", "env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, 400, "unknown-option", "", None),
    ("ann", {"image": "python", "gpus": -1}, 400, "gpus-negative", "", None),
    ("ann", {"image": "python", "gpus": "two"}, 400, "gpus-type", "", None),
    ("ann", {"image": "nope"}, 400, "unknown-image", "", None),
    ("ann", {"image": "python", "gpus": 1, "gpu_model": "V100"}, 400, "unknown-model", "", None),
    ("ann", {"image": "python", "org": "no-such-org"}, 400, "unknown-org", "", None),
    ("ann", {"image": "python", "org": "big"}, 403, "not-a-member", "big", None),
    ("ivy", {"image": "cpu"}, 400, "org-required", "", None),
    ("eve", {"image": "python", "gpus": 1}, 403, "no-organization", "", ("gpus", "1")),
    ("dan", {"image": "python"}, 403, "image-not-allowed", "small", ("image", "python")),
    ("dan", {"image": "cpu", "gpus": 1}, 400, "image-cpu-only", "small", ("gpus", "1")),
    ("ann", {"image": "python", "gpus": 2}, 400, "max-gpus-per-server", "lab", ("gpus", "2")),
    ("cat", {"image": "python", "gpus": 1}, 403, "budget-exhausted", "broke", ("gpus", "1")),
]
# with ann holding lab's one GPU (the A100) and fay holding both H100s (her per-user maximum); "queue": false asks
# for the immediate 429 instead of waiting in line (gpuhub.hub.queue_wait)
WHILE_HELD = [
    ("ben", "", {"image": "python", "gpus": 1, "queue": False}, 429, "org-gpu-limit", "lab", ("gpus", "1")),
    ("fay", "two", {"image": "python", "gpus": 1, "queue": False}, 429, "user-gpu-limit", "big", ("gpus", "1")),
    ("gus", "", {"image": "python", "gpus": 1, "queue": False}, 429, "no-free-device", "big", ("gpus", "1")),
    (
        "gus",
        "",
        {"image": "python", "gpus": 1, "gpu_model": "A100", "queue": False},
        429,
        "no-free-device",
        "big",
        ("gpu_model", "A100"),
    ),
]


def test_each_refusal_has_one_rule_id_in_rest_form_ledger_and_metric(hub):
    def walk(user, server, options, status, rule, org, field):
        message = refuse(hub, user, options, status, rule, org, server=server)
        if field:  # the form shows the same situation: the same id and the same sentence
            shown_rule, shown, title = form_rule(hub, user, *field, server=server)
            if status == 429:  # busy now: selectable, the request would wait in line; the sentence is its title
                assert title == message and shown.endswith("— busy now: you will wait in line"), (user, shown, title)
            else:
                assert title is None and shown.endswith(f"— {message}"), (user, field, shown_rule, shown, message)
            assert shown_rule == rule, (user, field, shown_rule, rule)
        seen.add((org, rule))

    seen = set()
    for user, options, status, rule, org, field in BEFORE_ANY_SERVER:
        walk(user, "", options, status, rule, org, field)
    for user, options in (
        ("ann", {"image": "python", "gpus": 1, "gpu_model": "A100"}),
        ("fay", {"image": "python", "gpus": 2, "gpu_model": "H100"}),
    ):
        assert hub.spawn(user, options).status_code in (201, 202)
        hub.wait_ready(user)
    for case in WHILE_HELD:
        walk(*case)

    ledger = counts(hub)
    assert set(ledger) == seen, ledger  # each refusal counted under its own (org, rule), nothing else
    registry, sampler = build_usage_exporter(load_site(hub.site_path), registry=CollectorRegistry())
    assert sampler.refresh() is not None
    for org, rule in sorted(seen):
        metric = registry.get_sample_value("gpuhub_spawn_refusals_total", {"org": org, "reason": rule})
        assert metric == ledger[(org, rule)] >= 1, (org, rule, metric, ledger)
    for user in ("ann", "fay"):
        hub.stop_server(user)
