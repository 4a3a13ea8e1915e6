"""Trust, but verify on read: training never uses shard data whose checksums were not checked.

Before the first step every process hashes its share of the shards (shard k goes to process
k mod world) against the manifest's sha256 of every file, and remembers each verified shard in
a small marker, `verified/<shard>.json`, holding the digests it checked and each file's size and
modification time. A later run (another ablation, a resume) re-hashes only shards whose files
changed since (a `stat` per file); the markers live beside the cache, or in the run folder when
the cache cannot be written (a read-only copy, an object store without write access).

So a paper-scale cache (~400 GB) is read once, in parallel, by all processes together, not once
per epoch or per process. A mismatch stops training naming the cache, shard and file.
"""

from __future__ import annotations

import json
import os

from mmkd.cache.format import member_path, sha256_file
from mmkd.errors import CacheError

MARKERS = "verified"


def _stat(fs, path: str) -> list:
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    return [int(info.get("size") or 0), str(mtime)]


def _marker_state(fs, base: str, record: dict) -> dict:
    return {"sha256": record["sha256"],
            "stat": {name: _stat(fs, member_path(fs, base, name, base)) for name in sorted(record["sha256"])}}


class ShardVerifier:
    """Checks shards of one cache; `markers` is a local folder or URL for the remembered results."""

    def __init__(self, cache, markers: str | None = None):
        import fsspec

        self.cache = cache
        self.markers = markers or f"{cache.url}/{MARKERS}"
        self.mfs, self.mroot = fsspec.core.url_to_fs(self.markers)

    def _marker(self, name: str) -> str:
        return f"{self.mroot}/{name}.json"

    def is_verified(self, k: int) -> bool:
        record = self.cache.manifest["shards"][k]
        path = self._marker(record["name"])
        try:
            with self.mfs.open(path, "r") as f:
                saved = json.load(f)
            return saved == _marker_state(self.cache.fs, self._base(record), record)
        except (FileNotFoundError, json.JSONDecodeError, CacheError, OSError):
            return False

    def _base(self, record: dict) -> str:
        return f"{self.cache.root}/shards/{record['name']}"

    def verify(self, k: int) -> int:
        """Hash every file of shard k against the manifest; remember it. Returns the bytes read."""
        record = self.cache.manifest["shards"][k]
        base, where = self._base(record), f"{self.cache.url} shard {record['name']}"
        nbytes = 0
        for name, digest in sorted(record["sha256"].items()):
            path = member_path(self.cache.fs, base, name, where)
            if sha256_file(self.cache.fs, path) != digest:
                raise CacheError(f"{where}: file {name} does not match its checksum in the manifest (corrupt); "
                                 f"`mmkd cache verify {self.cache.url}` lists every problem; rebuild the cache "
                                 "(or restore it from a good copy)")
            nbytes += int(self.cache.fs.size(path))
        state = _marker_state(self.cache.fs, base, record)
        self.mfs.makedirs(self.mroot, exist_ok=True)
        tmp = self._marker(record["name"]) + f".tmp{os.getpid()}"
        with self.mfs.open(tmp, "w") as f:
            json.dump(state, f)
        self.mfs.mv(tmp, self._marker(record["name"]))
        return nbytes


def writable(fs, root: str) -> bool:
    """Can markers be written beside the cache?"""
    probe = f"{root}/{MARKERS}/.probe-{os.getpid()}"
    try:
        fs.makedirs(f"{root}/{MARKERS}", exist_ok=True)
        with fs.open(probe, "w") as f:
            f.write("")
        fs.rm(probe)
        return True
    except (OSError, PermissionError, NotImplementedError):
        return False
