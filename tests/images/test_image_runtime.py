"""Single-user images run the way gpuhub's spawner runs them: arbitrary numeric UID without a
passwd entry, read-only root filesystem, tmpfs /tmp, HOME a volume owned by that UID, all
capabilities dropped, the JUPYTERHUB_* environment of a spawn (a fake hub API answers)."""

from __future__ import annotations

import os
import time

import pytest

from tests.harness import execute

pytestmark = pytest.mark.docker


def _run_code(s, code: str, timeout: float = 60) -> str:
    """Run code in a new kernel of the spawned server (kept running: the tests look at it)."""
    return execute(s.url, s.token, code, timeout=timeout, strict=True, keep_kernel=True)


@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_runs_read_only_as_arbitrary_uid(built, spawn, name):
    built(name)
    s = spawn(f"gpuhub/{name}:latest", uid=61234, read_only=True)
    assert s.get("api").json()["version"]
    rc, out = s.exec(["sh", "-c", "id -u; id -g; touch /opt/x 2>&1; touch /etc/x 2>&1; echo ok > /tmp/t && cat /tmp/t"])
    lines = out.strip().splitlines()
    assert lines[:2] == ["61234", "61234"]
    assert "Read-only file system" in lines[2] and "Read-only file system" in lines[3]
    assert lines[4] == "ok"
    # Jupyter's runtime files (cookie secret, server info, kernel connection files) are in /tmp
    rc, out = s.exec(["sh", "-c", "ls -a /tmp/jupyter-runtime; stat -c '%a %u' /tmp/jupyter-runtime"])
    assert "jupyter_cookie_secret" in out and "700 61234" in out, out
    out = _run_code(s, "import os, sys; print(os.getuid(), os.path.expanduser('~'), sys.prefix)")
    assert out.split() == ["61234", "/home/jovyan", "/opt/gpuhub/venv"], out
    rc, out = s.exec(["sh", "-c", "ls /tmp/jupyter-runtime | grep -c '^kernel-'; ls -a /home/jovyan"])
    assert out.split()[0] == "1" and ".ipython" in out, out
    # the UI pages render through the hub auth (token checked against the hub API)
    assert s.get("lab").status_code == 200
    assert s.get("formgrader", allow_redirects=False).status_code == 404  # in no course: no nbgrader
    translations = s.get("lab/api/translations").json()["data"]
    assert "ko_KR" in translations, translations
    assert s.get("lab/api/translations/ko_KR").json()["data"], "Korean pack has no strings"


@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_a_course_instructor_has_a_name_named_course_groups_and_formgrader(built, spawn, name, tmp_path, course_config):
    """What the courses hook adds for an instructor (course config on JUPYTER_CONFIG_PATH, the
    course's exchange owned by root:<course GID>, that GID as a supplementary group): the UID and
    the course GID have names, nbgrader's formgrader is on."""
    built(name)
    gid = 31001
    exchange = tmp_path / "exchange"
    exchange.mkdir(mode=0o2775)
    os.chown(exchange, 0, gid)
    member = {"JUPYTER_CONFIG_PATH": "/srv/nbgrader/config", "GPUHUB_COURSES": "ml101:instructor"}
    volumes = {
        str(course_config): {"bind": "/srv/nbgrader/config", "mode": "ro"},
        str(exchange): {"bind": "/srv/nbgrader/exchange/ml101", "mode": "rw"},
    }
    s = spawn(f"gpuhub/{name}:latest", uid=61237, env=member, volumes=volumes, group_add=[str(gid)])
    user = "test61237"
    rc, out = s.exec(
        ["sh", "-c", "id; whoami; ls -ld /srv/nbgrader/exchange/ml101 | cut -d' ' -f3,4; getent group 31001"]
    )
    assert out.splitlines() == [
        f"uid=61237({user}) gid=61237({user}) groups=61237({user}),{gid}(formgrade-ml101)",
        user,
        "root formgrade-ml101",
        f"formgrade-ml101:x:{gid}:{user}",
    ], out
    out = _run_code(s, "import getpass, os; print(getpass.getuser(), os.environ['USER'], os.environ['LOGNAME'])")
    assert out.split() == [user, user, user], out
    assert s.get("formgrader", allow_redirects=False).status_code in (200, 302)


def test_writes_nothing_outside_home_and_tmp(built, spawn):
    """With a writable root (docker diff sees every change outside volumes and tmpfs), a start,
    a kernel and the lab page change no file in the image: no .pyc written at start, no runtime
    or config file outside $HOME and /tmp."""
    built("base-notebook")
    s = spawn("gpuhub/base-notebook:latest", uid=61235, read_only=False)
    assert _run_code(s, "import numpy, pandas, matplotlib.pyplot, sklearn; print('ok')").strip() == "ok"
    assert s.get("lab").status_code == 200
    s.get("lab/api/translations/ko_KR")
    time.sleep(1)
    changes = [c["Path"] for c in s.container.diff() or []]
    assert changes == [], f"files changed outside HOME and /tmp: {changes}"


@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_docker_stop_shuts_kernels_down_and_exits_0(built, spawn, name):
    """gpuhub-singleuser skips only CPython's teardown: the server still stops its kernels itself."""
    built(name)
    s = spawn(f"gpuhub/{name}:latest", uid=61236, read_only=True)
    assert _run_code(s, "print(6 * 7)").strip() == "42"
    s.container.stop(timeout=10)
    assert s.container.wait(timeout=30)["StatusCode"] == 0  # not 137: it exited on SIGTERM by itself
    logs = s.logs()
    assert "received signal 15, stopping" in logs
    assert "Shutting down 1 kernel" in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]


@pytest.mark.parametrize("args, status", [(["--version"], 0), (["--no-such-option"], 2)])
def test_gpuhub_singleuser_keeps_the_servers_exit_status(built, docker_client, args, status):
    built("base-notebook")
    for cmd in ("gpuhub-singleuser", "jupyterhub-singleuser"):
        c = docker_client.containers.run("gpuhub/base-notebook:latest", [cmd, *args], detach=True)
        try:
            assert c.wait(timeout=60)["StatusCode"] == status, (cmd, c.logs().decode(errors="replace")[-2000:])
        finally:
            c.remove(force=True)
