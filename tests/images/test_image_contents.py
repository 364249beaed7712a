"""What the built images contain (real Docker; the images must be built: `make images`)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from gpuhub.host import images

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
NAMES = list(images.IMAGES)
NOTEBOOKS = ["base-notebook", "stock-notebook", "pytorch"]

OCI = ("title", "description", "version", "source", "licenses", "created")


@pytest.mark.parametrize("name", NAMES)
def test_labels(built, name):
    labels = built(name).labels
    for key in OCI:
        assert labels.get(f"org.opencontainers.image.{key}"), f"{name}: no org.opencontainers.image.{key}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"])
    assert labels["org.opencontainers.image.licenses"] == "BSD-3-Clause"
    assert labels["gpuhub.display-name"]
    assert labels["gpuhub.gpu"] == ("true" if name == "pytorch" else "false")
    lock_sha = hashlib.sha256(images.lock_path(ROOT, name).read_bytes()).hexdigest()
    assert labels["gpuhub.lock-sha256"] == lock_sha, (
        f"gpuhub/{name} was built from another requirements.lock; rebuild: gpuhub images build {name}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_no_wheels_or_build_caches_in_final_image(built, run_in, name):
    """Nothing of the wheelhouse or npm cache stays; /usr/share/python-wheels is Debian's pip and
    setuptools for ``python -m venv`` (python3-venv), which users need."""
    built(name)
    out = run_in(
        images.IMAGES[name].tag,
        [
            "sh",
            "-c",
            "find / -xdev -path /usr/share/python-wheels -prune -o \\( -name '*.whl' -o -name 'npm-cache' \\) "
            "-print 2>/dev/null; ls /tmp; true",
        ],
        user="0",
    )
    assert out.strip() == "", f"{name} contains build leftovers:\n{out}"


@pytest.mark.parametrize("name", ["hub", "stock-notebook"])
def test_no_compilers_where_nobody_builds(built, run_in, name):
    """The hub image and the benchmark baseline: the build stages' compilers never reach them."""
    built(name)
    out = run_in(
        images.IMAGES[name].tag,
        [
            "sh",
            "-c",
            "for c in gcc cc c++ g++ clang make ld as npm; do command -v $c; done; ls /usr/lib/gcc 2>/dev/null; true",
        ],
        user="0",
    )
    assert out.strip() == "", f"{name} contains compilers:\n{out}"


@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_research_tools_are_there(built, run_in, name):
    """What a researcher expects in a terminal: git, a C/C++ toolchain with Python's headers, make,
    less, an editor, unzip, ps; python -m venv (tests/images/test_terminal.py uses them as the user)."""
    built(name)
    out = run_in(
        images.IMAGES[name].tag,
        [
            "sh",
            "-c",
            "for c in git gcc g++ make less nano vi unzip ps top python3-config; do command -v $c || echo no $c; done;"
            "test -f /usr/include/python3.11/Python.h && echo Python.h;"
            "python -c 'import ensurepip, venv; print(\"venv\")'",
        ],
    )
    assert "no " not in out and "Python.h" in out and "venv" in out.split(), out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_singleuser_version_matches_hub(built, run_in, name):
    built(name)
    out = run_in(images.IMAGES[name].tag, ["jupyterhub-singleuser", "--version"])
    assert out.strip().splitlines()[-1] == "6.1.1"


@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_default_user_is_not_root(built, name):
    config = built(name).attrs["Config"]
    assert config["User"] == "1000:100"
    assert config["Cmd"] == ["gpuhub-singleuser"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["HOME"] == "/home/jovyan"
    assert env["JUPYTER_RUNTIME_DIR"].startswith("/tmp/")
    assert env["PATH"].startswith("/opt/gpuhub/venv/bin:") and env["VIRTUAL_ENV"] == "/opt/gpuhub/venv"


@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_health_check_is_cheap(built, name):
    """Docker bench 5.27: a HEALTHCHECK, probing once a minute (tests/images/test_terminal.py sees it healthy)."""
    check = built(name).attrs["Config"]["Healthcheck"]
    assert check["Test"] == ["CMD", "/usr/local/bin/gpuhub-healthcheck"], check
    assert check["Interval"] == 60 * 10**9 and check["StartPeriod"] == 120 * 10**9, check


LOADED = (
    "jupyter server --ServerApp.ip=127.0.0.1 --ServerApp.port=8888 --no-browser >/tmp/log 2>&1 & "
    "for i in $(seq 1 300); do grep -q 'is running at' /tmp/log && break; sleep 0.1; done; "
    "grep -o '[a-z_.]* | extension was successfully loaded' /tmp/log | cut -d' ' -f1 | sort; "
    "jupyter labextension list 2>&1"
)


@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_nbgrader_only_for_course_members_and_unused_extensions_off(built, run_in, name, course_config):
    """In no course: no nbgrader server or lab extension, no news. A course member's
    JUPYTER_CONFIG_PATH (the hub's course config) turns nbgrader on; students then lose the
    instructor parts again (gpuhub.hub.nbgrader_container)."""
    built(name)
    tag = images.IMAGES[name].tag

    def run(env: dict) -> tuple[set[str], dict[str, str], str]:
        out = run_in(
            tag,
            ["sh", "-c", LOADED],
            environment=env,
            tmpfs={"/tmp": ""},
            read_only=True,
            volumes={str(course_config): {"bind": "/srv/nbgrader/config", "mode": "ro"}},
        )
        out = re.sub(r"\x1b\[[0-9;]*m", "", out)
        loaded = {line for line in out.splitlines() if re.fullmatch(r"[a-z_.]+", line)}
        lab = dict(re.findall(r"^\s+(@\S+) v\S+ (enabled|disabled)", out, re.M))
        return loaded, lab, out

    loaded, lab, out = run({})
    assert {"jupyterlab", "notebook", "jupyter_server_terminals"} <= loaded, out
    assert not {e for e in loaded if e.startswith("nbgrader") or e in ("jupyter_lsp", "notebook_shim")}, out
    assert lab["@jupyter/nbgrader"] == "disabled", out
    assert "@jupyterlab/apputils-extension:announcements" in out.split("Disabled extensions:")[-1], out
    member = {"JUPYTER_CONFIG_PATH": "/srv/nbgrader/config"}
    loaded, lab, out = run({**member, "GPUHUB_COURSES": "ml101:instructor"})
    for ext in ("formgrader", "validate_assignment", "assignment_list"):
        assert f"nbgrader.server_extensions.{ext}" in loaded, out
    assert "gpuhub_nbgrader" in loaded and "nbgrader.server_extensions.course_list" not in loaded, out
    assert re.search(r"@jupyter/nbgrader v0\.9\.6 enabled OK", out), out
    loaded, lab, out = run(
        {
            **member,
            "GPUHUB_COURSES": "ml101:student",
            "JUPYTER_CONFIG_PATH": "/srv/nbgrader/config/student:/srv/nbgrader/config",
        }
    )
    assert {e for e in loaded if "nbgrader" in e} == {
        "nbgrader.server_extensions.validate_assignment",
        "nbgrader.server_extensions.assignment_list",
    }, out
    assert lab["@jupyter/nbgrader"] == "enabled", out


@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_korean_language_pack_installed(built, run_in, name):
    built(name)
    out = run_in(
        images.IMAGES[name].tag,
        [
            "python",
            "-c",
            "from jupyterlab_server.translation_utils import get_language_packs as g; "
            "packs, msg = g(); print(sorted(packs))",
        ],
    )
    assert "'ko_KR'" in out and "'en'" in out, out


@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_bytecode_precompiled_and_slow_iri_checker_absent(built, run_in, name):
    built(name)
    out = run_in(
        images.IMAGES[name].tag,
        [
            "python",
            "-c",
            r"""
import importlib.util, pathlib, sys
missing = [str(p) for root in ('/opt/gpuhub/venv/lib/python3.11/site-packages', '/usr/lib/python3.11')
           for p in pathlib.Path(root).rglob('*.py')
           if '/torch/testing/_internal/py312_' not in str(p)
           and not pathlib.Path(importlib.util.cache_from_source(str(p))).exists()]
print(len(missing), missing[:5])
print(importlib.util.find_spec('rfc3987_syntax'))
""",
        ],
    )
    first, second = out.strip().splitlines()[-2:]
    assert first.startswith("0 "), f"{name}: .py files without a precompiled .pyc: {first}"
    assert second == "None"


def test_pytorch_imports_torch(built, run_in):
    built("pytorch")
    out = run_in(
        images.IMAGES["pytorch"].tag,
        ["python", "-c", "import torch; print(torch.__version__, torch.ones(2, 2).sum().item())"],
        user="54321:54321",
        read_only=True,
        tmpfs={"/tmp": ""},
        cap_drop=["ALL"],
    )
    assert out.strip().splitlines()[-1] == "2.13.0+cpu 4.0"


def test_hub_versions(built, run_in):
    built("hub")
    out = run_in(
        images.IMAGES["hub"].tag,
        [
            "sh",
            "-c",
            "jupyterhub --version; configurable-http-proxy --version; "
            "python -c 'import dockerspawner, oauthenticator, quota, gpuhub.core.site; "
            "print(dockerspawner.__version__, oauthenticator.__version__)'",
        ],
    )
    assert out.split() == ["6.1.1", "5.3.0", "14.0.0", "17.4.0"], out


def test_hub_proxy_routes_requests(built, run_in):
    """configurable-http-proxy (npm, on Debian's node) adds a route and proxies through it."""
    built("hub")
    script = r"""
set -e
mkdir -p /tmp/srv/user/x && echo proxied > /tmp/srv/user/x/index.html
python3 -m http.server 9000 --bind 127.0.0.1 --directory /tmp/srv >/dev/null 2>&1 &
CONFIGPROXY_AUTH_TOKEN=t configurable-http-proxy --ip 127.0.0.1 --port 8000 --api-ip 127.0.0.1 \
  --api-port 8001 --log-level warn &
python3 - <<'EOF'
import json, time, urllib.request
for _ in range(100):
    try:
        req = urllib.request.Request("http://127.0.0.1:8001/api/routes/user/x", method="POST",
              data=json.dumps({"target": "http://127.0.0.1:9000"}).encode(),
              headers={"Authorization": "token t"})
        urllib.request.urlopen(req, timeout=2)
        break
    except OSError:
        time.sleep(0.1)
print(urllib.request.urlopen("http://127.0.0.1:8000/user/x/", timeout=5).read().decode().strip())
EOF
"""
    out = run_in(images.IMAGES["hub"].tag, ["sh", "-c", script])
    assert out.strip().splitlines()[-1] == "proxied", out
