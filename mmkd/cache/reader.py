"""Reading a teacher cache: `TeacherCache(path).sentences(pair_ids)` (text and features, unpadded)
or `.get(pair_ids)` (padded).

Designed for shuffled random access from many data-loader workers and ranks: opening is cheap
(manifest + shard records), every shard is opened lazily in the process that reads it (so file
handles and memory maps are never shared across a fork), and an uncompressed local cache is read
through `np.memmap` on the Zarr chunk files themselves (one chunk per array, `bytes` codec only:
the file is the raw little-endian array) so a batch costs one fancy-index copy per shard.
Compressed or remote (fsspec) caches go through Zarr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import torch
import zarr
from fsspec.implementations.local import LocalFileSystem

from mmkd.cache.fetch import ShardFetcher
from mmkd.cache.format import STORAGE, decode, read_json, shard_name, zarr_location
from mmkd.cache.manifest import Manifest, ShardRecord
from mmkd.errors import CacheError


@dataclass
class TeacherBatch:
    word_states: torch.Tensor   # [B, W, H] float32, zero where word_mask is False
    word_mask: torch.Tensor     # [B, W] bool
    cls: torch.Tensor           # [B, H] float32
    words: list[list[str]]      # the cached word lists (word i of the student = words[b][i])
    mean: torch.Tensor | None = None   # [B, H] float32: the teacher's mean pooling (format 3), else None

    @classmethod
    def from_sentences(cls, states: list[np.ndarray], cls_vectors: list[np.ndarray],
                       words: list[list[str]], means: list[np.ndarray] | None = None) -> "TeacherBatch":
        """Pad per-sentence [n_i, H] word states into a batch: the one place teacher states are padded."""
        b, hidden = len(states), cls_vectors[0].shape[-1]
        width = max((len(s) for s in states), default=0)
        out = np.zeros((b, width, hidden), dtype=np.float32)
        mask = np.zeros((b, width), dtype=bool)
        for i, s in enumerate(states):
            out[i, :len(s)] = s
            mask[i, :len(s)] = True
        return cls(word_states=torch.from_numpy(out), word_mask=torch.from_numpy(mask),
                   cls=torch.from_numpy(np.stack(cls_vectors).astype(np.float32)), words=words,
                   mean=None if means is None else torch.from_numpy(np.stack(means).astype(np.float32)))


@dataclass
class Sentences:
    """What a cache holds of some pairs, in the order asked, unpadded: each pair's English word list,
    English and target text, word states [n_i, H], [CLS] [H] and mean [H] (None before format 3)."""
    words: list[list[str]]
    english: list[str]
    targets: list[str]
    states: list[np.ndarray]
    cls: list[np.ndarray]
    means: list[np.ndarray] | None

    @classmethod
    def empty(cls, n: int, with_means: bool) -> "Sentences":
        return cls([[]] * n, [""] * n, [""] * n, [None] * n, [None] * n, [None] * n if with_means else None)

    def place(self, positions, other: "Sentences") -> None:
        """Put `other`'s pairs at `positions` (filling one read from several shards or corpora)."""
        for i, p in enumerate(positions):
            self.words[p], self.english[p], self.targets[p] = other.words[i], other.english[i], other.targets[i]
            self.states[p], self.cls[p] = other.states[i], other.cls[i]
            if self.means is not None:
                self.means[p] = other.means[i]

    def batch(self) -> TeacherBatch:
        return TeacherBatch.from_sentences(self.states, self.cls, self.words, self.means)


def _memmap_arrays(fs, path: str, record: ShardRecord):
    """Opens a shard's arrays as memory maps of its Zarr chunk files (one chunk each, raw bytes),
    each checked for a checksum in the manifest and for its size before it is mapped."""
    def open_array(name, dt, shape):
        member = f"{name}/c/0" + "/0" * (len(shape) - 1)
        expected = int(np.prod(shape)) * np.dtype(dt).itemsize
        if expected == 0:
            return np.zeros(shape, dt)
        if member not in record.sha256:
            raise CacheError(f"{path}/{member}: not covered by a checksum in the manifest (shard {record.name}); "
                             "the manifest was edited: rebuild the cache")
        try:
            size = fs.size(f"{path}/{member}")
        except FileNotFoundError:
            raise CacheError(f"{path}/{member}: missing (shard {record.name})") from None
        if size != expected:
            raise CacheError(f"{path}/{member}: {size} bytes, expected {expected} (shard {record.name} is corrupt)")
        return np.memmap(f"{path}/{member}", dtype=np.dtype(dt).newbyteorder("<"), mode="r", shape=shape)
    return open_array


def _zarr_arrays(fs, path: str):
    """Opens a shard's arrays through Zarr (compressed or remote caches), each checked for its shape."""
    group = zarr.open_group(zarr_location(fs, path), mode="r")

    def open_array(name, dt, shape):
        arr = group[name]
        if arr.shape != shape:
            raise CacheError(f"{path}/{name}: shape {arr.shape}, manifest says {shape}")
        return arr
    return open_array


def _read_meta(fs, path: str, record: ShardRecord, memmap: bool) -> pa.Table:
    """The shard's text (words, en, x), zero-copy from a local uncompressed cache."""
    try:
        if memmap:  # the word lists stay on disk until touched
            meta = pa.ipc.open_file(pa.memory_map(f"{path}/meta.arrow")).read_all()
        else:
            with fs.open(f"{path}/meta.arrow", "rb") as f:
                meta = pa.ipc.open_file(pa.BufferReader(f.read())).read_all()
    except (pa.ArrowException, OSError) as e:
        raise CacheError(f"{path}/meta.arrow: unreadable ({str(e).splitlines()[0][:120]}); shard "
                         f"{record.name} is corrupt: `mmkd cache verify` it, then rebuild the cache") from None
    return meta


class _Shard:
    def __init__(self, fs, root: str, record: ShardRecord, dtype: str, hidden: int, memmap: bool,
                 has_mean: bool = False):
        self.fs, self.root, self.record, self.dtype = fs, root, record, dtype
        self.path = f"{root}/shards/{record.name}"
        stored = STORAGE[dtype][0]
        self.has_scale = STORAGE[dtype][1]
        n, nw = record.n_sentences, record.n_words
        mm = _memmap_arrays(fs, self.path, record) if memmap else _zarr_arrays(fs, self.path)
        self.words = mm("words", stored, (nw, hidden))
        self.cls = mm("cls", stored, (n, hidden))
        self.offsets = np.asarray(mm("offsets", "int64", (n + 1,))[:])
        self.words_scale = mm("words_scale", "float32", (nw,)) if self.has_scale else None
        self.cls_scale = mm("cls_scale", "float32", (n,)) if self.has_scale else None
        self.has_mean = has_mean
        self.mean = mm("mean", stored, (n, hidden)) if has_mean else None
        self.mean_scale = mm("mean_scale", "float32", (n,)) if has_mean and self.has_scale else None
        self.meta = _read_meta(fs, self.path, record, memmap)
        if self.meta.num_rows != n or len(self.offsets) != n + 1:
            raise CacheError(f"{self.path}: {self.meta.num_rows} rows in meta.arrow, {len(self.offsets) - 1} in offsets, "
                             f"the manifest says {n} (shard {record.name} is corrupt)")

    def rows(self, local: np.ndarray):
        """Word rows and sentence lengths for local sentence indices."""
        starts, ends = self.offsets[local], self.offsets[local + 1]
        lengths = ends - starts
        # Concatenated aranges without a Python loop: row r of sentence i is starts[i] + r.
        idx = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
        return idx, lengths

    def read(self, local: np.ndarray):
        """(word rows, [CLS] rows, mean rows or None, sentence lengths) of local sentence indices."""
        idx, lengths = self.rows(local)
        if isinstance(self.words, np.ndarray):
            w = self.words[idx]
            c = self.cls[local]
            ws = self.words_scale[idx] if self.has_scale else None
            cs = self.cls_scale[local] if self.has_scale else None
            m = self.mean[local] if self.has_mean else None
            ms = self.mean_scale[local] if self.has_mean and self.has_scale else None
        else:  # zarr: orthogonal selection reads only the chunks touched
            w = self.words.get_orthogonal_selection((idx, slice(None))) if len(idx) else np.zeros((0, self.words.shape[1]), self.words.dtype)
            c = self.cls.get_orthogonal_selection((local, slice(None)))
            ws = self.words_scale.get_orthogonal_selection(idx) if self.has_scale and len(idx) else (np.zeros(0, np.float32) if self.has_scale else None)
            cs = self.cls_scale.get_orthogonal_selection(local) if self.has_scale else None
            m = self.mean.get_orthogonal_selection((local, slice(None))) if self.has_mean else None
            ms = self.mean_scale.get_orthogonal_selection(local) if self.has_mean and self.has_scale else None
        mean = decode(m, ms, self.dtype) if self.has_mean else None
        return decode(w, ws, self.dtype), decode(c, cs, self.dtype), mean, lengths


class TeacherCache:
    """A teacher cache opened for reading. `get(pair_ids)` returns a padded `TeacherBatch`."""

    def __init__(self, path: str, local: str | None = None, limit_bytes: int = 0):
        """`local`: a node-local folder each shard is fetched into (once per node, checked against the
        manifest's sha256) before it is read, for a cache in object storage (mmkd/cache/fetch.py)."""
        self.url = str(path).rstrip("/")
        self.local, self.limit_bytes = local, limit_bytes
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        raw = read_json(self.fs, f"{self.root}/manifest.json", "cache manifest "
                        "(an unfinished cache-teacher run? finish it with --resume)")
        self.manifest = m = Manifest.parse(raw, f"{self.url}/manifest.json")
        self.dtype, self.hidden_size = m.dtype, m.hidden_size
        self.shard_size, self.n = m.shard_size, m.n_sentences
        self.memmap = isinstance(self.fs, LocalFileSystem) and m.compression is None
        for rec in m.shards if not local else ():     # fetched shards are checked as they arrive
            shard_path(self.fs, self.root, rec.name, self.url)
            if not self.fs.exists(f"{self.root}/shards/{rec.name}/shard.json"):
                raise CacheError(f"{self.url}: shard {rec.name} is missing (listed in the manifest)")
        self._shards: dict[int, _Shard] = {}
        self.fetcher = None
        if local:
            self.fetcher = ShardFetcher(self, local, limit_bytes)

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):
        # Data-loader workers and ranks re-open their own shards.
        return {"url": self.url, "local": self.local, "limit_bytes": self.limit_bytes}

    def __setstate__(self, state):
        self.__init__(state["url"], state.get("local"), state.get("limit_bytes", 0))

    def shard(self, k: int) -> _Shard:
        if self.fetcher is not None:
            if k in self._shards and not self.fetcher.present(k):
                del self._shards[k]                  # evicted by another process: drop its maps, fetch again
            if k not in self._shards:
                self._shards[k] = _Shard(LocalFileSystem(), self.fetcher.local_root(k), self.manifest.shards[k],
                                         self.dtype, self.hidden_size, self.manifest.compression is None,
                                         self.manifest.has_mean)
            return self._shards[k]
        if k not in self._shards:
            self._shards[k] = _Shard(self.fs, self.root, self.manifest.shards[k], self.dtype,
                                     self.hidden_size, self.memmap, self.manifest.has_mean)
        return self._shards[k]

    def _check_ids(self, pair_ids: np.ndarray) -> np.ndarray:
        pair_ids = np.asarray(pair_ids, dtype=np.int64)
        if pair_ids.size and (pair_ids.min() < 0 or pair_ids.max() >= self.n):
            bad = pair_ids[(pair_ids < 0) | (pair_ids >= self.n)][0]
            raise CacheError(f"{self.url}: pair id {bad} out of range (cache holds 0..{self.n - 1})")
        return pair_ids

    def words(self, pair_ids) -> list[list[str]]:
        pair_ids = self._check_ids(pair_ids)
        out: list[list[str] | None] = [None] * len(pair_ids)
        for k, pos in _group_by_shard(pair_ids, self.shard_size):
            sub = self.shard(k).meta.column("words").take(pa.array(pair_ids[pos] - k * self.shard_size))
            for p, w in zip(pos, sub.to_pylist()):
                out[p] = w
        return out

    def texts(self, pair_ids) -> tuple[list[str], list[str]]:
        """The pairs' English and target text, from the shards' metadata (format 2)."""
        pair_ids = self._check_ids(pair_ids)
        english: list[str] = [""] * len(pair_ids)
        targets: list[str] = [""] * len(pair_ids)
        for k, pos in _group_by_shard(pair_ids, self.shard_size):
            rows = self.shard(k).meta.select(["en", "x"]).take(pa.array(pair_ids[pos] - k * self.shard_size))
            for p, e, x in zip(pos, rows.column("en").to_pylist(), rows.column("x").to_pylist()):
                english[p], targets[p] = e, x
        return english, targets

    def sentences(self, pair_ids) -> Sentences:
        """Text and teacher features of the pairs, read together: one pass over their shards."""
        pair_ids = self._check_ids(pair_ids)
        out = Sentences.empty(len(pair_ids), self.manifest.has_mean)
        for k, pos in _group_by_shard(pair_ids, self.shard_size):
            shard, local = self.shard(k), pair_ids[pos] - k * self.shard_size
            words, cls, mean, lens = shard.read(local)
            for name, values in (("words", words), ("cls", cls)) + ((("mean", mean),) if mean is not None else ()):
                self._check_finite(name, values, pair_ids[pos], lens, k)
            meta = shard.meta.select(["words", "en", "x"]).take(pa.array(local))
            split = np.split(words, np.cumsum(lens)[:-1]) if len(lens) else []
            out.place(pos, Sentences(meta.column("words").to_pylist(), meta.column("en").to_pylist(),
                                     meta.column("x").to_pylist(), split, list(cls),
                                     None if mean is None else list(mean)))
        return out

    def _check_finite(self, name: str, values: np.ndarray, pairs: np.ndarray, lens: np.ndarray, k: int) -> None:
        """Every value read is finite, whether or not an objective will use it: a NaN or inf in a cache
        is damage (checksums re-recorded over it, or written so), never data."""
        if np.isfinite(values).all():
            return
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(1))[0]
        pair = int(pairs[np.searchsorted(np.cumsum(lens), bad, side="right")] if name == "words" else pairs[bad])
        value = values.reshape(-1)[~np.isfinite(values.reshape(-1))][0]
        raise CacheError(f"{self.url} shard {shard_name(k)}: a non-finite value ({value}) in {name} (pair {pair}); "
                         f"the cache is damaged: `mmkd cache verify {self.url}` re-runs the teacher to confirm; "
                         "rebuild the cache")

    def get(self, pair_ids) -> TeacherBatch:
        """The pairs' teacher features, padded, with their word lists."""
        return self.sentences(pair_ids).batch()


def shard_path(fs, root: str, name: str, url: str) -> str:
    """`root/shards/name`, refused when it is a link (or lies) outside the cache: a manifest or a
    swapped folder must not make mmkd read data from elsewhere."""
    path = f"{root}/shards/{name}"
    if isinstance(fs, LocalFileSystem):
        real, inside = os.path.realpath(path), os.path.realpath(f"{root}/shards")
        if os.path.islink(f"{root}/shards") or os.path.commonpath([inside, os.path.realpath(root)]) != \
                os.path.realpath(root):
            raise CacheError(f"{url}: its shards/ folder is a link to {inside}, outside the cache; refused "
                             "(copy the data into the cache instead)")
        if os.path.islink(path) or os.path.commonpath([real, inside]) != inside:
            raise CacheError(f"{url}: shard {name} is a link to {real}, outside the cache; refused "
                             "(copy the data into the cache instead)")
    return path


def _group_by_shard(pair_ids: np.ndarray, shard_size: int):
    shards = pair_ids // shard_size
    for k in np.unique(shards):
        yield int(k), np.flatnonzero(shards == k)
