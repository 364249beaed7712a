"""An operator's own DockerSpawner config in an extra JupyterHub config file, through a real hub.

The extra file is how an operator adds JupyterHub config without editing ours: it loads
``jupyterhub_config.py`` with ``load_subconfig`` and then sets its own values (``gpuhub run --config
extra.py`` or ``jupyterhub -f extra.py``). What only adds to ours is honoured — ``mem_limit`` replaces the
site's ``containers.mem_limit`` default, extra host config and labels are merged, a replaced ``volumes``
still gets the home volume — and the hardening stays; what would weaken or overwrite ours is refused with a
message naming the key and where to set it instead, before any GPU is allocated or container created.
"""

from __future__ import annotations

import pytest

from tests.harness import ROOT, HubProcess
from tests.procs import module_failed

pytestmark = pytest.mark.docker


def start_with_extra(tmp_path, lines: str) -> HubProcess:
    """A hub started with ``-f extra_config.py``: ours through load_subconfig, then the operator's ``lines``."""
    tmp_path.mkdir()
    hub = HubProcess(tmp_path)
    extra = tmp_path / "extra_config.py"
    extra.write_text(f"c = get_config()\nload_subconfig({str(ROOT / 'jupyterhub_config.py')!r})\n{lines}")
    hub.config_file = extra
    return hub.start()


@pytest.fixture
def hubs(request, tmp_path, docker_client):
    made = []

    def make(lines: str) -> HubProcess:
        made.append(start_with_extra(tmp_path / f"h{len(made)}", lines))
        return made[-1]

    yield make
    for hub in made:
        if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed or module_failed(request):
            print(hub.dump_logs())
        hub.cleanup()


def test_mem_limit_and_additions_are_honoured_and_the_hardening_stays(hubs, tmp_path):
    data = tmp_path / "datasets"
    data.mkdir()
    (data / "hello.txt").write_text("from the operator's volume")
    data.chmod(0o755)
    (data / "hello.txt").chmod(0o644)
    hub = hubs(
        'c.GpuhubSpawner.mem_limit = "8G"\n'
        'c.GpuhubSpawner.extra_host_config = {"shm_size": "256m"}\n'
        'c.GpuhubSpawner.extra_create_kwargs = {"labels": {"site.team": "vision"}}\n'
        f'c.GpuhubSpawner.volumes = {{{str(data)!r}: {{"bind": "/data", "mode": "ro"}}}}\n'
    )
    r = hub.spawn("alice", {"image": "python", "gpus": 1})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")
    (c,) = hub.containers(user="alice")
    hc = c.attrs["HostConfig"]
    assert hc["Memory"] == 8 * 1024**3  # the operator's mem_limit, not the site's containers.mem_limit (1G)
    assert hc["ShmSize"] == 256 * 1024**2 and c.labels["site.team"] == "vision"  # merged
    assert c.labels["gpuhub.user"] == "alice" and c.labels["gpuhub.gpus"]  # ours too
    assert hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"] and hc["ReadonlyRootfs"] is True
    assert hc["PidsLimit"] == 256 and hc["CpuShares"] == 512 and c.attrs["Config"]["User"].split(":")[0] != "0"
    mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
    assert mounts["/data"]["Type"] == "bind" and mounts["/data"]["RW"] is False
    assert mounts["/home/jovyan"]["Name"] == f"{hub.instance}-home-alice"  # replacing volumes kept the home
    assert hub.run_code("alice", "print(open('/data/hello.txt').read())").strip() == "from the operator's volume"
    assert (
        "c.GpuhubSpawner.mem_limit = 8589934592 from the JupyterHub config is used instead of the site config's "
        "containers.mem_limit" in hub.log_lines("containers.mem_limit")
    )
    hub.stop_server("alice")


def test_config_that_would_weaken_the_hardening_is_refused_by_name(hubs):
    hub = hubs(
        'c.GpuhubSpawner.extra_host_config = {"privileged": True, "pids_limit": -1}\n'
        'c.GpuhubSpawner.extra_create_kwargs = {"user": "0"}\n'
    )
    r = hub.spawn("alice", {"image": "python", "gpus": 1})
    assert r.status_code == 500, r.text
    message = r.json()["message"]
    for words in (
        "c.GpuhubSpawner.extra_host_config['privileged'] is refused",
        "remove it from the JupyterHub config",
        "c.GpuhubSpawner.extra_host_config['pids_limit'] is refused: gpuhub sets it; set the site config's "
        "containers.pids_limit instead",
        "c.GpuhubSpawner.extra_create_kwargs['user'] is refused",
    ):
        assert words in message, (words, message)
    assert hub.containers(all=True, user="alice") == []
    status = hub.api("GET", "/users/alice").json()
    assert status["servers"] == {}, status
    from gpuhub.hub.runtime import quota_store

    assert quota_store(hub.site_path).holdings() == []  # refused before anything was allocated
    assert "the JupyterHub config cannot be merged with gpuhub's" in hub.log_lines("cannot be merged")
