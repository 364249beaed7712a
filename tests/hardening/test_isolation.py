"""Hardened user containers, checked from inside real containers spawned through the hub."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from tests.harness import BASE_IMAGE, HubProcess
from tests.procs import cleaned_up

pytestmark = pytest.mark.docker
EVIL_IMAGE = "gpuhub-test/evil-env:latest"


@pytest.fixture(scope="module")
def evil_image(docker_client):
    """An image whose ENV tries to widen GPU visibility."""
    dockerfile = f"FROM {BASE_IMAGE}\nENV NVIDIA_VISIBLE_DEVICES=all CUDA_VISIBLE_DEVICES=0,1,2,3\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    docker_client.images.build(fileobj=buf, custom_context=True, tag=EVIL_IMAGE, rm=True)
    yield EVIL_IMAGE
    docker_client.images.remove(EVIL_IMAGE, force=True)


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client, evil_image):
    tmp = tmp_path_factory.mktemp("hardening")
    h = HubProcess(tmp)
    h.site["images"]["evil"] = {"image": evil_image, "display_name": "ENV tries NVIDIA_VISIBLE_DEVICES=all"}
    h.site_path.write_text(__import__("yaml").safe_dump(h.site))
    with cleaned_up(request, h):
        h.start()
        for user in ("alice", "carol"):
            assert h.spawn(user, {"image": "python"}).status_code in (201, 202)
        for user in ("alice", "carol"):
            h.wait_ready(user)
        yield h


def sh(hub, user, code):
    return hub.run_code(user, code).strip()


def test_each_user_runs_as_their_own_non_root_uid(hub):
    a = int(sh(hub, "alice", "import os; print(os.getuid())"))
    c = int(sh(hub, "carol", "import os; print(os.getuid())"))
    assert a != 0 and c != 0 and a != c
    assert sh(hub, "alice", "import os; print(os.getgid())") == str(a)
    # the home volume belongs to the user
    assert sh(hub, "alice", "import os; print(os.stat('/home/jovyan').st_uid)") == str(a)


def test_no_capabilities_no_new_privileges_no_docker_socket(hub):
    status = sh(hub, "alice", "print(open('/proc/self/status').read())")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapEff"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert (
        sh(
            hub,
            "alice",
            "import os; print(os.path.exists('/var/run/docker.sock') or os.path.exists('/run/docker.sock'))",
        )
        == "False"
    )
    assert "Read-only file system" in sh(hub, "alice", "open('/etc/gpuhub-test', 'w')")


def test_docker_inspect_shows_the_limits(hub):
    (c,) = hub.containers(user="alice")
    hc = c.attrs["HostConfig"]
    assert hc["PidsLimit"] == 256
    assert hc["Memory"] == 1024**3
    assert hc["CpuQuota"] == 100_000 and hc["CpuPeriod"] == 100_000
    assert hc["CpuShares"] == 512  # containers.cpu_shares' default: half the weight of the hub (docker-bench 5.12)
    assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    assert "no-new-privileges" in hc["SecurityOpt"]
    assert hc["Privileged"] is False and hc["ReadonlyRootfs"] is True
    assert hc["NetworkMode"] == hub.site["hub"]["network"]
    assert hc["PidMode"] in ("", "private") and hc["IpcMode"] in ("private", "shareable", "")
    assert not any("docker.sock" in b for b in hc.get("Binds") or [])
    assert c.attrs["Config"]["User"].split(":")[0] != "0"


def test_fork_bomb_hits_the_pids_limit_and_spares_the_other_user(hub):
    code = r'''
import os, signal, subprocess, sys, time
script = """
import os, time
kids = []
try:
    for i in range(2000):
        pid = os.fork()
        if pid == 0:
            time.sleep(20); os._exit(0)
        kids.append(pid)
except OSError as e:
    print('stopped', len(kids), e.errno)
for k in kids:
    os.kill(k, 9)
"""
print(subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60).stdout)
'''
    out = sh(hub, "alice", code)
    assert out.startswith("stopped"), out
    assert int(out.split()[1]) < 256
    assert sh(hub, "carol", "print(sum(range(10)))") == "45"


def test_network_isolation_between_users_and_from_the_proxy_api(hub):
    (b,) = hub.containers(user="carol")
    b_ip = next(iter(b.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    gateway = json.loads(sh(hub, "alice", "import os, json; print(json.dumps(os.environ['JUPYTERHUB_API_URL']))"))
    gw_ip = gateway.split("//")[1].split(":")[0]
    probe = """
import socket
def can(host, port):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); return True
    except OSError:
        return False
    finally:
        s.close()
print(can(%r, 8888), can(%r, %d), can(%r, %d), can(%r, %d))
""" % (b_ip, gw_ip, hub.site["hub"]["proxy_api_port"], gw_ip, hub.port, gw_ip, hub.site["hub"]["api_port"])  # noqa: UP031 - %r writes Python literals into the probe source
    to_b, to_proxy_api, to_proxy, to_hub_api = sh(hub, "alice", probe).split()
    assert to_b == "False", "user A reached user B's server"
    assert to_proxy_api == "False", "user A reached the proxy's API"
    assert to_proxy == "False", "user A reached the proxy's public port on the host"
    assert to_hub_api == "True", "the hub API must stay reachable for the single-user server"
    assert sh(hub, "alice", "print('own server works')") == "own server works"


def test_image_env_cannot_widen_gpu_visibility(hub):
    assert hub.spawn("bob", {"image": "evil", "gpus": 1, "gpu_model": "H100", "org": "gist-ai"}).status_code in (
        201,
        202,
    )
    hub.wait_ready("bob")
    (c,) = hub.containers(user="bob")
    granted = c.labels["gpuhub.gpus"]
    seen = sh(hub, "bob", "import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'], os.environ['CUDA_VISIBLE_DEVICES'])")
    assert seen.split() == [granted, "0"]
    hub.stop_server("bob")
