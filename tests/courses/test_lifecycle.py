"""nbgrader's full lifecycle through a real hub, real containers and per-user UIDs.

One hub, four servers: ``prof`` teaches ml101, ``ann`` and ``ben`` take it, ``dave`` takes
cs50. Every step is nbgrader's own command line, run in the user's server through a kernel
(as a user would in a terminal): quickstart, generate/release, fetch, submit, collect,
autograde, generate/release feedback, fetch feedback. Then the walls: what a student cannot
read, change, release or collect, and what a member of another course cannot see.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest
import requests

from tests.conftest import _hub
from tests.harness import default_site

pytestmark = pytest.mark.docker

EXCHANGE = "/srv/nbgrader/exchange/ml101"
USERS = ("prof", "ann", "ben", "dave")


def _cell(source: str, **nbgrader) -> dict:
    meta = {"schema_version": 3, "locked": False, "solution": False, "grade": False, "task": False, **nbgrader}
    return {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"nbgrader": meta},
        "outputs": [],
        "source": source,
    }


SOURCE_NOTEBOOK = {
    "cells": [
        _cell(
            "def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION\n",
            solution=True,
            grade_id="answer",
        ),
        _cell(
            "assert square(3) == 9\nassert square(-2) == 4\n", grade=True, locked=True, points=2, grade_id="test_square"
        ),
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    },
    "nbformat": 4,
    "nbformat_minor": 4,
}


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client):
    site = default_site("placeholder", 0, tmp_path_factory.mktemp("state"))
    site["organizations"]["ai-academy"] = {
        "display_name": "AI Academy",
        "gpu_limit": 2,
        "gpu_hours_per_month": 50,
        "max_gpus_per_server": 1,
    }
    site["courses"] = {
        "ml101": {"display_name": "ML 101", "org": "ai-academy", "instructors": ["prof"], "students": ["ann", "ben"]},
        "cs50": {"org": "ai-academy", "students": ["dave"]},
        "ml201": {"org": "ai-academy", "instructors": ["prof"]},  # prof teaches two courses
    }
    yield from _hub(request, tmp_path_factory, site=site)


@pytest.fixture(scope="module")
def servers(hub):
    for user in USERS:
        r = hub.spawn(user, {"image": "python", "gpus": 1 if user == "ann" else 0})
        assert r.status_code in (201, 202), r.text
    for user in USERS:
        hub.wait_ready(user, timeout=120)
    return {}  # facts the tests hand on (submission names, feedback names)


def sh(hub, user: str, script: str, cwd: str = "/home/jovyan", timeout: float = 180) -> tuple[int, str]:
    """Run a shell command in the user's server (kernel -> subprocess); (exit status, output)."""
    code = (
        "import json, subprocess\n"
        f"r = subprocess.run({script!r}, shell=True, cwd={cwd!r}, capture_output=True, text=True)\n"
        "print(json.dumps([r.returncode, r.stdout + r.stderr]))\n"
    )
    out = hub.run_code(user, code, timeout=timeout)
    try:
        rc, text = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"{user}: no result from the kernel:\n{out}") from None
    return rc, text


def ok(hub, user: str, script: str, **kw) -> str:
    rc, out = sh(hub, user, script, **kw)
    assert rc == 0, f"{user}$ {script}\n{out}"
    return out


def py(hub, user: str, code: str) -> dict:
    """Run Python in the user's kernel; it prints one JSON line, returned parsed."""
    out = hub.run_code(user, code, timeout=60)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"{user}: unexpected output:\n{out}") from None


def probe(hub, user: str, path: str) -> dict:
    """What ``user`` can do with ``path``: list, read, stat (error names or results)."""
    code = f"""
import json, os
path = {path!r}
res = {{}}
for what, fn in (("list", lambda: sorted(os.listdir(path))), ("read", lambda: open(path).read()[:80]),
                 ("exists", lambda: os.path.exists(path))):
    try:
        res[what] = fn()
    except Exception as e:
        res[what] = type(e).__name__
print(json.dumps(res))
"""
    return py(hub, user, code)


def answer(hub, user: str, body: str) -> None:
    """The student edits the fetched notebook's answer cell (as they would in JupyterLab)."""
    py(
        hub,
        user,
        f"""
import json
p = "/home/jovyan/hw1/hw1.ipynb"
nb = json.load(open(p))
cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {{}}).get("grade_id") == "answer")
assert "NotImplementedError" in "".join(cell["source"]), cell["source"]
cell["source"] = {("def square(x):" + chr(10) + "    return " + body + chr(10))!r}
json.dump(nb, open(p, "w"))
print(json.dumps("ok"))
""",
    )


def test_full_lifecycle_with_nbgraders_own_commands(hub, servers):
    # instructor: quickstart in the home (fills the shared course folder ~/ml101), an own assignment
    ok(hub, "prof", "nbgrader quickstart ml101")
    py(
        hub,
        "prof",
        f"""
import json, os
os.makedirs("/home/jovyan/ml101/source/hw1", exist_ok=True)
json.dump(json.loads({json.dumps(SOURCE_NOTEBOOK)!r}), open("/home/jovyan/ml101/source/hw1/hw1.ipynb", "w"))
print(json.dumps("ok"))
""",
    )
    ok(hub, "prof", "nbgrader generate_assignment hw1", cwd="/home/jovyan/ml101")
    ok(hub, "prof", "nbgrader release_assignment hw1", cwd="/home/jovyan/ml101")
    assert "hw1" in ok(hub, "ann", "nbgrader list --course ml101")

    # students: fetch, answer (ann right, ben wrong), submit
    for user, body in (("ann", "x * x"), ("ben", "x + x")):
        ok(hub, user, "nbgrader fetch_assignment hw1 --course ml101")
        answer(hub, user, body)
        ok(hub, user, "nbgrader submit hw1 --course ml101")

    # ben forges a submission in ann's name (a later one, which collect would otherwise prefer)
    forged = "ann+hw1+2099-01-01 00:00:00.000000 UTC+forged"
    ok(
        hub,
        "ben",
        f"mkdir '{EXCHANGE}/inbound/{forged}' && cp hw1/hw1.ipynb '{EXCHANGE}/inbound/{forged}/' "
        f"&& printf '2099-01-01 00:00:00.000000 UTC' > '{EXCHANGE}/inbound/{forged}/timestamp.txt'",
    )

    # instructor: collect (the forged one is refused), autograde, feedback
    out = ok(hub, "prof", "nbgrader collect hw1", cwd="/home/jovyan/ml101")
    assert "named for 'ann' but was submitted by UID" in out, out
    ok(hub, "prof", "nbgrader autograde hw1", cwd="/home/jovyan/ml101")
    ok(hub, "prof", "nbgrader generate_feedback hw1", cwd="/home/jovyan/ml101")
    ok(hub, "prof", "nbgrader release_feedback hw1", cwd="/home/jovyan/ml101")

    scores = {}
    for user in ("ann", "ben"):
        ok(hub, user, "nbgrader fetch_feedback hw1 --course ml101")
        html = py(
            hub,
            user,
            """
import glob, json
files = glob.glob("/home/jovyan/hw1/feedback/*/hw1.html")
print(json.dumps(open(files[0]).read() if len(files) == 1 else files))
""",
        )
        assert isinstance(html, str), html
        m = re.search(r"hw1 \(Score: ([\d.]+) / ([\d.]+)\)", html)
        assert m, html[:2000]
        scores[user] = float(m.group(1))
        assert float(m.group(2)) == 2.0
    assert scores == {"ann": 2.0, "ben": 0.0}

    # hand on the names the isolation tests need (only the instructor can list them)
    listing = py(
        hub,
        "prof",
        f"""
import json, os
inbound = sorted(os.listdir("{EXCHANGE}/inbound"))
secret = open(os.path.join("{EXCHANGE}/inbound", next(n for n in inbound if n.startswith("ann+") and "forged" not in n),
                           "submission_secret.txt")).read()
print(json.dumps({{"inbound": inbound, "secret": secret, "feedback": sorted(os.listdir("{EXCHANGE}/feedback"))}}))
""",
    )
    ann_sub = next(n for n in listing["inbound"] if n.startswith("ann+") and "forged" not in n)
    ann_feedback = hashlib.md5((listing["secret"] + "hw1").encode()).hexdigest() + ".html"
    assert ann_feedback in listing["feedback"], listing
    servers.update(ann_sub=ann_sub, ann_feedback=ann_feedback)


def test_a_student_cannot_list_read_or_change_another_students_work(hub, servers):
    sub = f"{EXCHANGE}/inbound/{servers['ann_sub']}"
    fb = f"{EXCHANGE}/feedback/{servers['ann_feedback']}"
    assert probe(hub, "ben", f"{EXCHANGE}/inbound")["list"] == "PermissionError"
    assert probe(hub, "ben", f"{EXCHANGE}/feedback")["list"] == "PermissionError"
    assert probe(hub, "ben", sub)["list"] == "PermissionError"
    for name in ("hw1.ipynb", "submission_secret.txt"):
        assert probe(hub, "ben", f"{sub}/{name}")["read"] == "PermissionError"
    assert probe(hub, "ben", fb)["read"] == "PermissionError"  # even knowing the name (ACL: ann only)
    assert probe(hub, "ann", fb)["read"] not in ("PermissionError", "FileNotFoundError")
    # nor rename, delete or write into it (sticky inbound, 0750 submission folder)
    res = py(
        hub,
        "ben",
        f"""
import json, os, shutil
res = {{}}
for what, fn in (("rename", lambda: os.rename({sub!r}, {sub!r} + "x")),
                 ("delete", lambda: shutil.rmtree({sub!r})),
                 ("write", lambda: open({sub!r} + "/hw1.ipynb", "w")),
                 ("feedback", lambda: open("{EXCHANGE}/feedback/evil.html", "w"))):
    try:
        fn(); res[what] = "done"
    except Exception as e:
        res[what] = type(e).__name__
print(json.dumps(res))
""",
    )
    assert res == {
        "rename": "PermissionError",
        "delete": "PermissionError",
        "write": "PermissionError",
        "feedback": "PermissionError",
    }, res
    # ann's graded work is hers: ben's own folder on the instructor side is separate
    assert "x * x" in ok(hub, "prof", "cat submitted/ann/hw1/hw1.ipynb", cwd="/home/jovyan/ml101")


def test_a_student_cannot_release_collect_or_open_formgrader(hub, servers):
    ok(hub, "ben", "mkdir -p release/evil && cp hw1/hw1.ipynb release/evil/")
    rc, out = sh(hub, "ben", "nbgrader release_assignment evil --course ml101")
    assert rc != 0, out
    assert probe(hub, "ben", f"{EXCHANGE}/outbound/evil")["exists"] is False
    assert probe(hub, "ann", f"{EXCHANGE}/outbound")["list"] == ["hw1"]
    rc, out = sh(hub, "ben", "nbgrader collect hw1 --course ml101")
    assert rc != 0 and "permission" in out.lower(), out
    assert probe(hub, "ben", "/home/jovyan/ml101")["exists"] is False  # no course folder
    token = hub.user_token("ben")
    r = requests.get(f"{hub.url}/user/ben/formgrader/", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 404, (r.status_code, r.url)
    r = requests.get(f"{hub.url}/user/ben/courses", headers={"Authorization": f"token {token}"}, timeout=60)
    assert r.json() == {"success": True, "value": ["ml101"]}, r.text


def test_a_member_of_another_course_sees_neither_courses_files(hub, servers):
    seen = py(
        hub,
        "dave",
        """
import json, os
print(json.dumps({"exchange": sorted(os.listdir("/srv/nbgrader/exchange")),
                  "ml101_home": os.path.exists("/home/jovyan/ml101")}))
""",
    )
    assert seen == {"exchange": ["cs50"], "ml101_home": False}, seen
    rc, out = sh(hub, "dave", "nbgrader fetch_assignment hw1 --course ml101")
    assert rc != 0, out
    assert "hw1" not in ok(hub, "dave", "nbgrader list")
    token = hub.user_token("dave")
    r = requests.get(f"{hub.url}/user/dave/courses", headers={"Authorization": f"token {token}"}, timeout=60)
    assert r.json() == {"success": True, "value": []}, r.text
    # and dave's token does not show him ml101's students
    r = hub.api("GET", "/users", token=token)
    assert r.status_code == 403 or {u["name"] for u in r.json()} <= {"dave"}, r.text


def test_formgrader_loads_through_the_hub_for_the_instructor(hub, servers):
    token = hub.user_token("prof")
    h = {"Authorization": f"token {token}"}
    r = requests.get(f"{hub.url}/user/prof/formgrader", headers=h, timeout=60)
    assert r.status_code == 200 and r.url.endswith("/formgrader/manage_assignments"), (r.status_code, r.url)
    r = requests.get(f"{hub.url}/user/prof/formgrader/api/assignments", headers=h, timeout=60)
    assert r.status_code == 200, r.text
    assignments = {a["name"]: a for a in r.json()}
    assert "hw1" in assignments and assignments["hw1"]["num_submissions"] == 2, assignments.get("hw1")
    r = requests.get(f"{hub.url}/user/prof/formgraders", headers=h, timeout=60)
    courses = r.json()
    assert courses["success"] and [c["course_id"] for c in courses["value"]] == ["ml101", "ml201"], courses
    local, other = courses["value"]
    assert local["kind"] == "local" and other["url"].endswith("/user/prof/ml201/formgrader"), courses


def test_an_instructor_of_two_courses_grades_the_second_in_a_server_named_after_it(hub, servers):
    r = hub.spawn("prof", {"image": "python", "gpus": 0}, server="ml201")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("prof", server="ml201", timeout=120)
    try:
        h = {"Authorization": f"token {hub.user_token('prof')}"}
        r = requests.get(f"{hub.url}/user/prof/ml201/formgraders", headers=h, timeout=60)
        listed = {c["course_id"]: c for c in r.json()["value"]}
        assert listed["ml201"]["kind"] == "local", listed
        assert listed["ml101"]["url"].endswith("/user/prof/formgrader"), listed  # the default server grades ml101
        r = requests.get(f"{hub.url}/user/prof/ml201/formgrader/api/assignments", headers=h, timeout=60)
        assert r.status_code == 200 and r.json() == [], r.text  # ml201's gradebook, not ml101's (hw1)
        r = requests.get(f"{hub.url}/user/prof/formgrader/api/assignments", headers=h, timeout=60)
        assert "hw1" in {a["name"] for a in r.json()}  # the default server still grades ml101
    finally:
        hub.stop_server("prof", server="ml201", timeout=120)


def test_instructor_sees_the_course_students_servers_and_gpus(hub, servers):
    token = hub.user_token("prof")
    r = hub.api("GET", "/users", token=token)
    assert r.status_code == 200, r.text
    users = {u["name"]: u for u in r.json()}
    assert set(users) == {"ann", "ben"}, sorted(users)
    assert users["ann"]["servers"][""]["user_options"]["gpus"] == 1
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpuhub.cli",
            "--site",
            str(hub.site_path),
            "course",
            "servers",
            "ml101",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_user = {s["user"]: s for s in report["servers"]}
    assert set(by_user) == {"prof", "ann", "ben"} and by_user["ann"]["gpus"] == 1, report
    assert report["course_gpus_in_use"] == 1 and report["org"] == "ai-academy"


def test_concurrent_graders_do_not_hit_database_is_locked(hub, servers):
    """Eight gradebook writers at once (z2jh#872): WAL on the local course volume + a busy timeout
    make them queue instead of failing."""
    script = (
        "for i in $(seq 1 8); do (nbgrader db student add load$i --last-name=L$i >/tmp/db$i.log 2>&1; "
        'echo "rc=$?" >>/tmp/db$i.log) & done; wait; cat /tmp/db*.log'
    )
    out = ok(hub, "prof", script, cwd="/home/jovyan/ml101", timeout=240)
    assert "database is locked" not in out, out
    assert out.count("rc=0") == 8, out
    listed = ok(hub, "prof", "nbgrader db student list", cwd="/home/jovyan/ml101")
    assert all(f"load{i} " in listed or f"load{i}\n" in listed or f"load{i} (" in listed for i in range(1, 9)), listed


def test_students_lab_leaves_out_the_instructor_tools(hub, servers):
    def page_config(user):
        token = hub.user_token(user)
        r = requests.get(f"{hub.url}/user/{user}/lab", headers={"Authorization": f"token {token}"}, timeout=60)
        assert r.status_code == 200, r.status_code
        start = r.text.index('id="jupyter-config-data"')
        blob = r.text[r.text.index(">", start) + 1 : r.text.index("</script>", start)]
        return json.loads(blob)

    student = page_config("ben")["disabledExtensions"]
    assert {"@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment"} <= set(student), student
    teacher = page_config("prof").get("disabledExtensions", [])
    assert "@jupyter/nbgrader:formgrader" not in teacher, teacher
