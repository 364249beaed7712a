#!/usr/bin/env bash
# Rebuild gpuhub_lab/labextension/ from src/ and package.json (`make lab-extension`); commit the result.
#
# Runs on the host (the docker build cannot reach npm): npm installs @jupyterlab/builder in
# $GPUHUB_RUN/lab-extension/work (default .run/), outside the image folder so no node_modules reaches
# the build context, and builds against the core package.json of the JupyterLab the image locks
# (jupyterlab/staging from its wheel). package-lock.json is kept without `resolved` URLs, so no
# registry host is committed; npm resolves through the machine's own npm configuration.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
run="${GPUHUB_RUN:-$root/.run}"
work="$run/lab-extension/work"
lab_version="$(sed -nE 's/^jupyterlab==([^ ]+).*/\1/p' "$root/images/base-notebook/requirements.lock")"
[ -n "$lab_version" ] || { echo "error: no jupyterlab== pin in images/base-notebook/requirements.lock" >&2; exit 1; }

mkdir -p "$work"
rm -rf "$work/src" "$work/gpuhub_lab"
cp -r "$here/src" "$here/package.json" "$here/.npmrc" "$work/"
if [ -f "$here/package-lock.json" ]; then
  cp "$here/package-lock.json" "$work/"
  (cd "$work" && npm ci --ignore-scripts --no-audit --no-fund)
else
  (cd "$work" && npm install --ignore-scripts --no-audit --no-fund)
fi
# the lock without registry URLs (integrity hashes stay)
node -e '
const fs = require("fs"), f = process.argv[1], lock = JSON.parse(fs.readFileSync(f));
for (const p of Object.values(lock.packages || {})) delete p.resolved;
fs.writeFileSync(f, JSON.stringify(lock, null, 2) + "\n");' "$work/package-lock.json"
cp "$work/package-lock.json" "$here/package-lock.json"

core="$work/core-$lab_version"
if [ ! -f "$core/jupyterlab/staging/package.json" ]; then
  wheel="$(ls "$run/wheels/base-notebook/jupyterlab-$lab_version-"*.whl 2>/dev/null | head -1 || true)"
  if [ -z "$wheel" ]; then
    "$root/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$work/dl" "jupyterlab==$lab_version"
    wheel="$(ls "$work/dl/jupyterlab-$lab_version-"*.whl | head -1)"
  fi
  rm -rf "$core" && mkdir -p "$core"
  (cd "$core" && "$root/.venv/bin/python" -m zipfile -e "$wheel" . >/dev/null)
fi
(cd "$work" && node_modules/.bin/build-labextension --core-path "$core/jupyterlab/staging" .)

rm -rf "$here/gpuhub_lab/labextension"
cp -r "$work/gpuhub_lab/labextension" "$here/gpuhub_lab/labextension"
# what it was built from (tests/idle/test_lab_notice.py compares it with the checkout)
(cd "$here" && sha256sum package.json src/*.js) > "$here/gpuhub_lab/labextension/gpuhub-source.sha256"
echo "built $here/gpuhub_lab/labextension against JupyterLab $lab_version:"
(cd "$here/gpuhub_lab/labextension" && find . -type f | sort | xargs ls -l | awk '{print "  " $5 "  " $9}')
