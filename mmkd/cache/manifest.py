"""The cache manifest as a typed object, validated before anything reads a file it names.

`Manifest.parse(data, where)` checks the whole `manifest.json` against the format (docs/cache-format.md):
every key present with its type and range, names that are one path component, file names inside
their shard, shard records consistent with each other and with the totals. A manifest that fails
is one line naming the file, the key and the value; nothing of the cache is opened before.
Readers (features, trainer, model card, verify, upgrade) use its fields, never raw keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mmkd.cache.format import FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS, STORAGE, shard_name
from mmkd.errors import CacheError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MEMBER = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_SHA = re.compile(r"[0-9a-f]{64}")
# What every shard's checksum list must cover: the files the reader opens (docs/cache-format.md).
REQUIRED_MEMBERS = ("meta.arrow", "zarr.json", "words/zarr.json", "cls/zarr.json", "offsets/zarr.json")
# Format 3 adds the teacher's mean pooling of every sentence.
REQUIRED_MEMBERS_3 = REQUIRED_MEMBERS + ("mean/zarr.json",)


class _Check:
    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, why: str):
        raise CacheError(f"{self.where}: {key}: {why}; the manifest is corrupt or was edited "
                         "(`mmkd cache verify` it, or rebuild the cache)")

    def get(self, d: Any, key: str, kind, path: str = "", *, optional: bool = False, least=None):
        name = f"{path}{key}"
        if not isinstance(d, dict):
            self.fail(path.rstrip(".") or "manifest", f"must be a JSON object, not {type(d).__name__}")
        if key not in d:
            if optional:
                return None
            self.fail(name, "missing")
        v = d[key]
        if v is None and optional:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
            self.fail(name, f"{v!r} is not {' or '.join(k.__name__ for k in kinds)}")
        if least is not None and v < least:
            self.fail(name, f"{v!r} is below {least}")
        return v

    def name(self, v: str, key: str) -> str:
        if not _NAME.fullmatch(v) or ".." in v:
            self.fail(key, f"{v!r} is not one folder name")
        return v

    def sha(self, v: Any, key: str) -> str:
        if not isinstance(v, str) or not _SHA.fullmatch(v):
            self.fail(key, f"{v!r} is not a sha256 hex digest")
        return v


@dataclass(frozen=True)
class ShardRecord:
    name: str
    first_pair_id: int
    n_sentences: int
    n_words: int
    sha256: dict[str, str]
    bytes: dict[str, int] | None

    @classmethod
    def parse(cls, d: Any, k: int, shard_size: int, c: _Check, version: int = FORMAT_VERSION) -> "ShardRecord":
        p = f"shards[{k}]."
        name = c.get(d, "name", str, p)
        if name != shard_name(k):
            c.fail(p + "name", f"{name!r} (shard {k} is named {shard_name(k)})")
        first = c.get(d, "first_pair_id", int, p, least=0)
        if first != k * shard_size:
            c.fail(p + "first_pair_id", f"{first} (shard {k} starts at {k * shard_size})")
        n = c.get(d, "n_sentences", int, p, least=1)
        if n > shard_size:
            c.fail(p + "n_sentences", f"{n} is more than shard_size {shard_size}")
        words = c.get(d, "n_words", int, p, least=0)
        sha = c.get(d, "sha256", dict, p)
        for member, digest in sha.items():
            if not MEMBER.fullmatch(member) or any(part in (".", "..") for part in member.split("/")):
                c.fail(f"{p}sha256", f"file name {member!r} is not a path inside the shard")
            c.sha(digest, f"{p}sha256[{member!r}]")
        missing = [m for m in (REQUIRED_MEMBERS_3 if version >= 3 else REQUIRED_MEMBERS) if m not in sha]
        if missing:
            c.fail(f"{p}sha256", f"no checksum for {missing[0]}")
        sizes = c.get(d, "bytes", dict, p, optional=True)
        if sizes is not None and (set(sizes) != set(sha) or not all(isinstance(v, int) and v >= 0 for v in sizes.values())):
            c.fail(f"{p}bytes", "does not list one size per checksummed file")
        return cls(name, first, n, words, dict(sha), dict(sizes) if sizes is not None else None)


@dataclass(frozen=True)
class Manifest:
    raw: dict                      # as read: saved beside a trained student, hashed into identities
    format_version: int
    teacher_name: str              # as given to cache-teacher (hub id or folder)
    teacher_source: str            # what a reader can look up (hub id, or the package it came from)
    teacher_hash: str
    teacher_model_type: str
    hidden_size: int
    word_rule: str
    layer: int
    max_length: int
    dtype: str
    compression: str | None
    shard_size: int
    corpus_name: str
    corpus_pair: str
    corpus_fingerprint: str
    n_sentences: int
    n_words: int
    shards: tuple[ShardRecord, ...]

    @classmethod
    def parse(cls, data: Any, where: str) -> "Manifest":
        c = _Check(where)
        version = _version(c, data, where)
        t_name, source, t_hash, t_type, hidden = _teacher(c, data)
        dtype = c.get(data, "dtype", str)
        if dtype not in STORAGE:
            c.fail("dtype", f"{dtype!r} is not one of {', '.join(STORAGE)}")
        compression = c.get(data, "compression", str, optional=True)
        if compression not in (None, "zstd"):
            c.fail("compression", f"{compression!r} is not null or zstd")
        shard_size = c.get(data, "shard_size", int, least=1)
        corpus = c.get(data, "corpus", dict)
        corpus_name = c.name(c.get(corpus, "name", str, "corpus."), "corpus.name")
        pair = c.get(corpus, "pair", str, "corpus.")
        fingerprint = c.sha(c.get(corpus, "fingerprint", str, "corpus."), "corpus.fingerprint")
        n_pairs = c.get(corpus, "n_pairs", int, "corpus.", least=1)
        records = c.get(data, "shards", list)
        shards = tuple(ShardRecord.parse(r, k, shard_size, c, version) for k, r in enumerate(records))
        n, words = _counts(c, data, shards, shard_size, n_pairs)
        layer = c.get(data, "layer", int)
        max_length = c.get(data, "max_length", int, least=3)
        word_rule = c.get(data, "word_rule", str)
        return cls(data, version, t_name, source, t_hash, t_type, hidden, word_rule, layer, max_length, dtype,
                   compression, shard_size, corpus_name, pair, fingerprint, n, words, shards)

    @property
    def has_mean(self) -> bool:
        """Does the cache hold the teacher's mean pooling of each sentence (format 3)?"""
        return self.format_version >= 3

    @property
    def identity(self) -> dict:
        """What a run records of the cache it trained on (a resume must match)."""
        return {"corpus": self.corpus_name, "fingerprint": self.corpus_fingerprint, "teacher_hash": self.teacher_hash,
                "layer": self.layer, "max_length": self.max_length, "source": f"cache:{self.dtype}"}


def _version(c: _Check, data: Any, where: str) -> int:
    """The manifest's format version, one this mmkd reads (version 1 is refused, naming the upgrade)."""
    if not isinstance(data, dict):
        c.fail("manifest", f"must be a JSON object, not {type(data).__name__}")
    if data.get("format") != FORMAT_NAME:
        raise CacheError(f"{where}: not an mmkd teacher cache manifest (format={data.get('format')!r})")
    version = data.get("format_version")
    if version == 1:
        raise CacheError(f"{where}: cache format version 1 holds no text, so training would need the prepared "
                         "corpus beside it; make it self-contained with `mmkd cache upgrade "
                         f"{where.rsplit('/manifest.json', 1)[0]} --data-dir DIR` (DIR holds corpora/<name>/)")
    if version not in READABLE_VERSIONS:
        raise CacheError(f"{where}: cache format version {version!r}, but this mmkd reads versions "
                         f"{' and '.join(map(str, READABLE_VERSIONS))}; rebuild the cache with `mmkd cache-teacher`")
    return version


def _teacher(c: _Check, data: dict) -> tuple[str, str, str, str, int]:
    """(name, source, hash, model type, hidden size) of the teacher that wrote the cache."""
    teacher = c.get(data, "teacher", dict)
    t_name = c.get(teacher, "name_or_path", str, "teacher.")
    source = c.get(teacher, "source", str, "teacher.", optional=True) or t_name
    t_hash = c.sha(c.get(teacher, "hash", str, "teacher."), "teacher.hash")
    t_type = c.get(teacher, "model_type", str, "teacher.")
    hidden = c.get(data, "hidden_size", int, least=1)
    if c.get(teacher, "hidden_size", int, "teacher.") != hidden:
        c.fail("teacher.hidden_size", "differs from hidden_size")
    return t_name, source, t_hash, t_type, hidden


def _counts(c: _Check, data: dict, shards: tuple, shard_size: int, n_pairs: int) -> tuple[int, int]:
    """(sentences, words), each checked against the sum over the shards and the corpus's pairs."""
    n = c.get(data, "n_sentences", int, least=1)
    if c.get(data, "n_shards", int, least=1) != len(shards):
        c.fail("n_shards", f"{data['n_shards']} but {len(shards)} shards are listed")
    if sum(s.n_sentences for s in shards) != n:
        c.fail("n_sentences", f"{n} but the shards hold {sum(s.n_sentences for s in shards)}")
    if n != n_pairs:
        c.fail("n_sentences", f"{n} but the corpus has {n_pairs} pairs")
    if any(s.n_sentences != shard_size for s in shards[:-1]):
        c.fail("shards", "every shard but the last holds shard_size sentences")
    words = c.get(data, "n_words", int, least=0)
    if sum(s.n_words for s in shards) != words:
        c.fail("n_words", f"{words} but the shards hold {sum(s.n_words for s in shards)}")
    return n, words
