"""Admission policy: one row per rule; each refusal names the rule, the numbers and the fix."""

import pytest
from quotakit import make_site

from gpuhub.core.site import Device
from quota.policy import AllocationRequest, Decision, Holding, Refusal, Snapshot, decide


def req(user="alice", org="lab-a", gpus=1, image="python", model=None, server="", groups=frozenset()):
    return AllocationRequest(user, server, org, image, gpus, model, groups)


def held(uuid, user="x", org="lab-a", model="H100"):
    return Holding(uuid, f"{user}/", user, org, model)


H = [f"GPU-h100-{i}" for i in range(4)]
A = [f"GPU-a100-{i}" for i in range(4)]

REFUSALS = [
    # (id, request, snapshot, status, rule, words that must appear)
    # issue 11, one vocabulary: "invalid-gpus" became the parser's "gpus-negative" / "gpus-type"
    ("negative-gpus", req(gpus=-1), Snapshot(), 400, "gpus-negative", ["-1", ">= 0"]),
    ("bool-gpus", req(gpus=True), Snapshot(), 400, "gpus-type", ["True"]),
    (
        "already-running",
        req(),
        Snapshot(open_servers=frozenset({"alice/"})),
        409,
        "server-already-running",
        ["alice/", "stop it"],
    ),
    # issue 11: an organization the site does not have is "unknown-org" (400), as the REST parser said
    ("unknown-org", req(org="nope"), Snapshot(), 400, "unknown-org", ["nope", "lab-a"]),
    (
        "not-member",
        req(user="carol", org="lab-a"),
        Snapshot(),
        403,
        "not-a-member",
        ["carol", "lab-a", "lab-b", "ask an operator"],
    ),
    # issue 11: the policy now implies a user's only organization (the user_options contract), so "no org"
    # is a user in none ("no-organization", as the REST parser said) or in several ("org-required")
    (
        "gpu-without-org",
        req(user="zed", org=None, gpus=1),
        Snapshot(),
        403,
        "no-organization",
        ["zed", "GPU servers", "0 GPUs"],
    ),
    ("several-orgs", req(user="bob", org=None, gpus=1), Snapshot(), 400, "org-required", ["lab-a, lab-b", "'org'"]),
    ("image-not-in-org", req(image="torch"), Snapshot(), 403, "image-not-allowed", ["torch", "lab-a", "python, cpu"]),
    # issue 11: an image outside the catalog is "unknown-image" (400), as the REST parser said
    ("image-not-in-catalog", req(image="evil/miner"), Snapshot(), 400, "unknown-image", ["evil/miner", "catalog"]),
    ("gpu-on-cpu-image", req(image="cpu", gpus=1), Snapshot(), 400, "image-cpu-only", ["cpu", "1 GPU"]),
    ("unknown-model", req(model="B200"), Snapshot(), 400, "unknown-model", ["B200", "H100", "A100"]),
    (
        "max-per-server",
        req(gpus=3),
        Snapshot(),
        400,
        "max-gpus-per-server",
        ["at most 2", "3 requested", "max_gpus_per_server"],
    ),
    (
        "budget",
        req(),
        Snapshot(org_used_gpu_seconds=99.95 * 3600),
        403,
        "budget-exhausted",
        ["99.95 of 100", "0.05 remaining", "0.1 needed", "gpu_hours_per_month"],
    ),
    (
        "budget-over",
        req(),
        Snapshot(org_used_gpu_seconds=120 * 3600),
        403,
        "budget-exhausted",
        ["120.00 of 100", "0.00 remaining"],
    ),
    (
        "user-cap",
        req(user="bob", gpus=2),
        Snapshot(holdings=(held(H[0], "bob", "lab-b"), held(H[1], "bob"))),
        429,
        "user-gpu-limit",
        ["holds 2 of 3", "2 more", "stop one"],
    ),
    (
        "org-cap",
        req(gpus=2),
        Snapshot(holdings=(held(H[0], "bob"), held(H[1], "bob"))),
        429,
        "org-gpu-limit",
        ["lab-a has 2 of 3", "2 more", "raise gpu_limit"],
    ),
    (
        "no-free-model",
        req(gpus=2, model="H100"),
        Snapshot(holdings=tuple(held(u, "dave", "lab-c") for u in H[:3])),
        429,
        "no-free-device",
        ["1 of 4 H100", "2 were requested", "4 A100"],
    ),
    (
        "no-free-any",
        req(user="dave", org="lab-c", gpus=2),
        Snapshot(holdings=tuple(held(u, "x", "lab-b") for u in H[:3] + A[:3])),
        429,
        "no-free-device",
        ["no GPU model has 2 free", "1 A100, 1 H100", "6 of 8 GPUs in use"],
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_every_rule_refuses_with_numbers(case):
    _, request, snap, status, rule, words = case
    out = decide(make_site(), request, snap)
    assert isinstance(out, Refusal), out
    assert (out.status, out.rule) == (status, rule)
    for w in words:
        assert w in out.message, (w, out.message)


def test_cpu_only_servers_without_org_follow_the_site_switch():
    assert decide(make_site(), req(org=None, gpus=0), Snapshot()) == Decision((), None, 0.0)
    strict = make_site(hub={"allow_cpu_without_org": False})
    assert isinstance(decide(strict, req(org=None, gpus=0), Snapshot()), Decision)  # alice's only org: lab-a
    out = decide(strict, req(user="zed", org=None, gpus=0), Snapshot())  # issue 11: was "not-a-member"
    assert isinstance(out, Refusal) and out.rule == "no-organization" and "allow_cpu_without_org" in out.message


def test_idp_group_grants_membership():
    out = decide(
        make_site(), req(user="erin", org="lab-b", image="python", groups=frozenset({"lab-b-staff"})), Snapshot()
    )
    assert isinstance(out, Decision) and len(out.devices) == 1


def test_no_model_picks_the_model_with_most_free_devices_then_cheaper():
    site = make_site()
    # all free: tie 4/4 -> the cheaper A100 (weight 0.5)
    assert decide(site, req(gpus=2), Snapshot()) == Decision((A[0], A[1]), "A100", 0.5)
    # one A100 taken: H100 has more free
    out = decide(site, req(gpus=2), Snapshot(holdings=(held(A[0], "x", "lab-b", "A100"),)))
    assert out == Decision((H[0], H[1]), "H100", 1.0)
    # a model that cannot fit the request is skipped even if it is the only one with free devices
    hold = tuple(held(u, "x", "lab-c", "H100") for u in H[:3]) + (held(A[0], "y", "lab-c", "A100"),)
    assert decide(site, req(gpus=2), Snapshot(holdings=hold)).model == "A100"


def test_named_model_and_inventory_override():
    site = make_site()
    assert decide(site, req(model="H100"), Snapshot()).devices == (H[0],)
    inv = (Device("GPU-live-0", "H100"),)
    assert decide(site, req(), Snapshot(inventory=inv)).devices == ("GPU-live-0",)


def test_budget_just_enough_is_admitted_and_zero_budget_never():
    site = make_site()
    assert isinstance(decide(site, req(), Snapshot(org_used_gpu_seconds=99.9 * 3600)), Decision)
    zero = make_site(organizations={"lab-z": {"members": ["alice"], "gpu_limit": 1, "gpu_hours_per_month": 0}})
    out = decide(zero, req(org="lab-z"), Snapshot())
    assert isinstance(out, Refusal) and out.rule == "budget-exhausted" and "0.00 of 0" in out.message


def test_refusals_stop_at_the_most_permanent_rule():
    # over budget AND over the org cap: the budget (403) is reported, not the transient cap (429)
    out = decide(
        make_site(), req(), Snapshot(org_used_gpu_seconds=200 * 3600, holdings=tuple(held(u, "bob") for u in H[:3]))
    )
    assert out.rule == "budget-exhausted"


def test_the_policy_fills_in_the_org_and_the_image():
    site = make_site(
        organizations={
            "lab-z": {"members": ["alice"], "gpu_limit": 2, "gpu_hours_per_month": 10, "images": ["cpu", "torch"]}
        }
    )
    gpu = decide(site, req(org=None, image=None, gpus=1), Snapshot())
    cpu = decide(site, req(org=None, image=None, gpus=0), Snapshot())
    assert (gpu.request.org, gpu.request.image) == ("lab-z", "torch")  # the first GPU image for a GPU server
    assert (cpu.request.org, cpu.request.image) == ("lab-z", "cpu")  # else the organization's first
