"""scripts/base-image.sh takes the Debian mirrors from the building host's apt configuration and writes
those into the image; with no mirror there it stops and names GPUHUB_DEBIAN_MIRROR (no built-in host).

The host's apt configuration is a fixture folder, pointed to with apt's own APT_CONFIG."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DEB822 = """\
Types: deb-src
URIs: http://sources-only.example/debian
Suites: bookworm

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Enabled: no

Types: deb deb-src
# a comment inside the stanza
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
"""
ONE_LINE = (
    "deb [signed-by=/usr/share/keyrings/k.gpg] http://security-mirror.example/debian-security bookworm-security main\n"
)


def apt_host(tmp_path: Path, *, deb822: str = "", sources_list: str = "") -> dict:
    """An apt configuration folder (Dir::Etc) with these sources; the environment that makes apt read it."""
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "apt.conf.d").mkdir()
    if deb822:
        (etc / "sources.list.d" / "debian.sources").write_text(deb822)
    (etc / "sources.list").write_text(sources_list)
    conf = tmp_path / "apt.conf"
    conf.write_text(f'Dir::Etc "{etc}/";\n')
    return {**os.environ, "APT_CONFIG": str(conf), "GPUHUB_RUN": str(tmp_path / "run")}


def lib(env: dict, call: str, *args: str) -> str:
    proc = subprocess.run(
        ["bash", "-c", f'source scripts/lib.sh; {call} "$@"', "_", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def test_mirrors_come_from_enabled_deb_sources_of_the_host(tmp_path):
    env = apt_host(tmp_path, deb822=DEB822, sources_list=ONE_LINE)
    assert lib(env, "apt_uri", "bookworm") == "http://mirror.example/debian\n"
    assert lib(env, "apt_uri", "bookworm-security") == "http://security-mirror.example/debian-security\n"
    assert lib(env, "apt_uri", "trixie") == ""


def test_the_image_gets_the_hosts_mirrors_and_says_when_there_is_no_security_source():
    with_security = lib(
        os.environ, "image_apt_sources", "bookworm", "http://m.example/debian", "http://s.example/debian-security"
    ).splitlines()
    assert [line for line in with_security if not line.startswith("#")] == [
        "deb http://m.example/debian bookworm main",
        "deb http://m.example/debian bookworm-updates main",
        "deb http://s.example/debian-security bookworm-security main",
    ]
    without = lib(os.environ, "image_apt_sources", "bookworm", "http://m.example/debian").splitlines()
    assert [line for line in without if line.startswith("deb ")] == with_security[1:3]
    assert any(
        "no bookworm-security source" in line and "GPUHUB_DEBIAN_SECURITY_MIRROR" in line
        for line in without
        if line.startswith("#")
    )


@pytest.mark.docker  # the script checks the engine before anything else
def test_no_mirror_in_the_host_apt_config_stops_the_build_naming_the_setting(tmp_path):
    env = apt_host(tmp_path, sources_list="deb http://mirror.example/debian trixie main\n")
    env.pop("GPUHUB_DEBIAN_MIRROR", None)
    proc = subprocess.run(
        ["bash", "scripts/base-image.sh", "--force"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert "list no Debian bookworm mirror; set GPUHUB_DEBIAN_MIRROR to the URL of a Debian mirror" in proc.stderr
    assert not (tmp_path / "run" / "base-image").exists()  # stopped before debootstrap
