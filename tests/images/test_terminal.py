"""What a researcher meets in the first five minutes, through a real hub and JupyterLab's terminal.

Every catalog image is spawned through the hub (``jupyterhub_config.py``, GpuhubSpawner, real Docker:
read-only root, the user's own UID, capabilities dropped) and driven over the terminals websocket
(``/user/NAME/terminals/websocket/NAME``, what JupyterLab's terminal uses: a login bash). The
transcripts go to tests/artifacts/terminal/ for the record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
import requests
import websocket
import yaml

from gpuhub.core.site import load_site
from tests.harness import HubProcess, execute
from tests.procs import cleaned_up

pytestmark = pytest.mark.docker

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "terminal"
VENV = "/opt/gpuhub/venv"
# catalog key -> (image, user who spawns it, GPUs asked for); alice and carol are in one org each
CATALOG = {
    "python": ("gpuhub/base-notebook:latest", "alice", 0),
    "pytorch": ("gpuhub/pytorch:latest", "carol", 1),
}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]")


class Terminal:
    """A JupyterLab terminal of a running server: type a line, read until bash prompts again."""

    def __init__(self, hub: HubProcess, user: str, transcript: list[str]):
        self.user, self.transcript = user, transcript
        self.headers = {"Authorization": f"token {hub.user_token(user)}"}
        self.prefix = prefix = f"{hub.url}/user/{user}/"
        r = requests.post(f"{prefix}api/terminals", headers=self.headers, timeout=30)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        self.name = r.json()["name"]
        self.ws = websocket.create_connection(
            f"{prefix.replace('http', 'ws', 1)}terminals/websocket/{self.name}",
            header=[f"Authorization: {self.headers['Authorization']}"],
            timeout=5,
        )
        self.ws.send(json.dumps(["set_size", 50, 400, 800, 1200]))  # no line wrapping in the transcript
        self.buf = ""
        transcript.append(
            f"{'' if not transcript else chr(10)}--- JupyterLab terminal {self.name} of {user} "
            f"({prefix}terminals/websocket/{self.name}) ---\n"
        )
        self.prompt = re.compile(rf"(^|\n)({re.escape(user)}@[^\s:]+:[^\n]*\$ )$")
        self.first_prompt = self._until_prompt(60)
        self._receive(quiet=1.0)  # readline redraws the prompt after the resize
        self.buf = ""

    def _receive(self, quiet: float) -> bool:
        """Read what arrives until ``quiet`` seconds pass without output; False once disconnected."""
        self.ws.settimeout(quiet)
        try:
            while True:
                msg = json.loads(self.ws.recv())
                if msg[0] == "disconnect":
                    return False
                if msg[0] == "stdout":
                    self._screen(msg[1])
                if self.prompt.search(self.buf):
                    return True
        except websocket.WebSocketTimeoutException:
            return True

    def _screen(self, data: str) -> None:
        """Terminal output as the screen shows it: escape sequences dropped, a bare CR rewrites its line."""
        for part in re.split(r"(\r\n|\r|\n)", ANSI.sub("", data)):
            if part in ("\r\n", "\n"):
                self.buf += "\n"
            elif part == "\r":
                self.buf = self.buf[: self.buf.rfind("\n") + 1]
            else:
                self.buf += part

    def _until_prompt(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (m := self.prompt.search(self.buf)) is not None:
                out, self.buf = self.buf[: m.start(2)], ""
                self.transcript.append(out + m.group(2))
                return out
            if not self._receive(quiet=1.0):
                break
        self.transcript.append(self.buf + f"\n[no prompt within {timeout} s]\n")
        raise AssertionError(
            f"no `{self.user}@...$ ` prompt within {timeout} s; the terminal shows:\n{self.buf[-3000:]}"
        )

    def run(self, line: str, timeout: float = 60) -> str:
        """Type ``line`` + Enter; return what was printed before the next prompt (the echo left out)."""
        self.ws.send(json.dumps(["stdin", line + "\r"]))
        out = self._until_prompt(timeout)
        echoed, _, rest = out.partition("\n")
        assert echoed.strip() == line.strip(), (echoed, line)
        return rest.rstrip("\n")

    def close(self) -> None:
        self.ws.close()
        requests.delete(f"{self.prefix}api/terminals/{self.name}", headers=self.headers, timeout=30)


def save(name: str, transcript: list[str]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.txt").write_text("".join(transcript))


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client):
    h = HubProcess(tmp_path_factory.mktemp("terminal"))
    h.site["images"] = {
        "python": {"image": CATALOG["python"][0], "display_name": "Python (CPU)", "gpu": False},
        "pytorch": {"image": CATALOG["pytorch"][0], "display_name": "PyTorch"},
    }
    h.site["containers"].update(mem_limit="3G", cpu_limit=2.0)  # torch.compile's workers
    h.site_path.write_text(yaml.safe_dump(h.site))
    with cleaned_up(request, h):
        h.start()
        for key, (_, user, gpus) in CATALOG.items():
            r = h.spawn(user, {"image": key, "gpus": gpus})
            assert r.status_code in (201, 202), r.text
        for _, user, _ in CATALOG.values():
            h.wait_ready(user, timeout=120)
        yield h


@pytest.fixture(scope="module")
def transcripts():
    out: dict[str, list[str]] = {}
    yield out
    for name, lines in out.items():
        save(name, lines)


@pytest.mark.parametrize("key", list(CATALOG))
def test_terminal_has_the_images_python_the_users_name_and_the_tools(hub, transcripts, key):
    _, user, _ = CATALOG[key]
    t = Terminal(hub, user, transcripts.setdefault(f"{key}-{user}", []))
    try:
        assert "I have no name" not in t.first_prompt
        assert t.run("whoami") == user
        assert t.run("id -un") == user
        assert re.match(rf"uid=\d+\({user}\) gid=\d+\({user}\) groups=\d+\({user}\)$", t.run("id")), t.transcript[-1]
        assert t.run("echo $SHELL $HOME $VIRTUAL_ENV") == f"/bin/bash /home/jovyan {VENV}"
        assert t.run("which python pip jupyter nbgrader").split() == [
            f"{VENV}/bin/{c}" for c in ("python", "pip", "jupyter", "nbgrader")
        ]
        who = t.run(
            "python -c 'import getpass, os, pwd; p = pwd.getpwuid(os.getuid()); "
            "print(getpass.getuser(), p.pw_name, p.pw_dir, p.pw_shell)'"
        )
        assert who == f"{user} {user} /home/jovyan /bin/bash"
        assert re.fullmatch(
            r"numpy \d+\.\d+\.\d+", t.run("python -c 'import numpy; print(\"numpy\", numpy.__version__)'")
        )
        assert t.run("nbgrader --version").splitlines()[-1].endswith("0.9.6")
        assert re.match(r"git version 2\.\d+", t.run("git --version"))
        assert t.run("g++ --version").startswith("g++ (Debian 12")
        for line, expected in (
            ("gcc --version", "gcc (Debian 12"),
            ("make --version", "GNU Make"),
            ("less --version", "less "),
            ("nano --version", " GNU nano"),
            ("vi --version", "VIM"),
            ("unzip -v", "UnZip "),
        ):
            assert t.run(f"{line} | head -1").startswith(expected), t.transcript[-1]
        ps = t.run("ps -o user=,comm= -p $$")
        assert ps.split() == [user, "bash"], ps
        # a C extension builds against the image's Python and imports (pip source builds need this)
        build = t.run(
            "mkdir -p ~/cext && cd ~/cext && printf '%s\\n' '#include <Python.h>' "
            "'static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, \"hello\"};' "
            "'PyMODINIT_FUNC PyInit_hello(void) { return PyModule_Create(&m); }' > hello.c "
            "&& gcc -shared -fPIC $(python3-config --includes) hello.c -o hello$(python3-config --extension-suffix) "
            "&& python -c 'import hello; print(hello.__name__, \"built\")'; cd ~",
            timeout=120,
        )
        assert build.splitlines()[-1] == "hello built", build
        # the image stays read-only
        assert "Read-only file system" in t.run(f"touch {VENV}/lib/x")
    finally:
        t.close()


def test_torch_compile_returns_the_right_values_as_the_user(hub, transcripts):
    _, user, _ = CATALOG["pytorch"]
    t = Terminal(hub, user, transcripts.setdefault(f"pytorch-{user}", []))
    try:
        code = (
            "import torch; f = torch.compile(lambda x: torch.sin(x) * 2 + 1); x = torch.arange(6.0); "
            "y = f(x); print('compiled', torch.allclose(y, torch.sin(x) * 2 + 1), [round(v, 4) for v in y.tolist()])"
        )
        out = t.run(f'python -c "{code}"', timeout=300)
        assert out.splitlines()[-1] == "compiled True [1.0, 2.6829, 2.8186, 1.2822, -0.5136, -0.9178]", out
        assert t.run("ls -d ~/.cache/torchinductor") == "/home/jovyan/.cache/torchinductor"
    finally:
        t.close()


def test_user_containers_have_a_health_check_that_reports_healthy(hub):
    site = load_site(hub.site_path)
    seen = []
    for _, user, _ in CATALOG.values():
        (box,) = hub.containers(user=user)
        check = box.attrs["Config"]["Healthcheck"]
        assert check["Test"] == ["CMD", "/usr/local/bin/gpuhub-healthcheck"], check
        assert check["Interval"] >= 60e9, check  # cheap: one probe a minute
        assert box.attrs["HostConfig"]["CpuShares"] == site.containers.cpu_shares > 0, box.attrs["HostConfig"]
        deadline = time.monotonic() + 180  # Docker 20.10: the first probe runs one interval after the start
        while (status := box.attrs["State"]["Health"]["Status"]) != "healthy" and time.monotonic() < deadline:
            assert status == "starting", box.attrs["State"]["Health"]
            time.sleep(2)
            box.reload()
        assert status == "healthy", box.attrs["State"]["Health"]
        log = box.attrs["State"]["Health"]["Log"]
        assert log and log[-1]["ExitCode"] == 0, log
        seen.append(
            {
                "container": box.name,
                "image": box.attrs["Config"]["Image"],
                "Config.Healthcheck": check,
                "State.Health.Status": status,
                "State.Health.Log[-1]": log[-1],
                "HostConfig.CpuShares": box.attrs["HostConfig"]["CpuShares"],
            }
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "docker-inspect-health.json").write_text(json.dumps(seen, indent=2))


def _probe_wheel(version: str, value: str) -> tuple[str, bytes]:
    """A pure-Python wheel made here: package ``gpuhub_probe`` whose VALUE is ``value``."""
    info = f"gpuhub_probe-{version}.dist-info"
    files = {
        "gpuhub_probe/__init__.py": f"VALUE = {value!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: gpuhub-probe\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: gpuhub-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
            z.writestr(path, data)
        z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]))
    return f"gpuhub_probe-{version}-py3-none-any.whl", buf.getvalue()


def test_user_installs_and_a_users_own_kernel_live_in_the_home_and_survive_a_restart(hub, transcripts):
    _, user, gpus = CATALOG["python"]
    log = transcripts.setdefault(f"python-{user}-installs", [])
    value = uuid.uuid4().hex
    token = hub.user_token(user)
    prefix = f"{hub.url}/user/{user}/"
    h = {"Authorization": f"token {token}"}
    wheels = {}
    for version, v in (("1.0", "first"), ("2.0", value)):
        wheel, data = wheels[version] = _probe_wheel(version, v)
        r = requests.put(
            f"{prefix}api/contents/{wheel}",
            headers=h,
            timeout=30,
            json={"type": "file", "format": "base64", "content": base64.b64encode(data).decode()},
        )
        assert r.status_code in (200, 201), r.text[:300]
    first, second = wheels["1.0"][0], wheels["2.0"][0]
    t = Terminal(hub, user, log)
    try:
        out = t.run(f"pip install --user --no-index ~/{first}", timeout=120)
        assert "Successfully installed gpuhub-probe-1.0" in out, out
        where = t.run("python -c 'import gpuhub_probe as p; print(p.VALUE, p.__file__)'")
        assert where == "first /home/jovyan/.local/lib/python3.11/site-packages/gpuhub_probe/__init__.py", where
        # without --user pip picks the user site itself (the image's venv is read-only), and upgrades there
        out = t.run(f"pip install --no-index ~/{second}", timeout=120)
        for line in (
            "Defaulting to user installation because normal site-packages is not writeable",
            "Successfully uninstalled gpuhub-probe-1.0",
            "Successfully installed gpuhub-probe-2.0",
        ):
            assert line in out, out
        assert t.run("ls ~/.local/lib/python3.11/site-packages").split() == [
            "gpuhub_probe",
            "gpuhub_probe-2.0.dist-info",
        ]
        # the user's own venv on top of the image's packages, registered as a kernel
        out = t.run(
            "python -m venv ~/venvs/mine && echo /opt/gpuhub/venv/lib/python3.11/site-packages "
            "> ~/venvs/mine/lib/python3.11/site-packages/gpuhub-image.pth "
            f"&& ~/venvs/mine/bin/pip install -q --no-index ~/{second} "
            "&& ~/venvs/mine/bin/python -m ipykernel install --user --name mine --display-name 'Python (mine)'",
            timeout=240,
        )
        assert "Installed kernelspec mine in /home/jovyan/.local/share/jupyter/kernels/mine" in out, out
    finally:
        t.close()
    # a fresh kernel of the running server imports it
    assert execute(prefix, token, "import gpuhub_probe; print(gpuhub_probe.VALUE)", strict=True).strip() == value
    log.append(f"\n[a new python3 kernel: import gpuhub_probe -> VALUE {value}]\n")

    (before,) = hub.containers(user=user)
    hub.stop_server(user)
    hub.wait_containers_gone(user=user)
    assert hub.spawn(user, {"image": "python", "gpus": gpus}).status_code in (201, 202)
    hub.wait_ready(user, timeout=120)
    (after,) = hub.containers(user=user)
    log.append(f"[server stopped and started again through the hub: container {before.short_id} -> {after.short_id}]\n")
    token = hub.user_token(user)
    h = {"Authorization": f"token {token}"}
    assert execute(prefix, token, "import gpuhub_probe; print(gpuhub_probe.VALUE)", strict=True).strip() == value
    log.append(f"[after the restart, a new python3 kernel: import gpuhub_probe -> VALUE {value}]\n")
    specs = requests.get(f"{prefix}api/kernelspecs", headers=h, timeout=30).json()["kernelspecs"]
    assert specs["mine"]["spec"]["display_name"] == "Python (mine)", sorted(specs)
    assert specs["mine"]["spec"]["argv"][0] == "/home/jovyan/venvs/mine/bin/python", specs["mine"]
    out = execute(
        prefix,
        token,
        "import sys, gpuhub_probe; print(sys.prefix, gpuhub_probe.__file__)",
        strict=True,
        kernel="mine",
        timeout=60,
    )
    assert out.split() == [
        "/home/jovyan/venvs/mine",
        "/home/jovyan/venvs/mine/lib/python3.11/site-packages/gpuhub_probe/__init__.py",
    ], out
    log.append(
        f"[GET {prefix}api/kernelspecs: {sorted(specs)}; mine: {specs['mine']['spec']['argv']}]\n"
        f"[a kernel of spec 'mine': sys.prefix, gpuhub_probe.__file__ = {out.split()}]\n"
    )
    t = Terminal(hub, user, log)
    try:
        assert t.run("pip list --user 2>/dev/null | grep gpuhub-probe").split() == ["gpuhub-probe", "2.0"]
        assert t.run("jupyter kernelspec list | grep -c mine") == "1"
        assert "Successfully uninstalled gpuhub-probe-2.0" in t.run("pip uninstall -y gpuhub-probe")
        assert "No module named 'gpuhub_probe'" in t.run("python -c 'import gpuhub_probe'")
    finally:
        t.close()
