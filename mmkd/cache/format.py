"""The teacher-cache format, version 3 (specified in docs/cache-format.md; keep the two in step).

Version 2 made the cache self-contained: each shard's meta.arrow also holds the pair's English and
target text (`en`, `x`), and the manifest records the corpus's fingerprint, not its path.
Version 3 adds `mean`, the teacher's own sentence embedding for a sentence-transformers teacher
(its states averaged over every token of the input). `mmkd cache upgrade` turns a version-1 cache
into version 2 (from the prepared corpus) and a version-2 cache into version 3 (with the teacher).

One cache folder per prepared corpus:

    <cache>/manifest.json          written last: identity, counts, every shard and its checksums
    <cache>/build.json             identity of the run in progress (for --resume refusals)
    <cache>/summary.json           timings of the last run (not part of the content)
    <cache>/shards/00000/          one shard = pair ids [k*S, (k+1)*S), a Zarr v3 group:
        words   [n_words, H]       teacher word states, stored dtype (see STORAGE)
        words_scale [n_words]      float32, int8 only: per-vector absmax / 127
        cls     [n, H]             teacher [CLS] states, same dtype rule
        cls_scale [n]              float32, int8 only
        mean    [n, H]             format 3: the teacher's states averaged over every token of the
                                   input (special tokens included), same dtype rule
        mean_scale [n]             float32, int8 only
        offsets [n + 1]            int64: sentence i's words are rows offsets[i]:offsets[i+1]
        meta.arrow                 Arrow IPC: pair_id, words (list<string>), n_words,
                                   n_words_split, truncated, en, x (the pair's text)
        shard.json                 counts + sha256 of every file above; written last
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from mmkd.errors import CacheError

FORMAT_NAME = "mmkd-teacher-cache"
FORMAT_VERSION = 3
# Format 2 (no `mean`) is still read: everything but a teacher vector of `mean` trains from it, and
# `mmkd cache upgrade CACHE --teacher NAME` adds the mean (re-running the teacher on the stored text).
READABLE_VERSIONS = (2, 3)

# dtype -> (zarr dtype of the stored tensors, needs a per-vector scale)
STORAGE = {
    "fp32": ("float32", False),
    "fp16": ("float16", False),
    "bf16": ("uint16", False),   # bfloat16 bit patterns: numpy has no bfloat16
    "int8": ("int8", True),      # round(x / scale), scale = absmax / 127 per vector
}

# Largest relative L2 error ||stored - fresh|| / ||fresh|| a vector may show in `cache verify`.
# fp32 allows for different batch padding on the re-run; the others for their rounding
# (measured fidelity is in docs/cache-format.md).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 1e-2, "int8": 3e-2}

SHARD_FILES = ("words", "cls", "offsets")


def shard_name(k: int) -> str:
    return f"{k:05d}"


def encode(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 [n, H] -> (stored array, per-row scale or None)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "fp32":
        return x, None
    if dtype == "fp16":
        return x.astype(np.float16), None
    if dtype == "bf16":
        bits = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy()
        return bits.view(np.uint16), None
    if dtype == "int8":
        absmax = np.abs(x).max(axis=1) if x.size else np.zeros(len(x), np.float32)
        scale = (absmax / 127.0).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0)[:, None]
        q = np.clip(np.rint(x / safe), -127, 127).astype(np.int8)
        return q, scale
    raise CacheError(f"unknown cache dtype {dtype!r}; choose one of {sorted(STORAGE)}")


def decode(stored: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Stored rows -> float32."""
    if dtype == "fp32":
        return np.asarray(stored, dtype=np.float32)
    if dtype == "fp16":
        return stored.astype(np.float32)
    if dtype == "bf16":
        # bfloat16 is the top half of a float32.
        return (np.asarray(stored, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype == "int8":
        return stored.astype(np.float32) * scale[:, None]
    raise CacheError(f"unknown cache dtype {dtype!r}")


def zarr_location(fs, path: str) -> str:
    """What to hand Zarr: a plain path for local folders (Zarr's LocalStore makes parent folders),
    the full URL for any other fsspec filesystem."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def member_path(fs, base: str, name: str, where: str) -> str:
    """`base/name` for a file name read from a manifest or shard record, refused unless it is a
    relative path inside `base` naming a regular file: a manifest must not make mmkd read (or hash,
    or hang on) anything outside the cache."""
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or ":" in name:
        raise CacheError(f"{where}: file name {name!r} in the record is not a path inside the shard; "
                         "the manifest is corrupt or was tampered with")
    path = f"{base}/{name}"
    if isinstance(fs, LocalFileSystem):
        real, inside = os.path.realpath(path), os.path.realpath(base)
        if os.path.commonpath([real, inside]) != inside:
            raise CacheError(f"{where}: {name!r} leads outside the shard (a link?); refused")
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise CacheError(f"{where}: file {name} is missing") from None
        if not stat.S_ISREG(mode):
            raise CacheError(f"{where}: {name!r} is not a regular file; refused")
    elif not fs.isfile(path):
        raise CacheError(f"{where}: file {name} is missing")
    return path


def sha256_file(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def dumps(obj) -> str:
    """Deterministic JSON: an interrupted-then-resumed cache must be byte-identical."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def read_json(fs, path: str, what: str) -> dict:
    try:
        with fs.open(path, "r") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CacheError(f"{path}: missing {what}") from None
    except json.JSONDecodeError as e:
        raise CacheError(f"{path}: {what} is not valid JSON ({e})") from None
    except (UnicodeDecodeError, RecursionError) as e:
        raise CacheError(f"{path}: {what} is not JSON mmkd wrote ({type(e).__name__})") from None


def check_manifest(manifest: dict, path: str) -> None:
    if manifest.get("format") != FORMAT_NAME:
        raise CacheError(f"{path}: not an mmkd teacher cache manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version") == 1:
        raise CacheError(f"{path}: cache format version 1 holds no text, so training would need the prepared "
                         "corpus beside it; make it self-contained with `mmkd cache upgrade "
                         f"{path.rsplit('/manifest.json', 1)[0]} --data-dir DIR` (DIR holds corpora/<name>/)")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise CacheError(f"{path}: cache format version {manifest.get('format_version')}, but this mmkd "
                         f"reads version {FORMAT_VERSION}; rebuild the cache with `mmkd cache-teacher`")
