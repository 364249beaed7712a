"""gpuhub-singleuser imports jupyterhub's single-user server without the hub's database layer (issue 17).

The start cost of a server is mostly imports; ``jupyterhub.singleuser`` pulls in the hub's ORM (SQLAlchemy,
Alembic, Mako) and page handlers that a single-user server never uses. gpuhub-singleuser imports it with
stand-ins for those modules (``import_singleuser``). Checked here, inside the built images: none of them is
loaded by the import, and whatever code holds a stand-in still reaches the real module. The server itself
(Lab, terminals, the hub's OAuth, the request log) is exercised by the other image tests and tests/browser.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpuhub.host import images

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "images/base-notebook/gpuhub-singleuser"

PROBE = r"""
import importlib.machinery, importlib.util, json, sys
loader = importlib.machinery.SourceFileLoader("gsu", "/opt/gpuhub/venv/bin/gpuhub-singleuser")
gsu = importlib.util.module_from_spec(importlib.util.spec_from_loader("gsu", loader))
loader.exec_module(gsu)
gsu.import_singleuser()
out = {"loaded": sorted(n for n in sys.modules
                        if n.split(".")[0] in ("sqlalchemy", "alembic", "mako") or n in gsu.HUB_ONLY_MODULES)}
import jupyterhub.scopes as scopes
out["intersection"] = sorted(scopes._intersect_expanded_scopes(
    {"read:users!user=a", "access:servers"}, {"read:users", "access:servers!user=b"}))
import jupyterhub.orm, sqlalchemy
out["real_through_stand_in"] = [scopes.orm.User is jupyterhub.orm.User, scopes.sa.inspect is sqlalchemy.inspect]
import jupyterhub.handlers.pages
out["later_import_is_real"] = jupyterhub.handlers.pages.__file__.endswith("/jupyterhub/handlers/pages.py")
print(json.dumps(out))
"""


def test_checked_version_is_the_locked_one():
    """The stand-ins were checked against one jupyterhub; the lock must pin that one (else: run this file's
    Docker test against the new version, then update HUB_ONLY_CHECKED_VERSION)."""
    locked = re.search(r"^jupyterhub==(\S+)", (ROOT / "images/base-notebook/requirements.lock").read_text(), re.M)
    checked = re.search(r'^HUB_ONLY_CHECKED_VERSION = "([^"]+)"', SCRIPT.read_text(), re.M)
    assert locked and checked and locked.group(1) == checked.group(1), (locked, checked)


@pytest.mark.docker
@pytest.mark.parametrize("name", ["base-notebook", "pytorch"])
def test_server_import_loads_no_hub_database_layer(built, run_in, name):
    built(name)
    out = run_in(images.IMAGES[name].tag, ["python", "-s", "-c", PROBE], user="23456:23456", read_only=True)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["loaded"] == [], f"{name}: the single-user server's import loaded {result['loaded']}"
    assert result["intersection"] == ["access:servers!user=b", "read:users!user=a"]
    assert result["real_through_stand_in"] == [True, True]
    assert result["later_import_is_real"] is True
