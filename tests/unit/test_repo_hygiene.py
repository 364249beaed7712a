"""What the repository itself promises: no package-registry host named anywhere (the machine that builds
gpuhub decides where packages come from), npm locks without registry URLs, and the lint that `make lint`,
scripts/test.sh and .pre-commit-config.yaml run (one-way import layers, ruff) holding on the tree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # .venv/bin: lint-imports and ruff come from the `test` extra


def _host(*labels: str) -> str:
    """A host name from its labels, so that this file does not contain the names it looks for."""
    return ".".join(labels)


REGISTRY_HOSTS = [
    # Python packages
    _host("pypi", "org"),
    _host("pypi", "python", "org"),
    _host("files", "pythonhosted", "org"),
    # npm
    _host("registry", "npmjs", "org"),
    _host("registry", "npmjs", "com"),
    _host("registry", "yarnpkg", "com"),
    # Debian (and the derivatives' and Node's apt archives a Dockerfile might be tempted to add)
    _host("deb", "debian", "org"),
    _host("security", "debian", "org"),
    _host("ftp", "debian", "org"),
    _host("httpredir", "debian", "org"),
    _host("cdn-fastly", "deb", "debian", "org"),
    _host("snapshot", "debian", "org"),
    _host("archive", "debian", "org"),
    _host("archive", "ubuntu", "com"),
    _host("security", "ubuntu", "com"),
    _host("deb", "nodesource", "com"),
]
REGISTRY_RE = re.compile(
    r"(?<![\w.-])("
    + "|".join(map(re.escape, REGISTRY_HOSTS))
    + "|"
    + r"ftp\.[a-z]{2}\."
    + re.escape(_host("debian", "org"))
    + r")(?![\w-])",
    re.IGNORECASE,
)


def repo_files() -> list[Path]:
    """Tracked files plus new ones not ignored yet (what the next commit can hold), that exist on disk."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    paths = [ROOT / p for p in out.decode().split("\0") if p]
    return [p for p in paths if p.is_file() and not p.is_symlink()]


def registry_hosts_in(text: str) -> list[tuple[int, str]]:
    return [(n, m.group(1)) for n, line in enumerate(text.splitlines(), 1) for m in REGISTRY_RE.finditer(line)]


def test_the_host_patterns_find_registry_hosts_in_urls_and_text():
    npm = _host("registry", "npmjs", "org")
    text = (
        f"resolved https://{npm}/a/-/a-1.0.tgz\n"
        f"deb http://{_host('ftp', 'kr', 'debian', 'org')}/debian bookworm main\n"
        f"see {_host('files', 'pythonhosted', 'org')}, and {_host('pypi', 'org').upper()}\n"
        f"not: my{npm}.example, {_host('deb', 'debian', 'org')}-mirror.example, {_host('www', 'debian', 'org')}\n"
    )
    found = registry_hosts_in(text)
    assert [n for n, _ in found] == [1, 2, 3, 3]
    assert found[0][1] == npm


def test_no_package_registry_host_is_named_in_the_repository():
    files = repo_files()
    assert len(files) > 100 and ROOT / "README.md" in files and ROOT / "images/hub/package-lock.json" in files
    hits = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        hits += [
            f"{path.relative_to(ROOT)}:{n}: {host}" for n, host in registry_hosts_in(data.decode("utf-8", "replace"))
        ]
    assert not hits, (
        "package-registry hosts named in the repository (the building machine's configuration chooses the "
        "mirror: scripts/base-image.sh reads apt's, npm locks omit `resolved` via .npmrc):\n  " + "\n  ".join(hits)
    )


def test_npm_locks_hold_versions_and_integrity_hashes_but_no_registry_urls():
    locks = [p for p in repo_files() if p.name == "package-lock.json"]
    assert {p.parent.relative_to(ROOT).as_posix() for p in locks} >= {"images/hub", "tests/oidc_provider"}
    for lock in locks:
        where = lock.relative_to(ROOT)
        npmrc = lock.parent / ".npmrc"
        assert npmrc.is_file() and re.search(
            r"(?m)^omit-lockfile-registry-resolved\s*=\s*true\s*$", npmrc.read_text()
        ), f"{where}: no .npmrc beside it omitting `resolved`"
        packages = json.loads(lock.read_text())["packages"]
        for path, meta in packages.items():
            if not path or meta.get("link"):
                continue
            assert meta.get("version") and meta.get("integrity", "").startswith("sha512-"), f"{where}: {path}"
            assert "resolved" not in meta, f"{where}: {path} names a registry URL ({meta['resolved']})"


def _run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_layers_hold():
    proc = _run([str(BIN / "lint-imports"), "--no-logo"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", proc.stdout), proc.stdout


def test_an_upward_import_breaks_the_layer_contract(tmp_path):
    """The contract really is checked: the core importing the CLI fails lint-imports, naming both."""
    for pkg in ("gpuhub", "quota", "exporters"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "gpuhub/core/_upward.py").write_text("import gpuhub.cli\n")
    proc = subprocess.run(
        [str(BIN / "lint-imports"), "--no-logo", "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "layers point one way" in proc.stdout and "BROKEN" in proc.stdout
    assert "gpuhub.core._upward -> gpuhub.cli" in proc.stdout, proc.stdout


def test_ruff_lint_and_format_are_clean():
    check = _run([str(BIN / "ruff"), "check", "--output-format", "concise", "."])
    assert check.returncode == 0, f"`ruff check` findings (`make fmt` fixes the safe ones):\n{check.stdout}"
    fmt = _run([str(BIN / "ruff"), "format", "--check", "."])
    assert fmt.returncode == 0, f"files `make fmt` would reformat:\n{fmt.stdout}"


def test_pre_commit_runs_the_checks_of_make_lint_with_the_pinned_tools():
    hooks = {
        h["id"]: h
        for repo in yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"]
        for h in repo["hooks"]
        if repo["repo"] == "local"
    }
    assert {h["entry"].split()[0] for h in hooks.values()} == {".venv/bin/ruff", ".venv/bin/lint-imports"}
    assert hooks["ruff"]["entry"].split()[1] == "check" and hooks["ruff-format"]["entry"].split()[1] == "format"
    assert all(h["language"] == "system" for h in hooks.values())  # no hook environment fetched from the network
    make = _run(["make", "-n", "--no-print-directory", "lint"]).stdout
    for cmd in (".venv/bin/lint-imports", ".venv/bin/ruff check .", ".venv/bin/ruff format --check ."):
        assert cmd in make, f"`make lint` no longer runs {cmd}:\n{make}"
