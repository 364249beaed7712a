"""gpuhub idle exempt / status: what is written, what is shown, and the errors (exit 2, rule and fix)."""

import json

import pytest

from gpuhub.cli import main
from gpuhub.hub.idle_state import EXEMPTIONS_FILE, STATUS_FILE, write_json
from gpuhub.idle_cli import UsageError, exempt, status_rows
from tests.quota.quotakit import make_site

NOW = 1_800_000_000.0
PAST = 1_700_000_000.0  # for the status file: long before the real clock


@pytest.fixture
def site(tmp_path):
    s = make_site(hub={"state_dir": str(tmp_path)})
    (tmp_path / "site.yaml").write_text(json.dumps(s.raw))
    return s


def exemptions(site):
    return json.loads((site.hub.state_dir / EXEMPTIONS_FILE).read_text())


def test_exempt_a_server_a_user_and_an_org_then_remove(site):
    assert exempt(site, "alice/big", None, 2, NOW) == (
        "alice's server big: exempt from idle culling until 2027-01-15 10:00 UTC"
    )
    assert exempt(site, "bob", None, 1, NOW).startswith("all of bob's servers: exempt")
    assert exempt(site, "carol/", None, 1, NOW).startswith("carol's server default: exempt")
    assert exempt(site, None, "lab-b", 24, NOW).startswith("organization lab-b: exempt")
    assert exemptions(site) == {
        "servers": {"alice/big": NOW + 7200, "bob/*": NOW + 3600, "carol/": NOW + 3600},
        "orgs": {"lab-b": NOW + 86400},
    }
    assert exempt(site, "bob", None, 0, NOW) == "all of bob's servers: exemption removed"
    assert exempt(site, "carol/", None, 1, NOW + 7200)  # later: the expired ones are dropped
    assert exemptions(site)["servers"] == {"carol/": NOW + 10800}


@pytest.mark.parametrize(
    "target, org, hours, message",
    [
        ("alice", None, -1, "--hours -1: must be >= 0 (0 removes the exemption)"),
        ("alice", "lab-a", 1, "give either USER[/SERVER] or --org ORG (exactly one)"),
        (None, "nope", 1, "--org 'nope': not an organization in the site config; declared: lab-a, lab-b, lab-c"),
        ("a/b/c", None, 1, "'a/b/c': expected USER (all their servers), USER/ (the default server) or USER/SERVER"),
    ],
)
def test_exempt_errors(site, target, org, hours, message):
    with pytest.raises(UsageError) as e:
        exempt(site, target, org, hours, NOW)
    assert str(e.value) == message


def test_status_table_and_errors(site, capsys):
    assert main(["--site", str(site.hub.state_dir / "site.yaml"), "idle", "status"]) == 2
    assert capsys.readouterr().err.startswith("gpuhub: error: no idle status in ")
    write_json(
        site.hub.state_dir / STATUS_FILE,
        {
            "at": PAST,
            "interval": 30,
            "culled": [],
            "servers": {
                "alice/": {
                    "user": "alice",
                    "org": "lab-a",
                    "devices": ["GPU-h100-0"],
                    "idle_seconds": 1500.0,
                    "timeout_seconds": 1800.0,
                    "warn_at": PAST - 300,
                    "cull_at": PAST + 600,
                    "warned": True,
                    "exempt": False,
                    "reason": "idle",
                },
                "bob/": {
                    "user": "bob",
                    "org": "lab-a",
                    "devices": ["GPU-h100-1"],
                    "idle_seconds": 60.0,
                    "timeout_seconds": 1800.0,
                    "warn_at": PAST + 1140,
                    "cull_at": PAST + 1740,
                    "warned": False,
                    "exempt": False,
                    "reason": "active",
                },
            },
        },
    )
    rows = {r["server"]: r for r in status_rows(json.loads((site.hub.state_dir / STATUS_FILE).read_text()), PAST)}
    assert rows["alice/"] == {
        "server": "alice/",
        "org": "lab-a",
        "gpus": "GPU-h100-0",
        "idle": "25 min 00 s",
        "timeout": "30 min 00 s",
        "to_warning": "-",
        "to_cull": "10 min 00 s",
        "state": "warned",
    }
    assert rows["bob/"]["to_warning"] == "19 min 00 s" and rows["bob/"]["to_cull"] == "29 min 00 s"
    assert main(["--site", str(site.hub.state_dir / "site.yaml"), "idle", "status"]) == 0
    out = capsys.readouterr().out
    assert "is the hub (and gpuhub-idle) running?" in out  # written long ago: the hub is not running
    assert out.splitlines()[1].split()[0] == "SERVER" and "warned" in out
