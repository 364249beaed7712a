"""Operator DockerSpawner config beside ours (gpuhub.hub.container): what merges, what is refused and why."""

from pathlib import Path

import pytest

from gpuhub.core.site import SiteConfigError, load_site, parse_site
from gpuhub.hub.container import deep_merge, operator_problems, our_layer
from quota.policy import AllocationRequest
from quota.store import Grant

SITE = load_site(Path(__file__).resolve().parents[2] / "examples/site.yaml")
HOME = ("gpuhub-home-alice", "/home/jovyan")


def problems(create=None, host=None, binds=None):
    return operator_problems(create or {}, host or {}, binds or {"gpuhub-home-alice": {"bind": "/home/jovyan"}}, HOME)


def test_additions_merge_without_a_word():
    assert (
        problems(
            {"labels": {"site.team": "vision"}, "hostname": "lab"},
            {"shm_size": "1g", "ulimits": [], "cpu_period": 50_000},
            {"gpuhub-home-alice": {"bind": "/home/jovyan"}, "/srv/data": {"bind": "/data", "mode": "ro"}},
        )
        == []
    )


@pytest.mark.parametrize(
    "create,host,words",
    [
        ({}, {"privileged": True}, ["extra_host_config['privileged'] is refused", "hardened", "remove it"]),
        ({}, {"cap_drop": []}, ["extra_host_config['cap_drop']", "every capability dropped"]),
        ({}, {"security_opt": ["seccomp=unconfined"]}, ["extra_host_config['security_opt']", "no new privileges"]),
        ({}, {"read_only": False}, ["extra_host_config['read_only']", "containers.read_only_root instead"]),
        ({}, {"pids_limit": -1}, ["extra_host_config['pids_limit']", "containers.pids_limit instead"]),
        ({}, {"mem_limit": "64g"}, ["c.GpuhubSpawner.mem_limit", "containers.mem_limit"]),
        ({}, {"cpu_shares": 1024}, ["c.GpuhubSpawner.cpu_shares", "containers.cpu_shares"]),
        ({}, {"network_mode": "host"}, ["hub.network"]),
        ({"user": "0"}, {}, ["extra_create_kwargs['user'] is refused", "the user's own UID"]),
        ({"environment": {"NVIDIA_VISIBLE_DEVICES": "all"}}, {}, ["c.GpuhubSpawner.environment"]),
        ({"image": "evil/miner"}, {}, ["the site config's images"]),
        ({"labels": {"gpuhub.gpus": "GPU-x"}}, {}, ["'gpuhub.gpus'", "labels starting with 'gpuhub.'"]),
    ],
)
def test_what_would_weaken_or_overwrite_ours_is_refused_by_name(create, host, words):
    (message,) = problems(create, host)
    for w in words:
        assert w in message, (w, message)


def test_a_volume_over_the_home_is_refused():
    (message,) = problems(binds={"/srv/other": {"bind": "/home/jovyan", "mode": "rw"}})
    assert "'/srv/other' at /home/jovyan" in message and "gpuhub-home-alice" in message


def test_our_layer_is_applied_last_and_carries_the_hardening():
    request = AllocationRequest("alice", "", "gist-ai", "python", 1, "H100")
    grant = Grant("alice/", ["GPU-sim-h100-0"], "H100", 1.0, 1)
    create, host = our_layer(
        SITE,
        request,
        grant,
        hub_instance="gpuhub",
        user="alice",
        server_name="",
        uid=20000,
        network="gpuhub-users",
        mem_limit=4 * 1024**3,
        cpu_limit=2.0,
        cpu_shares=512,
        cpu_period=50_000,
    )
    assert create["user"] == "20000:20000" and create["labels"]["gpuhub.gpus"] == "GPU-sim-h100-0"
    assert (host["cap_drop"], host["security_opt"], host["privileged"]) == (["ALL"], ["no-new-privileges"], False)
    assert (host["read_only"], host["pids_limit"], host["cpu_shares"]) == (True, 512, 512)
    assert (host["cpu_period"], host["cpu_quota"]) == (50_000, 100_000)  # the operator's cpu_period is kept
    assert "device_requests" not in host  # runtime: none -- simulated devices, nothing handed to Docker
    merged = deep_merge(deep_merge({"binds": {"h": {}}}, {"shm_size": "1g", "labels": {"x": "1"}}), host)
    assert merged["shm_size"] == "1g" and merged["cap_drop"] == ["ALL"] and merged["binds"] == {"h": {}}


def test_cpu_shares_default_and_range():
    base = {"images": {"python": {"image": "x"}}}
    assert parse_site(base, Path("/tmp/s.yaml")).containers.cpu_shares == 512
    assert parse_site({**base, "containers": {"cpu_shares": 256}}, Path("/tmp/s.yaml")).containers.cpu_shares == 256
    with pytest.raises(SiteConfigError, match=r"containers.cpu_shares: 1 is not allowed; allowed: an integer from 2"):
        parse_site({**base, "containers": {"cpu_shares": 1}}, Path("/tmp/s.yaml"))


def test_a_rate_for_an_undeclared_model_blames_the_model_not_the_price():
    data = {"images": {"python": {"image": "x"}}, "gpus": {"models": {"H100": {"weight": 1}}}, "rates": {"A100": 4000}}
    with pytest.raises(SiteConfigError) as e:
        parse_site(data, Path("/tmp/s.yaml"))
    assert str(e.value).startswith("rates.A100: 'A100' is not a GPU model in gpus.models; declare it there")
    assert "models: H100" in str(e.value) and "price" not in str(e.value)
    with pytest.raises(SiteConfigError, match=r"rates.H100: expected a price >= 0 per weighted GPU-hour, got -1"):
        parse_site({**data, "rates": {"H100": -1}}, Path("/tmp/s.yaml"))
