"""The idle culler's small state files in ``hub.state_dir``, shared by the service and the CLI.

gpuhub-idle writes its status every check and reads the exemptions that ``gpuhub idle exempt``
writes; the HTTP culler's hook notes its culls for gpuhub-idle to label in the ledger. Plain
JSON, replaced atomically, so this module stays light enough for ``gpuhub --help``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

STATUS_FILE = "idle-status.json"
EXEMPTIONS_FILE = "idle-exemptions.json"
HTTP_CULLS_FILE = "idle-http-culls.json"
GPU_IDLE = "gpu-idle"
HTTP_IDLE = "http-idle"
KEEP_CULLED_SECONDS = 24 * 3600


# ---------------------------------------------------------------- small JSON files in the state dir


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json(path: Path, data) -> None:
    """Atomic replace (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)
