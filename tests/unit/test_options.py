"""The user_options contract, shared by the form and the REST API."""

from pathlib import Path

import pytest

from gpuhub.core.site import load_site
from gpuhub.hub.options import options_from_form, validate_options
from quota.policy import Refusal

SITE = load_site(Path(__file__).resolve().parents[2] / "examples/site.yaml")


def check(options, user="alice", **kw):
    return validate_options(options, SITE, user=user, **kw)


def test_single_org_is_implied_and_values_are_normalised():
    req = check({"image": "pytorch", "gpus": "2", "gpu_model": "H100"})
    assert (req.org, req.gpus, req.gpu_model, req.server_key) == ("gist-ai", 2, "H100", "alice/")


def test_user_in_two_orgs_must_choose():
    with pytest.raises(Refusal) as e:
        check({"image": "pytorch", "gpus": 1}, user="bob")
    assert e.value.rule == "org-required" and "gist-ai, cnuh-radiology" in e.value.message
    assert check({"image": "pytorch", "gpus": 1, "org": "cnuh-radiology"}, user="bob").org == "cnuh-radiology"


@pytest.mark.parametrize(
    "options,user,status,rule",
    [
        ({"gpus": -1}, "alice", 400, "gpus-negative"),
        ({"gpus": "-1"}, "alice", 400, "gpus-type"),
        ({"gpus": 1.5}, "alice", 400, "gpus-type"),
        ({"gpus": "1e3"}, "alice", 400, "gpus-type"),
        ({"gpus": None, "image": 3}, "alice", 400, "image-type"),
        ({"gpus": [1]}, "alice", 400, "gpus-type"),
        ({"image": "pytorch", "gpus": 3}, "alice", 400, "max-gpus-per-server"),
        ({"image": "tensorflow"}, "alice", 400, "unknown-image"),
        ({"org": "cnuh-radiology"}, "alice", 403, "not-a-member"),
        ({"org": "nasa"}, "alice", 400, "unknown-org"),
        ({"gpus": 1}, "mallory", 403, "no-organization"),
        ({"gpus": 1, "gpu_model": "TPU"}, "alice", 400, "unknown-model"),  # was "unknown-gpu-model" (issue 11)
        ({"env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, "alice", 400, "unknown-option"),
        ({"image": "p" * 10_000}, "alice", 400, "image-length"),
    ],
)
def test_refusals_carry_status_rule_and_a_message(options, user, status, rule):
    with pytest.raises(Refusal) as e:
        check(options, user=user)
    assert (e.value.status, e.value.rule) == (status, rule)
    assert len(e.value.message) > 20


def test_user_without_org_may_start_cpu_only():
    assert check({"image": "python", "gpus": 0}, user="mallory").org is None


def test_form_fields_become_the_same_contract():
    opts = options_from_form({"image": ["pytorch"], "gpus": ["1"], "gpu_model": ["H100"], "org": ["gist-ai"]})
    assert opts == {"image": "pytorch", "gpus": "1", "gpu_model": "H100", "org": "gist-ai"}
    assert check(opts).gpus == 1


def test_the_wait_in_line_checkbox_becomes_queue():
    form = {"image": ["pytorch"], "gpus": ["1"], "org": ["gist-ai"]}
    assert options_from_form({**form, "queue": ["0", "1"]})["queue"] is True  # hidden 0, then the checked box
    assert options_from_form({**form, "queue": ["0"]})["queue"] is False  # unchecked: refused at once when busy
    assert "queue" not in options_from_form(form)  # a form without the box: the default (wait in line)
