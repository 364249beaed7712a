"""The `gpuhub` command line: one parser, help for every subcommand, one-line user errors, site-time periods."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from gpuhub import cli
from gpuhub.host import images
from gpuhub.hub import hubconfig
from tests.unit.test_hubconfig import FACTS, SITE

ROOT = Path(__file__).resolve().parents[2]

# 00:30 on 1 December in Seoul, still 30 November on the host's UTC clock
NOV_30_1530Z = datetime(2026, 11, 30, 15, 30, tzinfo=UTC)


def write_site(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "examples/site.yaml").read_text())
    data["hub"]["state_dir"] = str(tmp_path / "state")
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for k in parents:
            node = node[k]
        node[last] = value
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def site(tmp_path) -> Path:
    return write_site(tmp_path)


def run_cli(*argv: str, clock=lambda: NOV_30_1530Z) -> int:
    return cli.main(list(argv), clock=clock)


# ---------------------------------------------------------------- help


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every subcommand path the parser has, e.g. ("images", "build")."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*path, name))


COMMANDS = [
    (),
    ("check-config",),
    ("run",),
    ("images",),
    ("images", "build"),
    ("images", "list"),
    ("images", "lock"),
    ("images", "push-to-nodes"),
    ("quota",),
    ("quota", "status"),
    ("billing",),
    ("billing", "statement"),
    ("backup",),
    ("restore",),
    ("course",),
    ("course", "list"),
    ("course", "members"),
    ("course", "servers"),
    ("exporter",),
    ("exporter", "gpu"),
    ("exporter", "usage"),
    ("audit",),
    ("audit", "verify"),
    ("audit", "export"),
    ("idle",),
    ("idle", "status"),
    ("idle", "exempt"),
    ("project",),
    ("project", "list"),
    ("project", "members"),
    ("project", "add-member"),
    ("project", "remove-member"),
    ("project", "extend"),
    ("project", "records"),
    ("project", "expire"),
    ("node",),
    ("node", "register"),
    ("node", "list"),
    ("queue",),
    ("queue", "list"),
    ("reservations",),
    ("reservations", "list"),
    ("service",),
    ("service", "quota"),
    ("service", "project-proxy"),
]


def test_the_help_test_covers_every_subcommand():
    assert sorted(command_paths(cli.build_parser())) == sorted(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "gpuhub")
def test_every_subcommand_has_help(path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(*path, "--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(('gpuhub', *path))} "), out


@pytest.mark.parametrize(
    "alias, same_as",
    [
        (["-m", "gpuhub"], []),
        (["-m", "gpuhub.cli"], []),
        (["-m", "gpuhub.host.images"], ["images"]),
        (["-m", "exporters"], ["exporter"]),
        (["-m", "exporters", "usage"], ["exporter", "usage"]),
        (["-m", "gpuhub.hub.quota_service"], ["service", "quota"]),
    ],
    ids=lambda v: " ".join(v),
)
def test_python_m_entry_points_are_the_same_parser(alias, same_as, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps help to the terminal: the same width in both
    proc = subprocess.run([sys.executable, *alias, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(SystemExit):
        run_cli(*same_as, "--help")
    assert proc.stdout == capsys.readouterr().out


def test_gpuhub_help_imports_no_hub_docker_database_or_prometheus_code():
    code = (
        "import sys; from gpuhub import cli; cli.build_parser(); "
        "print(sorted(m for m in ('jupyterhub', 'tornado', 'docker', 'dockerspawner', 'sqlalchemy', "
        "'alembic', 'prometheus_client') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_the_hub_starts_the_quota_service_through_this_parser():
    c = Config()
    hubconfig.apply_services(c, SITE, FACTS)
    command = c.JupyterHub.services[0]["command"]
    assert command == [sys.executable, "-m", "gpuhub", "service", "quota"]
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: gpuhub service quota"), proc.stderr


# ---------------------------------------------------------------- user errors: one line, exit 2


def unreachable_pg(tmp_path):
    return write_site(tmp_path, **{"hub.db_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"})


def sqlite_in_missing_folder(tmp_path):
    return write_site(tmp_path, **{"hub.db_url": f"sqlite:///{tmp_path}/no/such/folder/hub.sqlite"})


def bad_timezone(tmp_path):
    return write_site(tmp_path, timezone="Mars/Olympus")


USER_ERRORS = [
    # (argv after --site SITE, site maker, what the line must say)
    (["billing", "statement", "--period", "2026-13"], write_site, "--period '2026-13': expected YYYY-MM"),
    (["billing", "statement", "--period", "26-1"], write_site, "e.g. 2026-11"),
    (["billing", "statement", "--org", "nope"], write_site, "--org 'nope': no such organization"),
    (["billing", "statement", "-o", "/no/such/folder/x.csv"], write_site, "--output /no/such/folder/x.csv: cannot"),
    (["quota", "status"], unreachable_pg, "cannot use the hub database postgresql+psycopg://nobody@127.0.0.1:1/none"),
    (["billing", "statement"], unreachable_pg, "check that the server is running and that hub.db_url"),
    (["course", "servers", "ml101"], unreachable_pg, "cannot use the hub database"),
    (["quota", "status"], sqlite_in_missing_folder, "check that its folder exists"),
    (["course", "members", "nope"], write_site, "courses.nope: no such course"),
    (["course", "servers", "nope"], write_site, "courses: ml101"),
    (["images", "build", "tensorflow"], write_site, "unknown image 'tensorflow'; gpuhub's images are base-notebook"),
    (["images", "lock", "base-notebook", "nope"], write_site, "unknown image 'nope'"),
    (["run", "--config", "/no/such/jupyterhub_config.py"], write_site, "--config /no/such/jupyterhub_config.py"),
    (["service", "quota"], write_site, "JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN not set"),
    (["check-config"], bad_timezone, "timezone: 'Mars/Olympus' is not an IANA time zone"),
]


def one_error_line(err: str, expected: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuhub: error: "), err
    assert expected in lines[0] and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, make_site, expected", USER_ERRORS, ids=lambda v: v if isinstance(v, str) else None)
def test_a_user_error_is_one_line_and_exit_2(argv, make_site, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    assert run_cli("--site", str(make_site(tmp_path)), *argv) == 2
    one_error_line(capsys.readouterr().err, expected)


def test_a_missing_site_file_names_both_ways_to_give_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPUHUB_SITE_CONFIG", str(tmp_path / "gone.yaml"))
    assert run_cli("check-config") == 2
    line = one_error_line(capsys.readouterr().err, f"site config {tmp_path / 'gone.yaml'}: no such file")
    assert "--site" in line and "GPUHUB_SITE_CONFIG" in line


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["-m", "gpuhub", "billing", "statement", "--period", "2026-13"], "--period '2026-13'"),
        (["-m", "gpuhub", "quota", "status"], "cannot use the hub database"),
        (["-m", "exporters", "usage", "--listen", "127.0.0.1:99999"], "--listen '127.0.0.1:99999': expected HOST:PORT"),
        (["-m", "gpuhub.host.images", "build", "nope"], "unknown image 'nope'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_real_entry_points_print_one_line_and_no_traceback(argv, expected, tmp_path):
    env = {"GPUHUB_SITE_CONFIG": str(unreachable_pg(tmp_path)), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, expected)


# ---------------------------------------------------------------- the site's month, not the host's


def test_period_defaults_to_the_current_month_in_the_site_timezone(site, capsys):
    assert run_cli("--site", str(site), "billing", "statement", "--format", "html") == 0
    assert "<title>gpuhub statement 2026-12</title>" in capsys.readouterr().out  # Seoul is already in December
    utc_site = write_site(site.parent, timezone="UTC")
    assert run_cli("--site", str(utc_site), "billing", "statement", "--format", "html") == 0
    assert "<title>gpuhub statement 2026-11</title>" in capsys.readouterr().out


def test_quota_status_reads_the_injected_clock(site, capsys):
    assert run_cli("--site", str(site), "quota", "status", "--format", "json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["period"] == "2026-12" and status["at"] == NOV_30_1530Z.isoformat()


def test_site_may_also_follow_the_command(site, capsys):
    assert run_cli("billing", "statement", "--site", str(site), "--period", "2026-10") == 0
    assert json.loads(capsys.readouterr().out) == []


# ---------------------------------------------------------------- images


@pytest.fixture
def builds(monkeypatch):
    calls = []
    monkeypatch.setattr(images, "build", lambda names, root, log, no_cache=False: calls.append((names, no_cache)))
    # base-notebook is built from this checkout, stock-notebook from other sources (stale), the rest not built
    built = {"base-notebook": images.source_sha256(images.repo_root(), "base-notebook"), "stock-notebook": "0" * 64}
    monkeypatch.setattr(images, "docker_has", lambda name: name in built)
    monkeypatch.setattr(images, "built_source", lambda name: built.get(name))
    return calls


def test_images_build_takes_names_in_build_order(builds, site):
    assert run_cli("images", "build", "pytorch", "base-notebook", "--no-cache") == 0
    assert run_cli("images", "build") == 0  # no name: every image
    assert run_cli("--site", str(site), "images", "build", "--catalog") == 0
    assert builds == [
        (["base-notebook", "pytorch"], True),
        (list(images.BUILD_ORDER), False),
        (["base-notebook", "pytorch"], False),  # examples/site.yaml offers python and pytorch
    ]


def test_images_build_missing_skips_what_is_built_from_this_checkout(builds, capsys):
    assert run_cli("images", "build", "--missing", "base-notebook") == 0
    assert "images up to date" in capsys.readouterr().out
    assert run_cli("images", "build", "--missing", "--all") == 0
    assert run_cli("images", "build", "--missing") == 0  # no name: every image that is missing
    assert builds == [(["stock-notebook", "pytorch", "hub"], False)] * 2


def test_images_list_shows_every_image_and_whether_it_is_built(builds, capsys):
    assert run_cli("images", "list") == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        [n, f"gpuhub/{n}:latest", {"base-notebook": "built", "stock-notebook": "stale"}.get(n, "missing")]
        for n in images.BUILD_ORDER
    ]


def test_images_build_catalog_with_none_of_ours_builds_nothing(builds, tmp_path, capsys):
    site = write_site(
        tmp_path,
        images={"python": {"image": "someone/jupyter:1", "display_name": "Python"}},
        courses={},
        **{"organizations.gist-ai.images": ["python"]},
    )
    assert run_cli("--site", str(site), "images", "build", "--catalog") == 0
    assert builds == [] and "names none of gpuhub's images" in capsys.readouterr().out


def test_run_hands_jupyterhub_its_own_flags_after_the_double_dash(site, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: seen.append(argv))
    monkeypatch.setenv("GPUHUB_SITE_CONFIG", "elsewhere.yaml")
    config = str(ROOT / "jupyterhub_config.py")
    assert run_cli("--site", str(site), "run", "--config", config, "--", "--debug", "--port", "8123") == 0
    assert seen[0][1:] == ["-f", config, "--debug", "--port", "8123"] and seen[0][0].endswith("jupyterhub")
    assert cli.os.environ["GPUHUB_SITE_CONFIG"] == str(site)  # the hub reads the same site config
