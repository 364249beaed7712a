"""What the records and expiry tests share: the airlock tests' site (project ``cohort``: stewards steve, sara, sam;
members alice, bob, sam) written as a YAML file the ``gpuhub`` command reads, with this test's database and its own
hub instance name (so only volumes the test made can match), a processing scenario, and the CLI run in-process
with the test's clock.
"""

from __future__ import annotations

import contextlib
import copy
import io
import uuid
from pathlib import Path

import yaml

from gpuhub import cli
from gpuhub.core.site import load_site
from quota.airlock_store import AirlockStore
from quota.audit import AuditLog
from quota.project_store import ProjectStore
from tests.airlock.conftest import PROJECT, REGISTRY_CSV, SITE, TEST_LABEL

SMALL_CELLS = b"region,patients\nseoul,120\nbusan,3\nulsan,45\n"
WHY = "표 2 (논문) <script>alert('x')</script>"  # Korean text, and markup the HTML must show as text


def write_site(tmp_path: Path, db_url: str, project: dict | None = None) -> Path:
    """The site config file; ``hub.instance`` is unique per test (``gpuhubt`` + 6 hex digits)."""
    registry = tmp_path / "registry"
    registry.mkdir(exist_ok=True)
    (registry / "cohort.csv").write_text(REGISTRY_CSV, encoding="utf-8")
    data = copy.deepcopy(SITE)
    spec = copy.deepcopy(PROJECT)
    spec["datasets"]["registry"]["source"] = str(registry)
    spec["purpose"] = "2015–2020 코호트 생존 분석 (survival analysis)"
    spec.update(project or {})
    other = {**copy.deepcopy(spec), "stewards": ["olga"], "members": ["oscar"]}
    data["projects"] = {"cohort": spec, "other": other}
    data["airlock"] = {"quarantine_dir": str(tmp_path / "quarantine")}
    data["hub"] = {
        **data["hub"],
        "state_dir": str(tmp_path / "state"),
        "db_url": db_url,
        "instance": f"gpuhubt{uuid.uuid4().hex[:6]}",
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def site_of(path: Path):
    return load_site(path)


def gpuhub(site_path: Path, clock, *args: str) -> tuple[int, str, str]:
    """``gpuhub --site SITE ARGS`` in this process with ``clock`` as now: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["--site", str(site_path), *args], clock=clock)
    return rc, out.getvalue(), err.getvalue()


def scenario(engine, site, clock, docker_client, make_volume) -> dict:
    """A month of processing in project cohort: alice accepts the DUA, steve adds carol, alice starts a server
    (the hub's audit rows), exports a table with a cell of 3 that steve and sara approve and that is released,
    and imports a script that steve approves. Returns the volumes and request ids."""
    projects = ProjectStore(engine, clock)
    projects.accept_dua("cohort", "alice", site.projects["cohort"].dua_sha256, "10.0.0.7")
    clock.advance(minutes=5)
    projects.add_member("cohort", "carol", "steve")
    audit = AuditLog(engine, clock)
    clock.advance(minutes=5)
    audit.append("server.started", project="cohort", account="alice", source="10.0.0.7", target="alice",
                 detail={"server": "cohort", "home": "gpuhub-project-cohort-user-1000"})  # fmt: skip
    audit.append("dataset.mounted", project="cohort", account="alice", source="10.0.0.7", target="registry",
                 detail={"at": "/data/registry", "mode": "ro"})  # fmt: skip
    project_home = make_volume({"results/table.csv": SMALL_CELLS})
    home = make_volume({"code/fit.py": b"print('fit')\n"})
    airlock = AirlockStore(engine, site, clock, docker_client, labels={TEST_LABEL: "1"})
    clock.advance(minutes=30)
    export = airlock.submit("cohort", "alice", "export", "results/table.csv", WHY, source_volume=project_home)
    clock.advance(minutes=10)
    airlock.review(export.id, "steve", "approve", "3 counts hospitals, not people")
    clock.advance(minutes=10)
    airlock.review(export.id, "sara", "approve", "agreed: hospitals")
    airlock.release(export.id, target_volume=home, uid=1000)
    clock.advance(minutes=10)
    imp = airlock.submit("cohort", "alice", "import", "code/fit.py", "the model fit script", source_volume=home)
    airlock.review(imp.id, "steve", "approve", "read the script: no data in it")
    clock.advance(minutes=10)
    audit.append("server.stopped", project="cohort", account="alice", target="alice", detail={"server": "cohort"})
    return {"project_home": project_home, "home": home, "export": export.id, "import": imp.id, "airlock": airlock}
