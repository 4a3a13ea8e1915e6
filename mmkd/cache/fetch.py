"""A cache in object storage (or on any slow shared filesystem), read from a node-local copy of
each shard: `TeacherCache(url, local="/nvme/mmkd")`, `mmkd train --cache s3://b/c cache_local=/nvme/mmkd`.

Zarr on an object store fetches a whole chunk for any row of it (an uncompressed cache stores one
chunk per array: a shard touched is a full download), so random access straight from the store
would download each shard again and again. Instead, as streaming and litdata do, each shard is
fetched once per node into the local folder, checked there against the manifest's sha256 while it
streams, and only then published (renamed into place) and memory-mapped like a local cache.

Layout of the local folder (node-local disk; one folder may serve many caches and runs):

    <local>/<corpus>-<16 hex of the manifest>/manifest.json    the manifest the copy was made from
    <local>/<corpus>-<hex>/shards/NNNNN/                      a fetched shard, exactly the remote files
    <local>/<corpus>-<hex>/fetched/NNNNN.json                 written after the rename: the shard is
                                                               complete and verified; its mtime is the
                                                               last use (eviction is least recently used)
    <local>/<corpus>-<hex>/fetched/NNNNN.part                 a fetch in progress (counted in the limit)
    <local>/.lock, <local>/<corpus>-<hex>/locks/NNNNN          flock: one fetch of a shard per node

The processes of a node take a shard's lock before fetching it, so whichever comes first fetches it
and the others wait, then map the same files. A copy whose files changed after the fetch (another
program wrote them) is noticed by their (inode, size, mtime, ctime) and fetched again. With a size
limit (`cache_local_limit_gb`), fetching a shard first removes the least recently used shards of
any cache in the folder until the new one fits; a process that still maps a removed shard keeps
reading its (unlinked) files, and drops them the next time it looks the shard up.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from mmkd.atomic import fsync_folder, write_text
from mmkd.cache.format import dumps, member_path
from mmkd.errors import CacheError

_TOUCH_EVERY = 10.0          # seconds between two LRU touches of one shard by one process
_STREAM = 1 << 22            # bytes per read while streaming an object


@contextmanager
def _flock(path: Path):
    """A blocking exclusive flock on `path` (created); the local folder must be on a disk with flock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                raise CacheError(f"{path}: this filesystem has no flock ({errno.errorcode[e.errno]}); cache_local "
                                 "is meant for a node-local disk (e.g. /nvme or /tmp), which has it") from None
            raise
        yield
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _identity(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class ShardFetcher:
    """Node-local copies of one remote cache's shards. `local_root(k)` fetches shard k if needed and
    returns the folder that holds `shards/NNNNN/` (the reader opens it as a local cache)."""

    def __init__(self, cache, local: str, limit_bytes: int = 0):
        self.cache, self.limit = cache, int(limit_bytes)
        m = cache.manifest
        tag = hashlib.sha256(dumps(m.raw).encode("utf-8")).hexdigest()[:16]
        self.folder = Path(local).expanduser().resolve()
        self.base = self.folder / f"{m.corpus_name}-{tag}"
        for sub in ("shards", "fetched", "locks"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        if not (self.base / "manifest.json").exists():
            write_text(self.base / "manifest.json", dumps(m.raw))
        big = max((self.shard_bytes(k) for k in range(len(m.shards))), default=0)
        if self.limit and big > self.limit:
            raise CacheError(f"cache_local_limit_gb={self.limit / 1e9:g} is smaller than the largest shard of "
                             f"{cache.url} ({big / 1e9:.3f} GB); raise it (it should hold every shard a step reads)")
        self.fetched_bytes = 0                   # by this process, from the store
        self._checked: dict[int, float] = {}     # shard -> when this process last found it complete

    # ------------------------------------------------------------------ sizes and markers
    def shard_bytes(self, k: int) -> int:
        """Bytes of shard k's files (the manifest records them; else the store is asked)."""
        record = self.cache.manifest.shards[k]
        if record.bytes:
            return sum(record.bytes.values())
        base = f"{self.cache.root}/shards/{record.name}"
        return sum(int(self.cache.fs.size(f"{base}/{name}")) for name in record.sha256)

    def _marker(self, k: int) -> Path:
        return self.base / "fetched" / f"{self.cache.manifest.shards[k].name}.json"

    def intact(self, k: int) -> bool:
        """Is the local copy of shard k complete and unchanged since its fetch?"""
        try:
            saved = json.loads(self._marker(k).read_text(encoding="utf-8"))
            folder = self.base / "shards" / self.cache.manifest.shards[k].name
            return all(_identity(str(folder / name)) == ident for name, ident in saved["files"].items()) \
                and set(saved["files"]) == {*self.cache.manifest.shards[k].sha256, "shard.json"}
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def present(self, k: int) -> bool:
        """Cheap: is shard k's marker still there (not evicted)? Touches it now and then (LRU)."""
        marker = self._marker(k)
        try:
            now = time.time()
            if now - self._checked.get(k, 0.0) > _TOUCH_EVERY:
                os.utime(marker)
                self._checked[k] = now
            else:
                os.stat(marker)
            return True
        except FileNotFoundError:
            self._checked.pop(k, None)
            return False

    # ------------------------------------------------------------------ fetching
    def local_root(self, k: int) -> str:
        for _ in range(3):           # another process may evict it between its fetch and our look
            if k in self._checked and self.present(k):
                return str(self.base)
            if not self.intact(k):
                with _flock(self.base / "locks" / self.cache.manifest.shards[k].name):
                    if not self.intact(k):              # nobody on this node fetched it while we waited
                        self._fetch(k)
            self._checked[k] = 0.0
            if self.present(k):
                return str(self.base)
        raise CacheError(f"{self.cache.url} shard {self.cache.manifest.shards[k].name}: evicted from {self.folder} "
                         "as soon as it was fetched, three times: cache_local_limit_gb is too small for the "
                         "processes sharing the folder; raise it")

    def _fetch(self, k: int) -> None:
        record = self.cache.manifest.shards[k]
        name = record.name
        final, marker = self.base / "shards" / name, self._marker(k)
        marker.unlink(missing_ok=True)
        if final.exists():                           # a copy changed after its fetch, or a crash before its marker
            shutil.rmtree(final)
        size = self.shard_bytes(k)
        part = self.base / "fetched" / f"{name}.part"
        self._make_room(size, part)
        tmp = self.base / "shards" / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        remote = f"{self.cache.root}/shards/{name}"
        where = f"{self.cache.url} shard {name}"
        try:
            for member in sorted({*record.sha256, "shard.json"}):
                self._copy_member(remote, member, tmp / member, record.sha256.get(member), where)
            with open(tmp / "shard.json", encoding="utf-8") as f:
                try:
                    own = json.load(f)
                except ValueError:
                    own = None
            if own != self.cache.manifest.raw["shards"][k]:
                raise CacheError(f"{where}: shard.json in the store differs from the manifest's record (corrupt); "
                                 "refused: rebuild the cache")
            os.replace(tmp, final)
            fsync_folder(final.parent)
            files = {member: _identity(str(final / member)) for member in sorted({*record.sha256, "shard.json"})}
            write_text(marker, json.dumps({"url": self.cache.url, "bytes": size, "files": files}))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            part.unlink(missing_ok=True)

    def _copy_member(self, remote: str, member: str, target: Path, want: str | None, where: str) -> None:
        """One file of a shard streamed from the store to `target` (fsynced), hashed on the way and
        refused unless its sha256 is the manifest's."""
        source = member_path(self.cache.fs, remote, member, where)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with self.cache.fs.open(source, "rb", block_size=1 << 24) as src, open(target, "wb") as out:
            while chunk := src.read(_STREAM):
                digest.update(chunk)
                out.write(chunk)
                self.fetched_bytes += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if want is not None and digest.hexdigest() != want:
            raise CacheError(f"{self.cache.fs.unstrip_protocol(source)}: sha256 {digest.hexdigest()[:12]}… is "
                             f"not the manifest's {want[:12]}… (a corrupt object in the store); refused, "
                             "nothing of the shard was kept: restore the object or rebuild the cache")

    def _make_room(self, size: int, part: Path) -> None:
        """Under the folder's lock: reserve `size` bytes (the .part marker), first removing the least
        recently used complete shards of any cache in the folder while the total would pass the limit."""
        with _flock(self.folder / ".lock"):
            if self.limit:
                used, shards = 0, []
                for m in self.folder.glob("*/fetched/*"):
                    try:
                        record = json.loads(m.read_text(encoding="utf-8"))
                        nbytes, mtime = int(record["bytes"]), m.stat().st_mtime
                        if m.suffix == ".part" and not _alive(int(record["pid"])):
                            m.unlink()                   # left by a fetch that was killed
                            continue
                    except (OSError, ValueError, KeyError, TypeError):
                        continue
                    used += nbytes
                    if m.suffix == ".json":
                        shards.append((mtime, str(m), nbytes))
                for _, m, nbytes in sorted(shards):
                    if used + size <= self.limit:
                        break
                    self._evict(Path(m))
                    used -= nbytes
            write_text(part, json.dumps({"bytes": size, "pid": os.getpid()}))

    @staticmethod
    def _evict(marker: Path) -> None:
        marker.unlink(missing_ok=True)               # first: readers that look it up see it gone
        shutil.rmtree(marker.parent.parent / "shards" / marker.stem, ignore_errors=True)
