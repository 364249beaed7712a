"""gpuhub's curated Docker images: lock files, the offline build, and the catalog check.

Each image is a folder under ``images/`` with a ``Dockerfile``, a top-level
``requirements.in`` and a generated ``requirements.lock`` (``name==version`` with a
``--hash=sha256:`` for every wheel). The build never lets pip inside ``docker build`` reach an
index: ``scripts/wheelhouse.sh NAME`` downloads the locked wheels on the host (hash-checked) into
``.run/wheels/NAME/``, and :func:`build` assembles a build context in ``.run/build/NAME/`` from
the image folder plus those wheels, then runs the legacy ``docker build --network host`` (apt works
through the host network; the Dockerfiles are multi-stage so the wheels never reach the final
image).

The command line is ``gpuhub images build|list|lock`` (:mod:`gpuhub.cli`); ``python -m
gpuhub.host.images ...`` is the same command, handed to that one parser.

This module imports only the standard library at import time, so ``scripts/`` and tests can use
it without the hub's dependencies; ``check_catalog`` receives its Docker client.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

Log = Callable[[str], None]

IMAGE_PREFIX = "gpuhub/"
#: the checkout's Python packages that go into the gpuhub wheel (pyproject's packages.find)
GPUHUB_PACKAGES = ("gpuhub", "quota", "exporters")
SOURCE_LABEL = "gpuhub.source-sha256"  # see source_sha256
BUILD_HINT = "make images"

# The one target the locks are resolved for: the images' Debian bookworm python3 (3.11) on x86_64.
PIP_TARGET = (
    "--only-binary=:all:",
    "--python-version", "3.11",
    "--implementation", "cp",
    "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_28_x86_64",
)  # fmt: skip


@dataclass(frozen=True)
class ImageDef:
    """How to build one image. What the image *is* (title, description, display name, GPU) lives
    in its Dockerfile's labels, so a plain ``docker build`` of the folder carries them too."""

    name: str
    #: local images this one is built FROM (built first when building several)
    needs: tuple[str, ...] = ()
    #: image whose lock this image's lock extends: the lock lists only the added packages, resolved
    #: with the base's requirements and constrained to the base's locked versions
    lock_base: str | None = None
    #: put a wheel of this checkout's gpuhub package into the context (``local-wheels/``)
    gpuhub_wheel: bool = False
    #: prefill an npm cache from ``images/NAME/package-lock.json`` into the context (``npm-cache/``)
    npm: bool = False
    #: packages left out of the lock although the resolver pulls them in (optional extras that
    #: cost start time); ``pip check`` in the Dockerfile proves nothing needs them
    exclude: dict[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{IMAGE_PREFIX}{self.name}:latest"


#: jsonschema's optional "iri" format checker (extra format-nongpl, via jupyter-events and
#: nbformat) compiles ~35 Lark Earley parsers when jsonschema is imported: ~0.9 CPU-s of every
#: server start here. No Jupyter schema uses the iri formats (jupyter_server#1559,
#: python-jsonschema/jsonschema#1428); without the package jsonschema skips that checker.
START_COST_EXCLUDES = {
    "rfc3987-syntax": "0.9 CPU-s at import, only for jsonschema's unused iri format checks",
    "lark": "only rfc3987-syntax needs it",
}

IMAGES: dict[str, ImageDef] = {
    d.name: d
    for d in (
        ImageDef("base-notebook", exclude=START_COST_EXCLUDES),
        ImageDef("stock-notebook"),
        ImageDef("pytorch", needs=("base-notebook",), lock_base="base-notebook", exclude=START_COST_EXCLUDES),
        ImageDef("hub", gpuhub_wheel=True, npm=True),
    )
}
#: build order: every image after the images it needs
BUILD_ORDER: tuple[str, ...] = tuple(IMAGES)

#: Offline stand-ins for the registry images docker-compose.yml names, where no registry can be reached:
#: images/NAME/ builds them from Debian's packages on the base image, tagged with exactly the name compose
#: uses (production pulls the real ones). No wheelhouse, no lock; built only when named
#: (`gpuhub images build postgres prometheus`).
#: ``node`` rides on the same path (no lock, built only when named) but is ours: the Docker-in-Docker Swarm node
#: of scripts/swarm.sh (`gpuhub images build node`).
STANDINS: dict[str, str] = {
    "postgres": "postgres:15-bookworm",
    "prometheus": "prom/prometheus:v2.54.1",
    "node": "gpuhub/node:latest",
}


class ImageBuildError(RuntimeError):
    """A build step failed; the message says which step and where its log is."""


# --------------------------------------------------------------------------------------------
# Paths and lock files


def repo_root() -> Path:
    """The checkout this module runs from (gpuhub/host/images.py -> the folder with images/)."""
    return Path(__file__).resolve().parents[2]


def run_dir(root: Path) -> Path:
    return Path(os.environ.get("GPUHUB_RUN") or root / ".run")


def image_dir(root: Path, name: str) -> Path:
    return root / "images" / name


def lock_path(root: Path, name: str) -> Path:
    return image_dir(root, name) / "requirements.lock"


def lock_sha256(root: Path, name: str) -> str:
    """sha256 of the committed lock file (the ``gpuhub.lock-sha256`` label)."""
    return hashlib.sha256(lock_path(root, name).read_bytes()).hexdigest()


@dataclass(frozen=True)
class LockEntry:
    name: str
    version: str
    hashes: tuple[str, ...]


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> list[LockEntry]:
    """Parse ``name==version \\ --hash=sha256:...`` lines (comments and continuations allowed)."""
    logical = re.sub(r"\\\n", " ", text)
    entries = []
    for line in logical.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)(.*)$", line)
        if not m:
            raise ValueError(f"not a pinned requirement in lock file: {line!r}")
        hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", m.group(4)))
        if not hashes:
            raise ValueError(f"no --hash=sha256: for {m.group(1)} in lock file")
        entries.append(LockEntry(canonical_name(m.group(1)), m.group(3), hashes))
    return entries


def wheel_name_version(filename: str) -> tuple[str, str]:
    """``Foo_Bar-1.2.3-py3-none-any.whl`` -> ("foo-bar", "1.2.3")."""
    parts = filename[: -len(".whl")].split("-")
    if len(parts) < 5:
        raise ValueError(f"not a wheel file name: {filename}")
    return canonical_name(parts[0]), parts[1]


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def render_lock(
    name: str, entries: Iterable[LockEntry], base: str | None = None, exclude: dict[str, str] | None = None
) -> str:
    head = [
        f"# images/{name}/requirements.lock — generated by `gpuhub images lock {name}`",
        "# from requirements.in; do not edit. Wheels only, for CPython 3.11 manylinux x86_64.",
    ]
    if base:
        head.append(f"# Lists only what this image adds to images/{base}/requirements.lock.")
    for pkg, why in (exclude or {}).items():
        head.append(f"# left out (gpuhub/host/images.py): {pkg} — {why}")
    body = []
    for e in sorted(entries, key=lambda e: e.name):
        lines = [f"{e.name}=={e.version}"] + [f"    --hash=sha256:{h}" for h in e.hashes]
        body.append(" \\\n".join(lines))
    return "\n".join(head + body) + "\n"


def _pip() -> list[str]:
    return [sys.executable, "-m", "pip"]


def lock(name: str, root: Path | None = None, log: Log = print) -> Path:
    """Resolve ``images/NAME/requirements.in`` with ``pip download`` (wheels for the images'
    Python) into a temporary folder and write ``requirements.lock`` from the files it got."""
    root = Path(root or repo_root())
    d = _image(name)
    req_in = image_dir(root, name) / "requirements.in"
    if not req_in.is_file():
        raise ImageBuildError(f"{req_in} is missing")
    base_entries: dict[str, LockEntry] = {}
    with tempfile.TemporaryDirectory(prefix=f"gpuhub-lock-{name}-") as tmp:
        cmd = [*_pip(), "download", "--disable-pip-version-check", *PIP_TARGET, "-d", tmp, "-r", str(req_in)]
        if d.lock_base:
            base_lock = lock_path(root, d.lock_base)
            if not base_lock.is_file():
                raise ImageBuildError(f"lock {d.lock_base} first: {base_lock} is missing")
            base_entries = {e.name: e for e in parse_lock(base_lock.read_text())}
            constraints = Path(tmp, "constraints.txt")
            constraints.write_text("".join(f"{e.name}=={e.version}\n" for e in base_entries.values()))
            cmd += ["-c", str(constraints)]
        log(f"==> resolving {req_in.relative_to(root)} with pip download")
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageBuildError(f"pip download failed for {name}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        entries = []
        for whl in sorted(Path(tmp).glob("*.whl")):
            pkg, version = wheel_name_version(whl.name)
            if pkg in d.exclude:
                continue
            base = base_entries.get(pkg)
            if base is not None:
                if base.version != version:
                    raise ImageBuildError(
                        f"{pkg} resolved to {version} but {d.lock_base}'s lock has {base.version}; "
                        f"regenerate both locks"
                    )
                continue
            entries.append(LockEntry(pkg, version, (sha256_file(whl),)))
        others = [p.name for p in Path(tmp).iterdir() if p.suffix != ".whl" and p.name != "constraints.txt"]
        if others:
            raise ImageBuildError(f"pip download fetched non-wheel files: {others}")
    out = lock_path(root, name)
    out.write_text(render_lock(name, entries, d.lock_base, d.exclude))
    log(f"    wrote {out.relative_to(root)}: {len(entries)} wheels ({time.monotonic() - t0:.0f} s)")
    if d.npm:
        log(f"==> resolving images/{name}/package.json with npm (package-lock.json)")
        # No `resolved` URLs (also set in images/NAME/.npmrc): the lock names no registry host; the build
        # finds each tarball through the registry the host's npm uses (see _npm_cache).
        proc = subprocess.run(
            [
                "npm",
                "install",
                "--package-lock-only",
                "--no-audit",
                "--no-fund",
                "--omit-lockfile-registry-resolved=true",
            ],
            cwd=image_dir(root, name),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ImageBuildError(f"npm install --package-lock-only failed for {name}:\n{proc.stderr[-3000:]}")
    return out


# --------------------------------------------------------------------------------------------
# Build


def _image(name: str) -> ImageDef:
    try:
        return IMAGES[name]
    except KeyError:
        raise ImageBuildError(f"unknown image {name!r}; gpuhub's images are: {', '.join(IMAGES)}") from None


def build_order(names: Iterable[str]) -> list[str]:
    """The requested images (all when empty), deduplicated, in BUILD_ORDER."""
    wanted = set(names) or set(IMAGES)
    for n in list(wanted):
        _image(n)
    return [n for n in BUILD_ORDER if n in wanted]


def _run_logged(
    cmd: list[str],
    logfile: Path,
    log: Log,
    *,
    show: Callable[[str], bool] | None = None,
    cwd: Path | None = None,
    env: dict | None = None,
) -> None:
    """Run cmd with output to logfile; echo the lines ``show`` selects; on failure raise with
    the log's tail."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if show is not None and show(line):
                log("    " + line.rstrip())
        rc = proc.wait()
    if rc != 0:
        tail = "".join(logfile.read_text().splitlines(keepends=True)[-25:])
        raise ImageBuildError(f"`{' '.join(cmd[:3])} ...` failed (exit {rc}); log: {logfile}\n{tail}")


def _inputs(root: Path, name: str) -> list[Path]:
    """The files an image is built from: its folder, and for the hub the packages and pyproject.toml."""
    files = [p for p in image_dir(root, name).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    if IMAGES[name].gpuhub_wheel:
        files += [root / "pyproject.toml"] + [
            p
            for pkg in GPUHUB_PACKAGES
            for p in (root / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        ]
    return sorted(files)


def _source_epoch(root: Path, name: str) -> int:
    """$SOURCE_DATE_EPOCH, else the newest modification time of the image's inputs (whole seconds).
    Stable for unchanged inputs, so a rebuild hits Docker's cache and images built FROM this one
    keep theirs."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return int(float(epoch))
    return int(max(p.stat().st_mtime for p in _inputs(root, name)))


def source_sha256(root: Path, name: str) -> str:
    """sha256 over the image's inputs (paths and contents) and those of the local images it is built FROM.

    Kept as the label :data:`SOURCE_LABEL`; ``gpuhub images build --missing`` rebuilds an image whose label
    differs, so an image never runs code older than the checkout (mtimes would differ in every fresh clone).
    """
    h = hashlib.sha256()
    for base in IMAGES[name].needs:
        h.update(f"needs {base} {source_sha256(root, base)}\n".encode())
    for p in _inputs(root, name):
        h.update(f"{p.relative_to(root)}\n".encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def built_source(name: str) -> str | None:
    """The :data:`SOURCE_LABEL` of the built image, "" when it has none, None when it is not built."""
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{SOURCE_LABEL}"}}}}', IMAGES[name].tag],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return None
    value = out.stdout.strip()
    return "" if value == "<no value>" else value


def is_current(root: Path, name: str) -> bool:
    """Built, and from exactly the checkout's inputs."""
    return built_source(name) == source_sha256(root, name)


def _source_date(root: Path, name: str) -> str:
    """``org.opencontainers.image.created``, from :func:`_source_epoch`."""
    return datetime.fromtimestamp(_source_epoch(root, name), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _project(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]


def build_args(root: Path, name: str) -> dict[str, str]:
    """Build args the Dockerfiles turn into labels (the static ones are in the Dockerfile)."""
    project = _project(root)
    urls = {k.lower(): v for k, v in project.get("urls", {}).items()}
    source = os.environ.get("GPUHUB_SOURCE_URL") or urls.get("source") or urls.get("repository") or f"file://{root}"
    return {
        "GPUHUB_VERSION": project["version"],
        "GPUHUB_SOURCE": source,
        "GPUHUB_CREATED": _source_date(root, name),
        "LOCK_SHA256": lock_sha256(root, name),
    }


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare_context(root: Path, name: str, log: Log = print) -> Path:
    """``.run/build/NAME/``: the image folder + ``wheels/`` (hard links into the wheelhouse)
    + ``local-wheels/`` (gpuhub) + ``npm-cache/`` where the image wants them."""
    d = _image(name)
    rd = run_dir(root)
    ctx = rd / "build" / name
    if ctx.exists():
        shutil.rmtree(ctx)
    shutil.copytree(image_dir(root, name), ctx)
    (ctx / "wheels").mkdir()
    wheelhouse = rd / "wheels" / name
    wheels = sorted(wheelhouse.glob("*.whl"))
    if len(wheels) != len(parse_lock(lock_path(root, name).read_text())):
        raise ImageBuildError(f"wheelhouse {wheelhouse} does not match the lock; run scripts/wheelhouse.sh {name}")
    for whl in wheels:
        _link_or_copy(whl, ctx / "wheels" / whl.name)
    if d.gpuhub_wheel:
        out = ctx / "local-wheels"
        out.mkdir()
        log("==> building the gpuhub wheel from this checkout (pip wheel --no-deps)")
        # SOURCE_DATE_EPOCH makes the wheel's bytes depend only on its sources, so an unchanged
        # checkout hits Docker's cache at the COPY of local-wheels/.
        epoch = str(_source_epoch(root, name))
        # Build from a copy of the sources: an in-tree build would leave build/ in the checkout.
        src = rd / "build" / f"{name}-gpuhub-src"
        if src.exists():
            shutil.rmtree(src)
        src.mkdir(parents=True)
        for f in ("pyproject.toml", "README.md"):  # pyproject names the README
            shutil.copy2(root / f, src / f)
        for pkg in GPUHUB_PACKAGES:
            if (root / pkg).is_dir():
                shutil.copytree(root / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _run_logged(
            [*_pip(), "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(out), str(src)],
            rd / "build" / f"{name}-gpuhub-wheel.log",
            log,
            env={**os.environ, "SOURCE_DATE_EPOCH": epoch},
        )
        note = ", ".join(p.name for p in out.glob("*.whl"))
        log(f"    {note}")
    if d.npm:
        _npm_cache(root, name, ctx / "npm-cache", log)
    return ctx


def _npm_cache(root: Path, name: str, cache: Path, log: Log) -> None:
    """Fill an npm cache with exactly what images/NAME/package-lock.json pins (integrity-checked
    by npm), so `npm ci --offline` works inside the build, which cannot reach the npm registry.

    The lock has no `resolved` URLs, so npm looks each package up in the registry's package
    documents, which the cache holds under the registry's URL: ``npm-cache/npmrc`` names the
    registry the host's npm used, and the build's npm (``--userconfig``) reads the same keys."""
    src = image_dir(root, name)
    shared = run_dir(root) / "npm" / name
    stamp = shared / "lock.sha256"
    try:
        registry = subprocess.run(
            ["npm", "config", "get", "registry"], cwd=src, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise ImageBuildError(
            f"`npm config get registry` failed ({e}); the {name} image needs npm on this host "
            "to fill its npm cache: run `make setup`"
        ) from None
    digest = f"{sha256_file(src / 'package-lock.json')} {registry}"
    if not (stamp.is_file() and stamp.read_text() == digest):
        log("==> filling the npm cache from package-lock.json (npm ci on the host)")
        if shared.exists():
            shutil.rmtree(shared)
        work = shared / "work"
        work.mkdir(parents=True)
        for f in ("package.json", "package-lock.json"):
            shutil.copy2(src / f, work / f)
        _run_logged(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--cache", str(shared / "cache")],
            run_dir(root) / "build" / f"{name}-npm.log",
            log,
            cwd=work,
        )
        stamp.write_text(digest)
    else:
        log("==> npm cache is up to date")
    shutil.copytree(shared / "cache", cache, copy_function=lambda s, d: _link_or_copy(Path(s), Path(d)))
    # Beside the cache, not in the install folder: the final image gets node_modules, never this file.
    (cache / "npmrc").write_text(f"registry={registry}\n")


def _docker_build_line(line: str) -> bool:
    return line.startswith(("Step ", "Successfully", "E: ")) or " ERROR" in line


def build(names: list[str], root: Path, log: Log = print, *, no_cache: bool = False) -> None:
    """Build gpuhub's images (all when ``names`` is empty), in dependency order: make sure the
    engine and the base image exist, fill each wheelhouse, then ``docker build``
    (``no_cache``: ``docker build --no-cache``, e.g. to pick up Debian security updates)."""
    root = Path(root)
    order = build_order(names)
    # images built FROM a local image that is neither requested nor built yet: build that first
    order = build_order(order + [n for o in order for n in IMAGES[o].needs if n not in order and not docker_has(n)])
    scripts = root / "scripts"
    rd = run_dir(root)
    t_all = time.monotonic()
    log(f"==> building {', '.join(IMAGES[n].tag for n in order)}")
    _run_logged([str(scripts / "base-image.sh")], rd / "build" / "base-image.log", log, show=lambda _l: True)
    for name in order:
        d = IMAGES[name]
        t0 = time.monotonic()
        log(f"==> [{name}] wheelhouse")
        _run_logged(
            [str(scripts / "wheelhouse.sh"), name], rd / "build" / f"{name}-wheelhouse.log", log, show=lambda _l: True
        )
        log(f"==> [{name}] build context")
        ctx = prepare_context(root, name, log)
        cmd = ["docker", "build", "--network", "host", "-t", d.tag] + (["--no-cache"] if no_cache else [])
        cmd += ["--label", f"{SOURCE_LABEL}={source_sha256(root, name)}"]
        for k, v in build_args(root, name).items():
            cmd += ["--build-arg", f"{k}={v}"]
        cmd.append(str(ctx))
        log(f"==> [{name}] docker build -t {d.tag} (log: {rd / 'build' / f'{name}.log'})")
        _run_logged(cmd, rd / "build" / f"{name}.log", log, show=_docker_build_line)
        size = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", d.tag], capture_output=True, text=True
        ).stdout.strip()
        log(f"    {d.tag}: {int(size or 0) / 1e6:.0f} MB, {time.monotonic() - t0:.0f} s")
    log(f"==> built {len(order)} image(s) in {time.monotonic() - t_all:.0f} s")


def docker_has(name: str) -> bool:
    tag = STANDINS[name] if name in STANDINS else IMAGES[name].tag
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def build_standins(names: list[str], root: Path, log: Log = print, *, no_cache: bool = False) -> None:
    """Build the named :data:`STANDINS` from images/NAME/ on the base image, tagged as compose names them."""
    root = Path(root)
    rd = run_dir(root)
    _run_logged([str(root / "scripts" / "base-image.sh")], rd / "build" / "base-image.log", log, show=lambda _l: True)
    for name in names:
        tag, t0 = STANDINS[name], time.monotonic()
        cmd = ["docker", "build", "--network", "host", "-t", tag] + (["--no-cache"] if no_cache else [])
        log(f"==> [{name}] docker build -t {tag} (offline stand-in; log: {rd / 'build' / f'{name}.log'})")
        _run_logged([*cmd, str(image_dir(root, name))], rd / "build" / f"{name}.log", log, show=_docker_build_line)
        log(f"    {tag}: {time.monotonic() - t0:.0f} s")


# --------------------------------------------------------------------------------------------
# Catalog check


def image_name_of(image_ref: str) -> str | None:
    """Our image's NAME when ``image_ref`` is ``gpuhub/NAME[:tag]``, else None."""
    repo = image_ref.rpartition(":")[0] if ":" in image_ref.split("/")[-1] else image_ref
    name = repo[len(IMAGE_PREFIX) :] if repo.startswith(IMAGE_PREFIX) else None
    return name if name in IMAGES else None


def build_command_for(image_ref: str) -> str | None:
    """``gpuhub images build NAME`` when ``image_ref`` names one of our images, else None."""
    name = image_name_of(image_ref)
    return f"gpuhub images build {name}" if name else None


def check_catalog(site, docker_client) -> list[str]:
    """Errors for site catalog images the local Docker engine does not have (empty when all are
    there). Each message names the catalog key, the image and how to get it."""
    import docker.errors  # the hub's dependency; only needed here

    errors: list[str] = []
    for key, spec in site.images.items():
        try:
            docker_client.images.get(spec.image)
        except docker.errors.ImageNotFound:
            cmd = build_command_for(spec.image)
            how = (
                f"build it with `{BUILD_HINT}` (all images) or `{cmd}`"
                if cmd
                else "it is not one of gpuhub's images (gpuhub/" + "|".join(IMAGES) + "); "
                f"`docker pull {spec.image}` or `docker load` it on this host"
            )
            errors.append(f"images.{key}: image {spec.image!r} is not in the local Docker engine; {how}")
        except docker.errors.DockerException as e:
            errors.append(f"images.{key}: cannot ask Docker about image {spec.image!r}: {e}")
            break
    return errors


# --------------------------------------------------------------------------------------------
# Command line


if __name__ == "__main__":
    # `python -m gpuhub.host.images ARGS` is `gpuhub images ARGS`: the one parser lives in gpuhub.cli, which this
    # lower layer may not import, so the alias re-executes as `python -m gpuhub images` (same process id).
    os.execv(sys.executable, [sys.executable, "-m", "gpuhub", "images", *sys.argv[1:]])
