"""Site config validation: errors name the key path, what was given and what is allowed."""

from pathlib import Path

import pytest
import yaml

from gpuhub.core.site import SiteConfigError, load_site, parse_site

ROOT = Path(__file__).resolve().parents[2]


def example() -> dict:
    return yaml.safe_load((ROOT / "examples/site.yaml").read_text())


def test_shipped_example_is_valid_and_has_what_the_quickstart_promises():
    site = load_site(ROOT / "examples/site.yaml")
    assert len(site.organizations) >= 2
    assert len(site.gpus.devices) >= 4 and len({d.model for d in site.gpus.devices}) >= 2
    assert len(site.images) >= 1
    assert site.timezone == "Asia/Seoul"
    assert site.hub.database_url.startswith("sqlite:///")
    assert site.orgs_of("bob") == ["gist-ai", "cnuh-radiology"]


@pytest.mark.parametrize(
    "path,value,expected",
    [
        (
            ("organizations", "gist-ai", "gpu_limit"),
            "two",
            "organizations.gist-ai.gpu_limit: expected an integer >= 0, got 'two'",
        ),
        (("organizations", "gist-ai", "gpu_limit"), -1, "organizations.gist-ai.gpu_limit: -1 is not allowed"),
        (("gpus", "runtime"), "cuda", "gpus.runtime: 'cuda' is not allowed; allowed: none | nvidia"),
        (("timezone",), "Mars/Olympus", "timezone: 'Mars/Olympus' is not an IANA time zone"),
        (
            ("organizations", "gist-ai", "images"),
            ["python", "tensorflow"],
            "organizations.gist-ai.images[1]: 'tensorflow' is not in the image catalog",
        ),
        (
            ("gpus", "devices"),
            [{"uuid": "GPU-x", "model": "V100"}],
            "gpus.devices[0].model: 'V100' is not declared under gpus.models",
        ),
        (("hub", "bind_url"), "127.0.0.1:8000", "hub.bind_url: '127.0.0.1:8000' is not allowed"),
        (("organizations", "gist-ai", "gpu_limt"), 3, "organizations.gist-ai.gpu_limt: unknown key"),
    ],
)
def test_errors_name_key_value_and_what_is_allowed(tmp_path, path, value, expected):
    data = example()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SiteConfigError) as e:
        parse_site(data, tmp_path / "site.yaml")
    assert expected in str(e.value)


def test_missing_file_names_the_env_var(tmp_path):
    with pytest.raises(SiteConfigError, match="GPUHUB_SITE_CONFIG"):
        load_site(tmp_path / "nope.yaml")


def test_state_dir_is_relative_to_the_config_file(tmp_path):
    data = example()
    data["hub"]["state_dir"] = "st"
    site = parse_site(data, tmp_path / "conf" / "site.yaml")
    assert site.hub.state_dir == (tmp_path / "conf" / "st").resolve()
