"""Fixtures for the exporter tests: a site, a temporary SQLite ledger, real binaries, real Docker.

A test that needs promtool, prometheus or the Docker engine fails (never skips) when it is missing.
"""

from __future__ import annotations

import pytest

from tests.exporters.helpers import TEST_LABEL, TEST_LABEL_VALUE, TINY_IMAGE, make_site, need_binary, tiny_image_tar


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path)


@pytest.fixture
def ledger_engine(tmp_path):
    """A temporary SQLite database migrated to the quota schema exactly as the hub does it."""
    from quota.db import make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def promtool() -> str:
    return need_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return need_binary("prometheus")


# ---------------------------------------------------------------- Docker


@pytest.fixture(scope="session")
def docker_engine():
    """The real Docker engine (fails, not skips, when it does not answer)."""
    import docker

    try:
        client = docker.from_env(timeout=20)
        client.ping()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"Docker engine not reachable ({e}); start it with scripts/docker-engine.sh", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def sleep_image(docker_engine) -> str:
    """``debian:bookworm-slim`` when present, else a tiny image imported from the host's sleep binary."""
    import docker

    for name in ("debian:bookworm-slim", TINY_IMAGE):
        try:
            docker_engine.images.get(name)
            return name
        except docker.errors.ImageNotFound:
            pass
    repo, tag = TINY_IMAGE.split(":")
    docker_engine.api.import_image_from_data(tiny_image_tar(), repository=repo, tag=tag)
    docker_engine.images.get(TINY_IMAGE)
    return TINY_IMAGE


def _remove_test_containers(client) -> None:
    for c in client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={TEST_LABEL_VALUE}"}):
        try:
            c.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


@pytest.fixture
def run_container(docker_engine, sleep_image):
    """Start labelled containers; all of them (and leftovers of earlier runs) are removed by label."""
    _remove_test_containers(docker_engine)

    def run(labels: dict[str, str]):
        return docker_engine.containers.run(
            sleep_image,
            ["/usr/bin/sleep", "300"],
            detach=True,
            network_mode="none",
            labels={**labels, TEST_LABEL: TEST_LABEL_VALUE},
        )

    yield run
    _remove_test_containers(docker_engine)
