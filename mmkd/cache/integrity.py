"""Trust, but verify on read: training never uses shard data whose checksums were not checked.

Before the first step every process hashes its share of the shards against the manifest's sha256
of every file (which share: below), after checking that the shard holds
exactly the files the manifest lists (a file without a checksum is refused), and remembers each
verified shard in a small marker, `verified/<shard>.json`: the digests it checked and, per file,
what identifies these bytes without reading them again. On a local disk that is (device, inode,
size, mtime, ctime): any write to a file sets its ctime to the present, and no user can set a
ctime back (`touch -r` restores the mtime only, and itself sets the ctime), so a changed file is
re-hashed. On an object store it is the store's content tag (ETag, MD5 or version); a store that
gives none is re-hashed every run. The markers live beside the cache, or in the run folder when
the cache cannot be written (a read-only copy, an object store without write access).

Every distinct copy of a cache is hashed in full: the processes that read the same copy (the same
file on the same machine, or the same URL) share its shards (shard k goes to the i-th of n such
processes when k mod n = i). A cache copied to each machine's local disk is therefore hashed once per
machine, and a shared folder once per machine that mounts it (which machines share a mount cannot be
told from a path; hashing it again is the safe side). So a paper-scale cache (~400 GB) is read once
per copy, in parallel, not once per epoch or per process. A mismatch stops training naming the cache, shard and file.
"""

from __future__ import annotations

import json
import os
import socket
import time

import fsspec
from fsspec.implementations.local import LocalFileSystem
from tqdm.auto import tqdm

from mmkd.atomic import fs_write_text
from mmkd.cache.format import member_path, sha256_file
from mmkd.cache.reader import shard_path
from mmkd.console import say
from mmkd.errors import CacheError

MARKERS = "verified"
_TAGS = ("ETag", "etag", "md5Hash", "md5", "VersionId", "version_id", "generation")


def _identity(fs, path: str) -> list | None:
    """What identifies the bytes of `path` without reading them, or None when nothing does."""
    if isinstance(fs, LocalFileSystem):
        st = os.stat(path)
        return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    info = fs.info(path)
    tag = next((str(info[k]) for k in _TAGS if info.get(k)), None)
    return [int(info.get("size") or 0), tag] if tag else None


def shard_members(fs, base: str) -> set[str]:
    return {p[len(base) + 1:] for p in fs.find(base)} - {"shard.json"}


class ShardVerifier:
    """Checks shards of one cache; `markers` is a local folder or URL for the remembered results."""

    def __init__(self, cache, markers: str | None = None):
        self.cache = cache
        self.markers = markers or f"{cache.url}/{MARKERS}"
        self.mfs, self.mroot = fsspec.core.url_to_fs(self.markers)

    def _marker(self, name: str) -> str:
        return f"{self.mroot}/{name}.json"

    def _base(self, record) -> str:
        return shard_path(self.cache.fs, self.cache.root, record.name, self.cache.url)

    def _state(self, base: str, record) -> dict | None:
        files = {}
        for name in sorted({*record.sha256, "shard.json"}):
            ident = _identity(self.cache.fs, member_path(self.cache.fs, base, name, base))
            if ident is None:
                return None
            files[name] = ident
        return {"sha256": record.sha256, "files": files}

    def is_verified(self, k: int) -> bool:
        record = self.cache.manifest.shards[k]
        try:
            with self.mfs.open(self._marker(record.name), "r") as f:
                saved = json.load(f)
            state = self._state(self._base(record), record)
            return state is not None and saved == state
        except (FileNotFoundError, json.JSONDecodeError, CacheError, OSError, ValueError):
            return False

    def verify(self, k: int) -> int:
        """Hash every file of shard k against the manifest; remember it. Returns the bytes read."""
        record = self.cache.manifest.shards[k]
        where = f"{self.cache.url} shard {record.name}"
        base = self._base(record)
        unlisted = sorted(shard_members(self.cache.fs, base) - set(record.sha256))
        if unlisted:
            raise CacheError(f"{where}: file {unlisted[0]} has no checksum in the manifest (the manifest was edited "
                             "or a file was added); rebuild the cache")
        state = self._state(base, record)
        # shard.json repeats the manifest's record (`--resume` and `--overwrite` read it): it must agree.
        try:
            with self.cache.fs.open(member_path(self.cache.fs, base, "shard.json", where), "r") as f:
                own = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            own = None
        if own != self.cache.manifest.raw["shards"][k]:
            raise CacheError(f"{where}: file shard.json is damaged or differs from the manifest's record of the shard "
                             f"(corrupt); `mmkd cache verify {self.cache.url}` lists every problem; rebuild the cache "
                             "(or restore it from a good copy)")
        nbytes = 0
        for name, digest in sorted(record.sha256.items()):
            path = member_path(self.cache.fs, base, name, where)
            if sha256_file(self.cache.fs, path) != digest:
                raise CacheError(f"{where}: file {name} does not match its checksum in the manifest (corrupt); "
                                 f"`mmkd cache verify {self.cache.url}` lists every problem; rebuild the cache "
                                 "(or restore it from a good copy)")
            nbytes += int(self.cache.fs.size(path))
        if state is not None and state == self._state(base, record):   # unchanged while it was hashed
            self.mfs.makedirs(self.mroot, exist_ok=True)
            fs_write_text(self.mfs, self._marker(record.name), json.dumps(state))
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


def copy_key(cache) -> list:
    """What tells copies of a cache apart: (machine, device, inode) of a local manifest, or of the
    node-local folder shards are fetched into; an URL's text."""
    if cache.fetcher is not None:
        st = os.stat(cache.fetcher.base)
        return ["fetch", socket.gethostname(), st.st_dev, st.st_ino]
    if isinstance(cache.fs, LocalFileSystem):
        st = os.stat(f"{cache.root}/manifest.json")
        return ["local", socket.gethostname(), st.st_dev, st.st_ino]
    return ["url", cache.url]


def my_share(keys: list, rank: int) -> tuple[int, int]:
    """(i, n): this process is the i-th of the n processes whose copy is `keys[rank]`."""
    readers = [r for r, key in enumerate(keys) if key == keys[rank]]
    return readers.index(rank), len(readers)


def verify_before_training(caches, rank: int, gather, any_process, run_markers, progress: bool) -> None:
    """Every shard's checksums, checked once per copy of each cache before any step: the processes
    reading one copy share its shards that no earlier run verified. `gather(value)` is every
    process's value in rank order; `any_process(flag)` is True when the flag is True on any process;
    `run_markers(name)` is where a read-only cache's markers go."""
    todo, fetches = [], []
    for cache in caches:
        if cache.fetcher is not None:
            # Fetched shards are hashed as they stream in, once per node: fetch this process's share of
            # the node's missing ones now (when the limit holds them all), so a bad object stops the run here.
            i, n = my_share(gather(copy_key(cache)), rank)
            f = cache.fetcher
            if not f.limit or sum(f.shard_bytes(k) for k in range(len(cache.manifest.shards))) <= f.limit:
                fetches += [(f, k) for k in range(len(cache.manifest.shards)) if k % n == i and not f.intact(k)]
            continue
        here = writable(cache.fs, cache.root)
        verifier = ShardVerifier(cache, None if here else run_markers(cache.manifest.corpus_name))
        i, n = my_share(gather(copy_key(cache)), rank)
        todo += [(verifier, k) for k in range(len(cache.manifest.shards))
                 if k % n == i and not verifier.is_verified(k)]
    error, started, nbytes = None, time.perf_counter(), 0
    with tqdm(total=len(todo) + len(fetches), desc="verify cache" if todo else "fetch cache", unit=" shard",
              disable=not (progress and (todo or fetches))) as bar:
        try:
            for verifier, k in todo:
                nbytes += verifier.verify(k)
                bar.update(1)
            for fetcher, k in fetches:
                fetcher.local_root(k)
                nbytes += fetcher.shard_bytes(k)
                bar.update(1)
        except CacheError as e:
            error = str(e)
    if any_process(error is not None):
        raise CacheError(error or "another process found a corrupt cache shard (its message names it); "
                                  "training did not start")
    if progress and fetches:
        say(f"fetched {len(fetches)} cache shards ({nbytes / 1e6:.1f} MB, checked against the manifest) in "
            f"{time.perf_counter() - started:.1f}s into {fetches[0][0].folder}")
    elif progress and todo:
        say(f"verified {len(todo)} cache shards ({nbytes / 1e6:.1f} MB) in {time.perf_counter() - started:.1f}s "
            "(remembered: later runs re-check only changed files; verify_cache=false skips this)")
