"""Static checks of images/: lock files, requirements and Dockerfiles agree (no Docker needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from gpuhub.host import images

ROOT = Path(__file__).resolve().parents[2]
NAMES = list(images.IMAGES)


def lock(name):
    return {e.name: e for e in images.parse_lock(images.lock_path(ROOT, name).read_text())}


@pytest.mark.parametrize("name", NAMES)
def test_image_folder_is_complete(name):
    d = images.image_dir(ROOT, name)
    for f in ("Dockerfile", "requirements.in", "requirements.lock"):
        assert (d / f).is_file(), f"images/{name}/{f} is missing"


@pytest.mark.parametrize("name", NAMES)
def test_lock_pins_every_wheel_with_a_sha256(name):
    text = images.lock_path(ROOT, name).read_text()
    entries = images.parse_lock(text)
    assert entries
    for e in entries:
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", e.version), e
        assert e.hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in e.hashes), e
    assert len({e.name for e in entries}) == len(entries), "a package is locked twice"
    # the lock is what the generator writes, byte for byte (nobody edited it by hand)
    assert text == images.render_lock(name, entries, images.IMAGES[name].lock_base, images.IMAGES[name].exclude)


@pytest.mark.parametrize("name", NAMES)
def test_dockerfile_labels_and_base(name):
    text = (images.image_dir(ROOT, name) / "Dockerfile").read_text()
    for label in (
        "org.opencontainers.image.title",
        "org.opencontainers.image.description",
        "org.opencontainers.image.version",
        "org.opencontainers.image.source",
        "org.opencontainers.image.licenses",
        "org.opencontainers.image.created",
        "gpuhub.display-name",
        "gpuhub.gpu",
        "gpuhub.lock-sha256",
    ):
        assert f"{label}=" in text, f"images/{name}/Dockerfile lacks the {label} label"
    assert 'gpuhub.lock-sha256="${LOCK_SHA256}"' in text
    assert "RUN --mount" not in text, "the legacy builder has no RUN --mount"
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage: wheels must stay in a build stage"
    if images.IMAGES[name].needs:
        assert "ARG BASE=gpuhub/" in text
    else:
        assert "ARG DEBIAN=debian:bookworm-slim" in text


def test_base_and_stock_lock_the_same_versions():
    base, stock = lock("base-notebook"), lock("stock-notebook")
    assert set(stock) - set(base) == set(images.IMAGES["base-notebook"].exclude)
    for name, e in base.items():
        assert stock[name].version == e.version and stock[name].hashes == e.hashes, name


def test_base_notebook_pins():
    base = lock("base-notebook")
    assert base["jupyterhub"].version == "6.1.1"
    assert base["nbgrader"].version == "0.9.6"
    assert base["jupyterlab"].version.startswith("4.")
    for pkg in ("jupyterlab-language-pack-ko-kr", "numpy", "pandas", "matplotlib", "scikit-learn", "ipykernel"):
        assert pkg in base
    for pkg in images.IMAGES["base-notebook"].exclude:
        assert pkg not in base


def test_pytorch_lock_only_adds_to_base():
    base, torch = lock("base-notebook"), lock("pytorch")
    assert torch["torch"].version.startswith("2.13.0")
    assert not set(torch) & set(base), "pytorch's lock must not repeat base-notebook's packages"


def _req_names(lines):
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)", line)
            out[images.canonical_name(m.group(1))] = m.group(3).replace(" ", "")
    return out


def test_hub_requirements_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = _req_names(project["dependencies"] + project["optional-dependencies"]["nvml"])
    have = _req_names((ROOT / "images/hub/requirements.in").read_text().splitlines())
    assert have == want, "images/hub/requirements.in must list pyproject.toml's dependencies (+ nvml extra)"
    hub = lock("hub")
    assert hub["jupyterhub"].version == "6.1.1"
    assert hub["dockerspawner"].version == "14.0.0"
    assert hub["oauthenticator"].version == "17.4.0"


def test_hub_npm_lock_pins_configurable_http_proxy():
    pkg = json.loads((ROOT / "images/hub/package-lock.json").read_text())
    chp = pkg["packages"]["node_modules/configurable-http-proxy"]
    assert chp["version"] == "5.3.0"
    for path, meta in pkg["packages"].items():
        if path:
            assert meta.get("integrity", "").startswith("sha512-"), f"{path} has no integrity hash"
            # npm ci --offline finds it through the cached registry document (images/hub/.npmrc)
            assert "resolved" not in meta, f"{path} names a registry URL; regenerate with `gpuhub images lock hub`"


def test_parse_lock_rejects_unhashed_and_unpinned_lines():
    with pytest.raises(ValueError, match="no --hash"):
        images.parse_lock("foo==1.0\n")
    with pytest.raises(ValueError, match="not a pinned"):
        images.parse_lock("foo>=1.0 --hash=sha256:" + "0" * 64 + "\n")
    [e] = images.parse_lock("Foo_Bar==1.0 \\\n    --hash=sha256:" + "a" * 64 + "  # why\n")
    assert (e.name, e.version) == ("foo-bar", "1.0")


def test_build_order_puts_base_before_pytorch():
    assert images.build_order(["pytorch", "base-notebook"]) == ["base-notebook", "pytorch"]
    assert images.build_order([]) == list(images.BUILD_ORDER)
    with pytest.raises(images.ImageBuildError, match="unknown image"):
        images.build_order(["nope"])


def test_build_command_for_catalog_refs():
    assert images.build_command_for("gpuhub/base-notebook:latest") == "gpuhub images build base-notebook"
    assert images.build_command_for("gpuhub/pytorch") == "gpuhub images build pytorch"
    assert images.build_command_for("jupyter/scipy-notebook:latest") is None
    assert images.build_command_for("registry:5000/gpuhub/pytorch:1") is None


class _Images:
    def __init__(self, present):
        self.present = present

    def get(self, ref):
        import docker.errors

        if ref not in self.present:
            raise docker.errors.ImageNotFound(f"No such image: {ref}")
        return object()


class _Client:
    def __init__(self, present):
        self.images = _Images(present)


def test_check_catalog_names_missing_images_and_the_build_command():
    from gpuhub.core.site import ImageSpec

    class Site:
        images = {
            "python": ImageSpec("python", "gpuhub/base-notebook:latest", "Python"),
            "torch": ImageSpec("torch", "gpuhub/pytorch:latest", "PyTorch"),
            "other": ImageSpec("other", "example/other:1", "Other"),
        }

    assert images.check_catalog(Site, _Client({s.image for s in Site.images.values()})) == []
    errors = images.check_catalog(Site, _Client({"gpuhub/base-notebook:latest"}))
    assert len(errors) == 2
    assert errors[0].startswith("images.torch: image 'gpuhub/pytorch:latest' is not in the local Docker engine")
    assert "`make images`" in errors[0] and "`gpuhub images build pytorch`" in errors[0]
    assert errors[1].startswith("images.other:") and "docker pull example/other:1" in errors[1]


def test_source_hash_follows_content_not_mtimes_and_covers_the_base(tmp_path, monkeypatch):
    """`gpuhub images build --missing` rebuilds exactly when an image's inputs changed (a fresh clone's new
    mtimes do not count; an edited module of the hub image, or a changed base image, does)."""
    for name in ("base-notebook", "pytorch", "hub"):
        shutil.copytree(images.image_dir(ROOT, name), images.image_dir(tmp_path, name))
    for pkg in images.GPUHUB_PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    before = {n: images.source_sha256(tmp_path, n) for n in ("base-notebook", "pytorch", "hub")}
    assert before["hub"] == images.source_sha256(ROOT, "hub")  # a copy (a fresh clone) hashes the same
    for p in (tmp_path / "quota").rglob("*.py"):
        os.utime(p, (1, 1))
    assert images.source_sha256(tmp_path, "hub") == before["hub"]
    (tmp_path / "quota" / "policy.py").write_text((tmp_path / "quota" / "policy.py").read_text() + "\n# edited\n")
    assert images.source_sha256(tmp_path, "hub") != before["hub"]
    (tmp_path / "quota" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "quota" / "__pycache__" / "x.pyc").write_bytes(b"bytecode")
    after_edit = images.source_sha256(tmp_path, "hub")
    assert images.source_sha256(tmp_path, "hub") == after_edit  # bytecode never counts
    assert images.source_sha256(tmp_path, "base-notebook") == before["base-notebook"]
    dockerfile = images.image_dir(tmp_path, "base-notebook") / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\n# edited\n")
    assert images.source_sha256(tmp_path, "pytorch") != before["pytorch"]  # built FROM base-notebook
