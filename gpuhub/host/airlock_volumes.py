"""One file in a Docker volume, read or written through a helper container that is created and never started.

The airlock's volume adapter (:mod:`quota.airlock_store` maps its errors to the airlock's rules). ``docker cp``
semantics: for the archive calls the daemon mounts the volume into the created container (read-only to read), so
no process runs, the helper has no network and carries our labels (``gpuhub.managed``, ``gpuhub.airlock``).

Reading checks every path component with the archive stat call first: no component may be a symbolic link, the
last must be a regular file, and its size must be within the limit; then the tar stream must hold exactly that
regular file, copied into a new file (``O_EXCL``, mode 0600) with its sha256. Why not the volume's mountpoint on
the host: the hub need not run where ``/var/lib/docker`` is readable, and a link a user left in the volume would be
followed on the HOST (a root read of any host file); inside the helper a link resolves in the helper's own
filesystem, which holds no project data, and the per-component stat refuses it anyway. (A link swapped in between
the stat and the copy still resolves inside the helper, so the race can only return a file of the helper image.)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import posixpath
import secrets
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from docker.errors import NotFound

from gpuhub.core import labels as lb

AIRLOCK_LABEL = lb.PREFIX + "airlock"  # "1" on the helper containers
SRC, DST = "/src", "/dst"
# Go os.FileMode type bits (the archive stat's "mode"): dir, symlink, device, pipe, socket, char device, irregular
_TYPE_BITS = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)
_DIR, _LINK = 1 << 31, 1 << 27


class NotAFile(Exception):
    """The path does not name a regular file reachable without links; ``what`` says what it is instead."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class TooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__(f"{size} bytes > {limit}")
        self.size, self.limit = size, limit


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]):
        self.chunks, self.buf = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.buf:
            try:
                self.buf = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self.buf))
        b[:n], self.buf = self.buf[:n], self.buf[n:]
        return n


@dataclass(frozen=True)
class Copied:
    sha256: str
    size: int


class VolumeFiles:
    """Reads and writes one file in a Docker volume through a created-never-started helper container."""

    def __init__(self, client, image: str, labels: Mapping[str, str] | None = None):
        self.client, self.image = client, image
        self.labels = {lb.MANAGED: "1", AIRLOCK_LABEL: "1", **(labels or {})}

    def _helper(self, volume: str, bind: str, mode: str):
        try:
            self.client.volumes.get(volume)
        except NotFound:
            raise NotAFile("missing (the home volume does not exist yet: start the server once)") from None
        return self.client.containers.create(
            self.image,
            command=["true"],
            network_mode="none",
            labels=self.labels,
            user="65534",
            volumes={volume: {"bind": bind, "mode": mode}},
            name=f"gpuhub-airlock-{secrets.token_hex(6)}",
        )

    def _stat(self, container, path: str) -> dict | None:
        url = self.client.api._url("/containers/{0}/archive", container.id)
        res = self.client.api.head(url, params={"path": path})
        if res.status_code == 404:
            return None
        res.raise_for_status()
        return json.loads(base64.b64decode(res.headers["X-Docker-Container-Path-Stat"]))

    def _check_components(self, container, rel: str) -> dict:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            stat = self._stat(container, posixpath.join(SRC, *parts[:i]))
            sub = "/".join(parts[:i])
            if stat is None:
                raise NotAFile(f"missing ({sub!r} does not exist)")
            mode = int(stat["mode"])
            if mode & _LINK:
                raise NotAFile(f"reached through a link ({sub!r})")
            last = i == len(parts)
            if not last and not mode & _DIR:
                raise NotAFile(f"missing ({sub!r} is a file)")
            if last and mode & _TYPE_BITS:
                what = "a folder" if mode & _DIR else "not a regular file"
                raise NotAFile(what)
        return stat

    def read_into(self, volume: str, rel: str, dest: Path, limit: int) -> Copied:
        """Copy ``rel`` (a checked relative path) from ``volume`` into the new file ``dest``; raises
        :class:`NotAFile` or :class:`TooLarge` (``dest`` may then exist: the caller removes it)."""
        container = self._helper(volume, SRC, "ro")
        try:
            stat = self._check_components(container, rel)
            if int(stat["size"]) > limit:
                raise TooLarge(int(stat["size"]), limit)
            chunks, _ = container.get_archive(posixpath.join(SRC, rel))
            return self._untar_one(chunks, dest, limit)
        finally:
            container.remove(force=True)

    @staticmethod
    def _untar_one(chunks, dest: Path, limit: int) -> Copied:
        h, size = hashlib.sha256(), 0
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(iter(chunks)), 1 << 20), mode="r|") as tf:
            member = tf.next()
            if member is None or not member.isreg():
                raise NotAFile("not a regular file (it changed)")
            src = tf.extractfile(member)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                while block := src.read(1 << 20):
                    size += len(block)
                    if size > limit:
                        raise TooLarge(size, limit)
                    h.update(block)
                    out.write(block)
        return Copied(h.hexdigest(), size)

    def write(self, volume: str, folder: str, name: str, data_path: Path, uid: int) -> str:
        """Put ``data_path`` at ``folder/name`` in ``volume`` (folders created, all owned by ``uid``); an existing
        ``name`` is kept and the new file gets another (returned: the path written, relative to the volume)."""
        container = self._helper(volume, DST, "rw")
        try:
            final = posixpath.join(folder, name)
            if self._stat(container, posixpath.join(DST, final)) is not None:
                stem, dot, ext = name.rpartition(".")
                final = posixpath.join(folder, f"{stem}.{secrets.token_hex(3)}.{ext}" if dot else f"{name}.1")
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tf:
                parts = folder.split("/")
                for i in range(1, len(parts) + 1):
                    d = tarfile.TarInfo("/".join(parts[:i]))
                    d.type, d.mode, d.uid, d.gid, d.mtime = tarfile.DIRTYPE, 0o755, uid, uid, int(time.time())
                    tf.addfile(d)
                info = tf.gettarinfo(str(data_path), arcname=final)
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o644, uid, uid, "", ""
                with open(data_path, "rb") as f:
                    tf.addfile(info, f)
            container.put_archive(DST, buf.getvalue())
            return final
        finally:
            container.remove(force=True)
