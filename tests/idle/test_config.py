"""apply_idle only sets config; the idle section and per-org/course timeouts validate with useful errors;
the HTTP culler's arbiter leaves GPU servers alone; the home-page banner text."""

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from gpuhub.core.site import SiteConfigError, load_site
from gpuhub.hub import hubconfig
from gpuhub.hub.idle_config import HTTP_CULLER, HTTP_CULLER_SCOPES, IDLE_SERVICE, apply_idle
from gpuhub.hub.idle_http import holds_gpus
from gpuhub.hub.idle_service import banner_html, exemption_until
from tests.quota.quotakit import SITE as QUOTA_SITE
from tests.quota.quotakit import make_site
from tests.unit.test_hubconfig import FACTS

SITE = load_site(Path(__file__).resolve().parents[2] / "examples/site.yaml")


def test_apply_idle_adds_both_cullers_with_minimal_scopes_after_apply_services():
    c = Config()
    hubconfig.apply_hub(c, SITE, FACTS)
    hubconfig.apply_services(c, SITE, FACTS)
    apply_idle(c, SITE, FACTS)
    names = [s["name"] for s in c.JupyterHub.services]
    assert names[:2] == ["gpuhub-quota", "gpuhub-metrics"] and names[-2:] == [IDLE_SERVICE, HTTP_CULLER]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles[HTTP_CULLER]["scopes"] == ["list:users", "read:users:activity", "read:servers", "delete:servers"]
    assert roles[HTTP_CULLER]["scopes"] == HTTP_CULLER_SCOPES and roles[HTTP_CULLER]["services"] == [HTTP_CULLER]
    assert set(roles[IDLE_SERVICE]["scopes"]) == {"list:users", "read:servers", "delete:servers", "access:servers"}
    assert "admin" not in roles[IDLE_SERVICE]["scopes"] and "gpuhub-quota" in roles  # apply_services' roles kept
    culler = next(s for s in c.JupyterHub.services if s["name"] == HTTP_CULLER)
    assert culler["command"][1:] == [
        "-m",
        "gpuhub.host.process",
        "gpuhub.hub.idle_http",
        "--timeout=7200",
        "--cull-every=60",
    ]
    assert "gpuhub_quota" in c.JupyterHub.template_vars  # the budget banner stays
    assert callable(c.JupyterHub.template_vars["announcement_home"])


def test_http_culler_timeout_is_the_smallest_of_the_site_org_and_course_ones():
    site = make_site(
        idle={"http_timeout_minutes": 60, "cull_http": True},
        organizations={
            **QUOTA_SITE["organizations"],
            "lab-a": {**QUOTA_SITE["organizations"]["lab-a"], "idle_http_timeout_minutes": 20},
        },
    )
    c = Config()
    apply_idle(c, site, FACTS)
    culler = next(s for s in c.JupyterHub.services if s["name"] == HTTP_CULLER)
    assert culler["command"][-2:] == ["--timeout=1200", "--cull-every=60"]
    c = Config()
    apply_idle(c, make_site(idle={"cull_http": False}), FACTS)
    assert [s["name"] for s in c.JupyterHub.services] == [IDLE_SERVICE]


@pytest.mark.parametrize(
    "idle, message",
    [
        ({"gpu_threshold": 1.5}, "idle.gpu_threshold: 1.5 is not allowed; allowed: a number in [0, 1)"),
        ({"timeout_minutes": 0}, "idle.timeout_minutes: 0.0 is not allowed; allowed: minutes > 0"),
        ({"gpu_exporters": ["gpu-host:9835"]}, "idle.gpu_exporters[0]: 'gpu-host:9835' is not allowed"),
        ({"window": 30}, "idle.window: unknown key"),
    ],
)
def test_idle_section_errors_name_the_key_and_what_is_allowed(idle, message):
    with pytest.raises(SiteConfigError) as e:
        make_site(idle=idle)
    assert message in str(e.value)


def test_org_idle_timeout_must_be_positive():
    orgs = {
        **QUOTA_SITE["organizations"],
        "lab-a": {**QUOTA_SITE["organizations"]["lab-a"], "idle_timeout_minutes": -5},
    }
    with pytest.raises(SiteConfigError, match=r"organizations.lab-a.idle_timeout_minutes: -5.0 is not allowed"):
        make_site(organizations=orgs)


@pytest.mark.parametrize(
    "options, gpu",
    [
        ({"gpus": 1}, True),
        ({"gpus": "2"}, True),
        ({"gpus": 0}, False),
        ({}, False),
        (None, False),
        ({"gpus": "many"}, True),
    ],
)
def test_http_culler_leaves_gpu_servers_and_unreadable_counts_alone(options, gpu):
    assert holds_gpus(options) is gpu


def test_exemptions_by_server_user_and_org():
    ex = {"servers": {"alice/big": 100.0, "bob/*": 200.0}, "orgs": {"lab-a": 300.0}}
    assert exemption_until(ex, "alice/big", None) == 100.0
    assert exemption_until(ex, "alice/", None) is None
    assert exemption_until(ex, "bob/", "lab-b") == 200.0
    assert exemption_until(ex, "carol/", "lab-a") == 300.0


def test_banner_names_gpus_idle_time_and_stop_time_and_escapes():
    status = {
        "servers": {
            "alice/<b>": {
                "user": "alice",
                "warned": True,
                "devices": ["GPU-1"],
                "idle_seconds": 1260,
                "cull_at": 1_800_000_600.0,
            }
        },
        "culled": [
            {
                "key": "alice/old",
                "user": "alice",
                "server": "old",
                "at": 1_800_000_000.0,
                "devices": "GPU-2",
                "idle_seconds": 1800,
                "kind": "gpu",
            },
            {"key": "bob/", "user": "bob", "server": "", "at": 1_800_000_000.0, "kind": "http"},
        ],
    }
    html = banner_html("alice", status, 1_800_000_000.0 + timedelta(minutes=1).total_seconds())
    assert "&lt;b&gt;" in html and "GPU-1" in html and "idle for 21 min 00 s" in html
    assert "will be stopped at 08:10:00 UTC (in 9 min 00 s)" in html
    assert "was stopped at 08:00 UTC because its GPUs GPU-2 were idle for 30 min 00 s" in html
    assert banner_html("carol", status, 1_800_000_000.0) == ""


def test_http_arbiter_uses_the_org_timeout_and_notes_its_culls(tmp_path, monkeypatch):
    from gpuhub.hub import idle_http
    from gpuhub.hub.idle_state import HTTP_CULLS_FILE, read_json

    orgs = {
        **QUOTA_SITE["organizations"],
        "lab-a": {**QUOTA_SITE["organizations"]["lab-a"], "idle_http_timeout_minutes": 240},
    }
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {
                **QUOTA_SITE,
                "organizations": orgs,
                "hub": {"state_dir": str(tmp_path)},
                "idle": {"http_timeout_minutes": 60},
            }
        )
    )
    monkeypatch.setenv("GPUHUB_SITE_CONFIG", str(site_file))

    def cull(user, options, minutes):
        return idle_http.arbiter(
            inactive=timedelta(minutes=minutes),
            inactive_limit=3600,
            server={"full_name": f"{user}/", "user_options": options},
        )

    assert not cull("alice", {"gpus": 0, "org": "lab-a"}, 200)  # lab-a allows 4 h
    assert cull("alice", {"gpus": 0, "org": "lab-a"}, 241)
    assert not cull("carol", {"gpus": 0}, 59) and cull("carol", {"gpus": 0}, 61)  # lab-b: the site's 60 min
    assert not cull("carol", {"gpus": 1}, 10_000)  # a GPU server is gpuhub-idle's, however idle over HTTP
    assert [i["key"] for i in read_json(tmp_path / HTTP_CULLS_FILE, [])] == ["alice/", "carol/"]
