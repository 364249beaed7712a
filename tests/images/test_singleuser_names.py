"""How gpuhub-singleuser names the hub's numeric UIDs (no Docker: the script's functions on this host).

The image runs the same code at every server start (tests/images/test_terminal.py sees the result
through a real hub and terminal); here the rules themselves: which names pass unchanged, which are
escaped, and which groups get names.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ETC_PASSWD = "root:x:0:0:root:/root:/bin/bash\njovyan:x:1000:100::/home/jovyan:/bin/bash\n"
ETC_GROUP = "root:x:0:\nusers:x:100:\n"


@pytest.fixture(scope="module")
def gsu():
    path = str(ROOT / "images/base-notebook/gpuhub-singleuser")
    loader = importlib.machinery.SourceFileLoader("gpuhub_singleuser", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


@pytest.fixture
def etc(tmp_path):
    (tmp_path / "passwd").write_text(ETC_PASSWD)
    (tmp_path / "group").write_text(ETC_GROUP)
    return str(tmp_path)


@pytest.mark.parametrize(
    "hub_user, name",
    [
        ("alice", "alice"),
        ("kim.min-su-gist--abcdefghij", "kim.min-su-gist--abcdefghij"),  # an escaped hub name is a fine account name
        ("7eleven", "7eleven"),
        ("123", "u123"),  # chown/id would read an all-digit name as a number
        ("root", "root-20001"),  # the image's own names stay theirs
        ("jovyan", "jovyan-20001"),
        ("Ann Lee", "ann_lee"),
        ("-x", "x"),
        ("a" * 40, "a" * 31),
    ],
)
def test_account_names(gsu, etc, hub_user, name):
    got, passwd, _ = gsu.nss_entries(hub_user, 20001, 20001, [20001], etc=etc)
    assert got == name
    assert passwd == f"{name}:x:20001:20001:{hub_user}:/home/jovyan:/bin/bash\n"


def test_nothing_to_name_without_a_hub_user_or_for_the_images_own_uids(gsu, etc):
    assert gsu.nss_entries("", 20001, 20001, [], etc=etc) is None
    assert gsu.nss_entries("alice", 1000, 100, [100], etc=etc) is None  # jovyan
    assert gsu.nss_entries("alice", 0, 0, [0], etc=etc) is None


def test_course_groups_are_named_after_the_hub_group_of_their_instructors(gsu, etc, tmp_path):
    exchange = tmp_path / "exchange"
    for key, gid in (("ml101", 31001), ("cs50", 31002)):
        (exchange / key).mkdir(parents=True)
        os.chown(exchange / key, 0, gid)
    (exchange / "rootowned").mkdir()  # not laid out yet (root:root): no name
    env = "ml101:instructor,cs50:student,rootowned:student,../etc:student,missing:student"
    name, _, group = gsu.nss_entries("dana", 20005, 20005, [20005, 31001], env, etc=etc, exchange_root=str(exchange))
    assert name == "dana"
    # the user's own group; the course they teach lists them (a supplementary group), the one they take does not
    assert group.splitlines() == ["dana:x:20005:", "formgrade-ml101:x:31001:dana", "formgrade-cs50:x:31002:"]


def test_a_primary_group_the_image_names_is_left_to_it(gsu, etc):
    _, _, group = gsu.nss_entries("alice", 20001, 100, [100], etc=etc)
    assert group == ""
    _, _, group = gsu.nss_entries("users", 20001, 20001, [20001], etc=etc)
    assert group == "users-20001:x:20001:\n"  # "users" is gid 100 in /etc/group


def test_written_where_libnss_extrausers_reads_them(gsu, tmp_path, monkeypatch):
    env = {"JUPYTERHUB_USER": "alice"}
    monkeypatch.setattr(os, "getuid", lambda: 20001)
    monkeypatch.setattr(os, "getgid", lambda: 20001)
    monkeypatch.setattr(os, "getgroups", lambda: [20001])
    assert gsu.name_the_user(env, nss_dir=str(tmp_path / "nss")) == "alice"
    assert (tmp_path / "nss/passwd").read_text() == "alice:x:20001:20001:alice:/home/jovyan:/bin/bash\n"
    assert (tmp_path / "nss/group").read_text() == "alice:x:20001:\n"
    assert oct((tmp_path / "nss/passwd").stat().st_mode & 0o777) == "0o644"
    assert env["USER"] == env["LOGNAME"] == "alice"
    # no writable folder: the server still starts, nameless, and says why
    (tmp_path / "ro").write_text("a file, not a folder")
    assert gsu.name_the_user({"JUPYTERHUB_USER": "alice"}, nss_dir=str(tmp_path / "ro" / "nss")) is None
