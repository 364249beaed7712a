"""The hub's user network, against the real Docker engine: gpuhub creates it with inter-container
traffic off, and refuses an existing network on which one user's container could reach another's."""

from __future__ import annotations

import uuid

import docker
import pytest

from gpuhub.core.labels import MANAGED
from gpuhub.host.dockerenv import ICC_OPTION, UserNetworkError, ensure_user_network

pytestmark = pytest.mark.docker
TEST_LABEL = "gpuhub.test"  # every network and container this module makes carries it
SLEEPER_IMAGE = "debian:bookworm-slim"  # what all of gpuhub's images are built FROM (scripts/base-image.sh)


@pytest.fixture
def net_name(docker_client):
    """A network name no one uses; whatever this test made under it (or labelled) is removed afterwards."""
    name = f"gpuhubtest-net-{uuid.uuid4().hex[:10]}"
    yield name
    for c in docker_client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={name}"}):
        c.remove(force=True)
    for n in docker_client.networks.list(names=[name]) + docker_client.networks.list(
        filters={"label": f"{TEST_LABEL}={name}"}
    ):
        try:
            n.remove()
        except docker.errors.NotFound:
            pass  # listed twice (by name and by label)


def test_missing_network_is_created_isolated_and_accepted_again(docker_client, net_name):
    facts = ensure_user_network(docker_client, net_name)
    net = docker_client.networks.get(net_name)
    assert net.attrs["Driver"] == "bridge"
    assert net.attrs["Options"][ICC_OPTION] == "false"
    assert net.attrs["Labels"][MANAGED] == "1"
    assert facts.name == net_name and facts.subnet == net.attrs["IPAM"]["Config"][0]["Subnet"]
    assert ensure_user_network(docker_client, net_name) == facts  # the hub's next start


def test_existing_network_with_inter_container_traffic_is_refused(docker_client, net_name):
    docker_client.networks.create(net_name, driver="bridge", labels={TEST_LABEL: net_name})  # icc on: the default
    with pytest.raises(UserNetworkError) as err:
        ensure_user_network(docker_client, net_name)
    msg = str(err.value)
    assert f"docker network {net_name} (the site config's hub.network)" in msg
    assert f"({ICC_OPTION} unset, which Docker reads as true)" in msg and f"{ICC_OPTION}=false" in msg
    assert f"`docker network rm {net_name}`" in msg and "set hub.network" in msg
    assert "disconnect" not in msg  # no container uses it: removing it is the whole fix
    # The operator's network is left as it was; the refusal changes nothing.
    assert ICC_OPTION not in (docker_client.networks.get(net_name).attrs["Options"] or {})


def test_refusal_names_the_containers_that_use_the_network(docker_client, net_name):
    docker_client.networks.create(
        net_name, driver="bridge", options={ICC_OPTION: "true"}, labels={TEST_LABEL: net_name}
    )
    box = docker_client.containers.run(
        SLEEPER_IMAGE,
        ["sleep", "120"],
        detach=True,
        network=net_name,
        name=f"{net_name}-box",
        labels={TEST_LABEL: net_name},
    )
    with pytest.raises(UserNetworkError) as err:
        ensure_user_network(docker_client, net_name)
    msg = str(err.value)
    assert f"{ICC_OPTION}=true)" in msg
    assert f"`docker network disconnect {net_name} CONTAINER` its 1 container(s) ({box.name})" in msg
    assert f"`docker network rm {net_name}`" in msg


def test_docker_predefined_networks_are_refused_with_the_setting_to_change(docker_client):
    with pytest.raises(UserNetworkError) as err:
        ensure_user_network(docker_client, "host")
    msg = str(err.value)
    assert "uses the 'host' driver" in msg
    assert "Docker's own 'host' network cannot be changed: set hub.network to another name" in msg
    assert "docker network rm" not in msg
