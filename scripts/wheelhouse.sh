#!/usr/bin/env bash
# Fill .run/wheels/IMAGE/ with exactly the wheels images/IMAGE/requirements.lock pins,
# hash-checked, for the images' Python (CPython 3.11, manylinux x86_64).
#
# pip inside `docker build` cannot reach an index here, so the host downloads (its pip is
# configured for this network, with find-links /opt/wheels for the local torch wheel) and the
# build installs with --no-index --require-hashes from the copy in the build context.
# Skips the download when every locked wheel is present with a matching hash; takes wheels
# another image's wheelhouse already has (hard links); removes files the lock no longer lists.
# Usage: scripts/wheelhouse.sh IMAGE
source "$(dirname "$0")/lib.sh"

IMAGE="${1:-}"
[ -n "$IMAGE" ] || die "usage: $0 IMAGE   (a folder under images/)"
LOCK="$GPUHUB_ROOT/images/$IMAGE/requirements.lock"
[ -f "$LOCK" ] || die "$LOCK is missing; generate it with: gpuhub images lock $IMAGE"
DEST="$GPUHUB_RUN/wheels/$IMAGE"
mkdir -p "$DEST"
PY="${GPUHUB_PYTHON:-$GPUHUB_ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

# reconcile: prints "ok" when the wheelhouse matches the lock, else the number of missing wheels.
reconcile() {
  "$PY" - "$LOCK" "$DEST" "$GPUHUB_RUN/wheels" <<'EOF'
import hashlib, os, re, sys
from pathlib import Path
lock, dest, pool = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
canon = lambda s: re.sub(r"[-_.]+", "-", s).lower()
want = {}  # (name, version) -> set of hashes
for line in re.sub(r"\\\n", " ", lock.read_text()).splitlines():
    m = re.match(r"^([A-Za-z0-9][\w.-]*)(\[[^\]]*\])?==(\S+)", line.strip())
    if m:
        want[(canon(m.group(1)), m.group(3))] = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
def key(p):
    parts = p.name[:-4].split("-")
    return canon(parts[0]), parts[1]
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
    return h.hexdigest()
have = set()
for p in sorted(dest.iterdir()):
    k = key(p) if p.suffix == ".whl" else None
    if k in want and sha(p) in want[k]:
        have.add(k)
    else:
        print(f"    removing {p.name} (not in the lock)", file=sys.stderr)
        p.unlink()
for k in set(want) - have:  # another image's wheelhouse may hold it already
    for p in pool.glob(f"*/*.whl"):
        if p.parent != dest and key(p) == k and sha(p) in want[k]:
            os.link(p, dest / p.name)
            have.add(k)
            break
missing = len(want) - len(have)
print("ok" if missing == 0 else missing)
EOF
}

step "wheelhouse for $IMAGE: $DEST"
state="$(reconcile)"
if [ "$state" = ok ]; then
  note "all $(ls "$DEST" | wc -l) locked wheels present (hashes checked); no download"
  exit 0
fi
note "$state wheel(s) missing; pip download (hash-checked against the lock)"
"$PY" -m pip download --disable-pip-version-check --no-deps --require-hashes \
  --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" -r "$LOCK" >"$GPUHUB_RUN/wheels/$IMAGE.log" 2>&1 \
  || { tail -20 "$GPUHUB_RUN/wheels/$IMAGE.log" >&2; die "pip download failed; see $GPUHUB_RUN/wheels/$IMAGE.log"; }
state="$(reconcile)"
[ "$state" = ok ] || die "$state locked wheel(s) still missing from $DEST after pip download"
note "$(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1)"
