"""The spawn form's disabled and busy options: each one's reason and rule id are the policy's own refusal.

A refusal that waiting can fix (429: GPUs busy now) leaves the option selectable and marked busy, since the
request then waits in line; any other refusal disables it."""

from pathlib import Path

from gpuhub.core.site import load_site
from gpuhub.hub.form import form_context, snapshot_of
from quota.policy import AllocationRequest, decide

SITE = load_site(Path(__file__).resolve().parents[2] / "examples/site.yaml")
DEVICES = [d.uuid for d in SITE.gpus.devices]  # 2 H100, 2 A100


def status(held: dict[str, tuple[str, str]], used: dict[str, float] | None = None) -> dict:
    """A quota-store status: ``held`` = {device uuid: (user, org)}, ``used`` = {org: GPU-hours this month}."""
    devices = [
        {
            "uuid": d.uuid,
            "model": d.model,
            "holder": {"server_key": f"{held[d.uuid][0]}/", "user": held[d.uuid][0], "org": held[d.uuid][1]}
            if d.uuid in held
            else None,
        }
        for d in SITE.gpus.devices
    ]
    orgs = {
        k: {"used_gpu_hours": (used or {}).get(k, 0.0), "gpus_in_use": sum(o == k for _, o in held.values())}
        for k in SITE.organizations
    }
    return {"orgs": orgs, "devices": devices}


def disabled(ctx: dict, kind: str, flag: str = "disabled") -> dict:
    key = {"gpu_counts": "value", "models": "name", "images": "key", "orgs": "key"}[kind]
    return {o[key]: (o["rule"], o["reason"]) for o in ctx[kind] if o[flag]}


def busy(ctx: dict, kind: str) -> dict:
    return disabled(ctx, kind, "busy")


def test_nothing_is_disabled_when_everything_is_free():
    ctx = form_context(SITE, status({}), "alice")
    assert [o["key"] for o in ctx["orgs"]] == ["gist-ai"] and ctx["orgs"][0]["checked"]
    assert not any(disabled(ctx, kind) for kind in ("gpu_counts", "models", "images", "orgs"))
    assert [n["value"] for n in ctx["gpu_counts"]] == [0, 1, 2]


def test_a_full_organization_marks_gpus_busy_with_the_policys_sentence():
    st = status({DEVICES[0]: ("dan", "gist-ai"), DEVICES[2]: ("dan", "gist-ai")})  # someone else holds both
    ctx = form_context(SITE, st, "alice")
    refusal = decide(SITE, AllocationRequest("alice", "", "gist-ai", "pytorch", 1), snapshot_of(st, "gist-ai"))
    assert busy(ctx, "gpu_counts")[1] == ("org-gpu-limit", refusal.message)
    assert "gist-ai has 2 of 2 GPUs in use" in refusal.message
    assert busy(ctx, "models")["H100"][0] == "org-gpu-limit"
    assert not disabled(ctx, "gpu_counts") and not disabled(ctx, "models")  # selectable: the request waits in line
    assert ctx["queue"] is True  # "Wait in line if the GPUs are busy" is checked by default
    # bob may still charge cnuh-radiology: an option stays open when one of the user's organizations admits it
    assert 1 not in busy(form_context(SITE, st, "bob"), "gpu_counts")


def test_busy_devices_wait_but_a_refusal_waiting_cannot_fix_stays_disabled():
    st = status(dict.fromkeys(DEVICES, ("dan", "cnuh-radiology")))  # every GPU held; gist-ai is under its cap
    bob = form_context(SITE, st, "bob")
    assert busy(bob, "gpu_counts")[1][0] == "no-free-device" and busy(bob, "models")["A100"][0] == "no-free-device"
    assert 1 not in disabled(bob, "gpu_counts") and "A100" not in disabled(bob, "models")
    spent = form_context(SITE, status({}, used={"gist-ai": 100.0}), "alice")
    assert disabled(spent, "gpu_counts")[1][0] == "budget-exhausted"  # waiting refills no budget: disabled
    assert not busy(spent, "gpu_counts")


def test_no_organization_and_a_spent_budget():
    ctx = form_context(SITE, status({}), "mallory")
    assert ctx["orgs"] == [] and {r for r, _ in disabled(ctx, "gpu_counts").values()} == {"no-organization"}
    assert {r for r, _ in disabled(ctx, "models").values()} == {"no-organization"}
    assert not disabled(ctx, "images")  # CPU-only servers without an organization are allowed here
    spent = form_context(SITE, status({}, used={"gist-ai": 100.0}), "alice")
    (org,) = spent["orgs"]
    assert not org["disabled"] and org["rule"] == "budget-exhausted" and "100.00 of 100" in org["reason"]
    assert disabled(spent, "gpu_counts")[1][0] == "budget-exhausted"
