"""Fixtures for the image tests: a Docker client, the built images, and single-user containers
run the way gpuhub's spawner runs them (bench/image_start.py holds that recipe and the fake hub
API the servers talk to at start)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from gpuhub.host import images

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("gpuhub_bench_image_start", ROOT / "bench" / "image_start.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench():
    return _load_bench()


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure means "no engine here"
        pytest.fail(f"no Docker engine: {e} (`make test` starts one with scripts/docker-engine.sh)", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def built(docker_client):
    """built(name) -> docker Image of gpuhub/<name>:latest, or a failure naming the build command."""
    import docker.errors

    def get(name: str):
        tag = images.IMAGES[name].tag
        try:
            image = docker_client.images.get(tag)
        except docker.errors.ImageNotFound:
            pytest.fail(
                f"{tag} is not built; build it with `make images` or `gpuhub images build {name}`", pytrace=False
            )
        if not images.is_current(images.repo_root(), name):
            pytest.fail(
                f"{tag} was built from other sources than this checkout (label {images.SOURCE_LABEL}); "
                f"rebuild it with `gpuhub images build --missing {name}`",
                pytrace=False,
            )
        return image

    return get


@pytest.fixture(scope="session")
def fake_hub(bench, docker_client):
    server, url = bench.start_fake_hub(bench.bridge_gateway(docker_client))
    yield url
    server.shutdown()


@pytest.fixture(scope="session")
def run_in(docker_client):
    """run_in(image, command, **run_kwargs) -> output (stdout+stderr) of a one-off container."""

    def run(image: str, command, **kwargs) -> str:
        out = docker_client.containers.run(image, command, remove=True, stdout=True, stderr=True, **kwargs)
        return out.decode(errors="replace")

    return run


class Spawned:
    """A started single-user container, its URL and its API token, removed at teardown."""

    def __init__(self, bench, client, image: str, hub_url: str, uid: int, read_only: bool, **extra):
        self.bench = bench
        self.home = Path(tempfile.mkdtemp(prefix="gpuhub-test-home-"))
        os.chown(self.home, uid, uid)
        self.uid = uid
        self.container = bench.create_like_spawner(
            client,
            image,
            hub_url,
            uid,
            self.home,
            read_only=read_only,
            user=f"test{uid}",
            labels={"gpuhub.test": "images"},
            **extra,
        )
        self.container.start()
        try:
            bench.wait_ready(self.container, timeout=60)
        except Exception:
            self.close()
            raise
        self.url = bench.server_url(self.container)
        env = dict(e.split("=", 1) for e in self.container.attrs["Config"]["Env"])
        self.token = env["JUPYTERHUB_API_TOKEN"]

    def get(self, path: str, **kw):
        import requests

        return requests.get(self.url + path, headers={"Authorization": f"token {self.token}"}, timeout=30, **kw)

    def post(self, path: str, **kw):
        import requests

        return requests.post(self.url + path, headers={"Authorization": f"token {self.token}"}, timeout=30, **kw)

    def exec(self, cmd) -> tuple[int, str]:
        rc, out = self.container.exec_run(cmd, user=f"{self.uid}:{self.uid}")
        return rc, out.decode(errors="replace")

    def logs(self) -> str:
        return self.container.logs().decode(errors="replace")

    def close(self) -> None:
        try:
            self.container.remove(force=True)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def course_config(tmp_path):
    """A folder laid out like the hub's course config volume (``/srv/nbgrader/config``) for a member:
    what gpuhub.hub.courses writes into it."""
    from gpuhub.hub import courses

    root = tmp_path / "course-config"
    for rel, text in {**courses.member_config_files(), **courses.container_files()}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


@pytest.fixture
def spawn(bench, docker_client, fake_hub, request):
    """spawn(image, uid, read_only=True, env=, volumes=, group_add=) -> Spawned; logs are printed when
    the test fails."""
    started: list[Spawned] = []

    def start(image: str, uid: int, read_only: bool = True, **extra) -> Spawned:
        s = Spawned(bench, docker_client, image, fake_hub, uid, read_only, **extra)
        started.append(s)
        return s

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for s in started:
        if failed:
            print(f"--- logs of {s.container.short_id} ---\n{s.logs()[-4000:]}")
        s.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
