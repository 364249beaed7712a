"""Each apply_* function only sets values: checked against a plain traitlets Config."""

from pathlib import Path

from traitlets.config import Config

from gpuhub.core.site import load_site
from gpuhub.hub import hubconfig

SITE = load_site(Path(__file__).resolve().parents[2] / "examples/site.yaml")
FACTS = hubconfig.HubFacts(
    hub_ip="172.30.0.1",
    network="gpuhub-users",
    demo_password="pw-123456789",
    admin_password="a" * 32,
    admin_token="adm",
    quota_service_token="qst",
    crypt_key="00" * 32,
    hub_metrics_token="hmt",
    proxy_command="/x/configurable-http-proxy",
)


def test_hub_listens_on_loopback_and_the_user_network_gateway_only():
    c = Config()
    hubconfig.apply_hub(c, SITE, FACTS)
    assert c.JupyterHub.bind_url == "http://127.0.0.1:8000"
    assert c.JupyterHub.hub_bind_url == "http://172.30.0.1:8081"
    assert c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:8001"
    assert c.JupyterHub.cleanup_servers is False
    assert c.JupyterHub.db_url == SITE.hub.database_url
    assert c.JupyterHub.cookie_secret_file.startswith(str(SITE.hub.state_dir))
    assert c.Authenticator.admin_users == {"operator"}


def test_spawner_uses_the_catalog_and_the_user_network():
    c = Config()
    hubconfig.apply_spawner(c, SITE, FACTS)
    assert c.JupyterHub.spawner_class == "gpuhub.hub.spawner.GpuhubSpawner"
    assert c.GpuhubSpawner.network_name == "gpuhub-users"
    assert c.GpuhubSpawner.allowed_images == {
        "python": "gpuhub/base-notebook:latest",
        "pytorch": "gpuhub/pytorch:latest",
    }
    assert c.GpuhubSpawner.pull_policy == "never"
    assert c.GpuhubSpawner.volumes == {"{prefix}-home-{username}": "/home/jovyan"}
    assert c.GpuhubSpawner.site_config == str(SITE.path)


def test_spawner_limits_and_extras_are_left_to_the_spawner():
    """mem_limit / cpu_limit / cpu_shares default to the site's ``containers`` in the spawner itself, and the
    spawner merges extra_host_config / extra_create_kwargs at start, so nothing here overwrites an operator's
    ``c.GpuhubSpawner.mem_limit`` in a later config file (tests/hardening/test_operator_config_hub.py, live)."""
    c = Config()
    hubconfig.apply_spawner(c, SITE, FACTS)
    ours = {"mem_limit", "cpu_limit", "cpu_shares", "extra_host_config", "extra_create_kwargs"}
    assert not ours & set(c.GpuhubSpawner)


def test_admin_token_becomes_an_admin_service_only_when_given():
    c = Config()
    hubconfig.apply_services(c, SITE, FACTS)
    names = [s["name"] for s in c.JupyterHub.services]
    assert names == ["gpuhub-quota", "gpuhub-metrics", "gpuhub-automation"]
    assert {"name": "admin", "services": ["gpuhub-automation"]} in c.JupyterHub.load_roles
    c = Config()
    hubconfig.apply_services(c, SITE, FACTS.__class__(**{**FACTS.__dict__, "admin_token": None}))
    assert [s["name"] for s in c.JupyterHub.services] == ["gpuhub-quota", "gpuhub-metrics"]
    metrics_role = {"name": "gpuhub-metrics", "scopes": ["read:metrics"], "services": ["gpuhub-metrics"]}
    assert metrics_role in c.JupyterHub.load_roles
    quota_role = c.JupyterHub.load_roles[0]
    assert "delete:servers" in quota_role["scopes"] and "admin:users" not in quota_role["scopes"]


class FakeDocker:  # prepare only asks Docker for the user network and the catalog images
    missing: set = set()

    class networks:
        @staticmethod
        def get(name):
            class N:
                attrs = {
                    "Driver": "bridge",
                    "Options": {"com.docker.network.bridge.enable_icc": "false"},  # isolated
                    "IPAM": {"Config": [{"Subnet": "172.30.0.0/16"}]},
                }

            return N

    class images:
        @staticmethod
        def get(ref):
            import docker

            if ref in FakeDocker.missing:
                raise docker.errors.ImageNotFound(ref)


def test_prepare_refuses_a_catalog_image_that_is_not_built(tmp_path):
    import pytest

    site_file = tmp_path / "site.yaml"
    site_file.write_text((Path(SITE.path)).read_text().replace("state_dir: ../state", "state_dir: st"))
    FakeDocker.missing = {"gpuhub/base-notebook:latest"}
    try:
        with pytest.raises(hubconfig.CatalogError, match="gpuhub images build base-notebook"):
            hubconfig.prepare({"GPUHUB_SITE_CONFIG": str(site_file)}, docker_client=FakeDocker, log=print)
    finally:
        FakeDocker.missing = set()


def test_prepare_keeps_a_generated_demo_password(tmp_path):
    site_file = tmp_path / "site.yaml"
    site_file.write_text((Path(SITE.path)).read_text().replace("state_dir: ../state", "state_dir: st"))
    printed = []
    site, facts = hubconfig.prepare(
        {"GPUHUB_SITE_CONFIG": str(site_file)}, docker_client=FakeDocker, log=printed.append
    )
    assert facts.hub_ip == "172.30.0.1" and facts.demo_password and facts.demo_password in printed[0]
    _, again = hubconfig.prepare({"GPUHUB_SITE_CONFIG": str(site_file)}, docker_client=FakeDocker, log=printed.append)
    assert again.demo_password == facts.demo_password
    _, chosen = hubconfig.prepare(
        {"GPUHUB_SITE_CONFIG": str(site_file), "GPUHUB_DEMO_PASSWORD": "chosen-pass-1"},
        docker_client=FakeDocker,
        log=printed.append,
    )
    assert chosen.demo_password == "chosen-pass-1"
