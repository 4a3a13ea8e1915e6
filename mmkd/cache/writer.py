"""`mmkd cache-teacher`: run the frozen teacher once over the English side and write the cache.

Crash safety: each shard is written into `shards/<k>.tmp/`, checksummed, then renamed to
`shards/<k>/`; a shard folder without `.tmp` therefore always holds a complete shard. `--resume`
keeps complete shards, deletes partial ones and redoes them; the manifest is written last, by the
main process, after every process has finished its shards. Processes started by
`accelerate launch` take shards k with k % world_size == rank: each writer owns whole shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import zarr
from tqdm.auto import tqdm

from mmkd import __version__, settings
from mmkd.atomic import fs_publish, fs_write_text
from mmkd.cache.folder import CACHE_ENTRIES, foreign_files, is_build_record
from mmkd.cache.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    STORAGE,
    dumps,
    encode,
    read_json,
    sha256_file,
    shard_name,
    zarr_location,
)
from mmkd.cache.settings import CacheConfig
from mmkd.capacity import check_batch, check_length
from mmkd.corpus import PreparedCorpus, open_corpus
from mmkd.dist import process_state
from mmkd.errors import CacheError
from mmkd.lock import LOCK_FILES, Lock
from mmkd.paths import check_deletable
from mmkd.supply import describe
from mmkd.teacher import (
    collate,
    encode_prepared,
    length_grouped_batches,
    load_teacher,
    model_hash,
    token_lengths,
    tokenize_words,
    tokenizer_hash,
)
from mmkd.words import WORD_RULE_VERSION, split_words

# How a shard is cut into teacher batches (it decides the padding, hence the fp32 rounding): sort
# the shard by sub-token count, longest first, ties in pair-id order, then cut every batch_size.
BATCHING_RULE = "subtoken-length-v1"


def _identity(cfg: CacheConfig, corpus: PreparedCorpus, model, tokenizer) -> dict:
    """What the cache's content depends on; a resume with any other value is refused."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "teacher": {"name_or_path": cfg.teacher, "source": describe(cfg.teacher), "hash": model_hash(model),
                    "model_type": model.config.model_type, "hidden_size": model.config.hidden_size},
        "tokenizer": {"class": type(tokenizer).__name__, "hash": tokenizer_hash(tokenizer)},
        "word_rule": WORD_RULE_VERSION,
        "layer": cfg.layer,
        "max_length": cfg.max_length,
        "dtype": cfg.dtype,
        "stored_dtype": STORAGE[cfg.dtype][0],
        "compression": cfg.compression,
        "batch_size": cfg.batch_size,
        "batching": BATCHING_RULE,
        "shard_size": cfg.shard_size,
        "hidden_size": model.config.hidden_size,
        # Provenance, not a location: the cache holds the text itself (format 2).
        "corpus": {"name": corpus.name, "pair": corpus.pair, "fingerprint": corpus.fingerprint,
                   "n_pairs": len(corpus), "sources": _public_sources(corpus.meta.get("sources", []))},
        "mmkd_version": __version__,
    }


def _public_sources(sources: list[str]) -> list[str]:
    """The corpus's sources a reader elsewhere can look up (OPUS releases, hub datasets), never a local
    path: a model card names them as its `datasets:`."""
    return [s for s in sources if s.startswith(("opus:", "hub:")) or
            (s.startswith("hf:") and not os.path.exists(s[3:].split("[", 1)[0]) and "/" in s[3:])]


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb and k != "path":
            out.append(f"{prefix}{k}: cache has {va!r}, this run has {vb!r}")
    return out


def _array(group, name, data, compression):
    chunks = data.shape if data.shape[0] else (1,) + data.shape[1:]
    kw = dict(compressors=None, config={"write_empty_chunks": True})
    if compression == "zstd":
        # Inner chunks of 64 rows inside one shard object: a random row decompresses 64 rows.
        rows = min(64, max(1, data.shape[0]))
        whole = (-(-max(1, data.shape[0]) // rows) * rows,) + data.shape[1:]
        kw = dict(chunks=(rows,) + data.shape[1:], shards=whole, compressors=zarr.codecs.ZstdCodec(level=3))
    else:
        kw["chunks"] = chunks
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, **kw)
    if data.size:
        arr[...] = data


@dataclass
class _Shard:
    k: int
    first_pair_id: int
    pair_ids: np.ndarray
    words: list[list[str]]          # as split
    batches: list                   # (indices into the shard, PreparedBatch), length-grouped
    english: list[str]              # the pairs' text, stored in meta.arrow (format 2)
    targets: list[str]
    encoded: list | None = None     # EncodedSentence per sentence, in pair-id order


def _prepare_shard(k: int, corpus: PreparedCorpus, cfg: CacheConfig, tokenizer) -> _Shard:
    """Read, split and tokenize shard k, and cut it into batches of similar sub-token length."""
    lo, hi = k * cfg.shard_size, min(len(corpus), (k + 1) * cfg.shard_size)
    pair_ids = np.arange(lo, hi, dtype=np.int64)
    english, targets = corpus.rows(pair_ids)
    words = [split_words(s) for s in english]
    enc = tokenize_words(tokenizer, words, cfg.max_length)
    batches = [(idx, collate(tokenizer, enc, idx, words, cfg.max_length))
               for idx in length_grouped_batches(token_lengths(enc), cfg.batch_size)]
    return _Shard(k, lo, pair_ids, words, batches, english, targets)


def _encode_shard(shard: _Shard, cfg: CacheConfig, model, bar) -> _Shard:
    """Run the teacher over a prepared shard."""
    encoded = [None] * len(shard.words)
    for idx, batch in shard.batches:
        for i, e in zip(idx, encode_prepared(model, batch, cfg.layer)):
            encoded[i] = e
        bar.update(len(idx))
    shard.encoded, shard.batches = encoded, []
    return shard


def _store_shard(fs, root: str, shard: _Shard, cfg: CacheConfig, hidden: int) -> dict:
    """Write an encoded shard into `shards/<k>.tmp/`, checksum it, then rename it into place."""
    k, words, encoded = shard.k, shard.words, shard.encoded
    counts = np.array([len(e.kept) for e in encoded], dtype=np.int64)
    tmp = f"{root}/shards/{shard_name(k)}.tmp"
    if fs.exists(tmp):
        fs.rm(tmp, recursive=True)
    _store_arrays(zarr.open_group(zarr_location(fs, tmp), mode="w"), encoded, counts, cfg, hidden)
    meta = pa.table({
        "pair_id": pa.array(shard.pair_ids),
        "words": pa.array([[w[j] for j in e.kept] for w, e in zip(words, encoded)], pa.list_(pa.string())),
        "n_words": pa.array(counts.astype(np.int32)),
        "n_words_split": pa.array(np.array([len(w) for w in words], dtype=np.int32)),
        "truncated": pa.array([e.truncated for e in encoded], pa.bool_()),
        "en": pa.array(shard.english, pa.string()),
        "x": pa.array(shard.targets, pa.string()),
    })
    with fs.open(f"{tmp}/meta.arrow", "wb") as f, pa.ipc.new_file(f, meta.schema) as w:
        w.write_table(meta)
    files = sorted(p[len(tmp) + 1:] for p in fs.find(tmp))
    record = {
        "bytes": {name: int(fs.size(f"{tmp}/{name}")) for name in files},
        "name": shard_name(k),
        "first_pair_id": shard.first_pair_id,
        "n_sentences": len(words),
        "n_words": int(counts.sum()),
        "n_truncated": int(sum(e.truncated for e in encoded)),
        "n_words_dropped": int(sum(len(w) for w in words) - counts.sum()),
        "sha256": {name: sha256_file(fs, f"{tmp}/{name}") for name in files},
    }
    with fs.open(f"{tmp}/shard.json", "w") as f:
        f.write(dumps(record))
    final = f"{root}/shards/{shard_name(k)}"
    if fs.exists(final):   # an incomplete shard being redone: moving onto it would nest tmp inside it
        fs.rm(final, recursive=True)
    fs_publish(fs, tmp, final)     # locally: every file fsynced, renamed, `shards/` fsynced
    return record


def _store_arrays(group, encoded: list, counts: np.ndarray, cfg: CacheConfig, hidden: int) -> None:
    """The shard's word states, [CLS] and mean vectors in the cache's dtype (int8: with their scales),
    and the word offsets of each sentence."""
    word_states = (np.concatenate([e.word_states for e in encoded]) if counts.sum()
                   else np.zeros((0, hidden), np.float32))
    for name, values in (("words", word_states), ("cls", np.stack([e.cls for e in encoded])),
                         ("mean", np.stack([e.mean for e in encoded]))):
        stored, scale = encode(values, cfg.dtype)
        _array(group, name, stored, cfg.compression)
        if scale is not None:
            _array(group, f"{name}_scale", scale, cfg.compression)
    _array(group, "offsets", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), None)


def _write_shards(fs, root: str, todo: list[int], corpus: PreparedCorpus, cfg: CacheConfig, model,
                  tokenizer, bar) -> dict:
    """A three-stage pipeline, so the teacher never waits for the CPU work around it: while the
    teacher runs on shard k, one thread tokenizes shard k+1 and another stores shard k-1. At most
    one shard waits on each side. An error in any stage is raised here; a shard being stored when
    the main thread fails is still finished (the pool waits for it) or left as `.tmp`. Returns the
    seconds the teacher ran and the seconds it waited for the tokenizer and for the writer."""
    hidden = model.config.hidden_size
    timing = {"teacher_seconds": 0.0, "waited_for_tokenizer_seconds": 0.0, "waited_for_writer_seconds": 0.0}

    def waited(key, future):
        t = time.perf_counter()
        out = future.result()
        timing[key] += time.perf_counter() - t
        return out

    with ThreadPoolExecutor(1, thread_name_prefix="mmkd-prepare") as prep, \
            ThreadPoolExecutor(1, thread_name_prefix="mmkd-store") as store:
        following = prep.submit(_prepare_shard, todo[0], corpus, cfg, tokenizer) if todo else None
        stored = None
        for n, k in enumerate(todo):
            shard = waited("waited_for_tokenizer_seconds", following)
            following = (prep.submit(_prepare_shard, todo[n + 1], corpus, cfg, tokenizer)
                         if n + 1 < len(todo) else None)
            t = time.perf_counter()
            _encode_shard(shard, cfg, model, bar)
            timing["teacher_seconds"] += time.perf_counter() - t
            if stored is not None:
                waited("waited_for_writer_seconds", stored)
            stored = store.submit(_store_shard, fs, root, shard, cfg, hidden)
        if stored is not None:
            waited("waited_for_writer_seconds", stored)
    return {k: round(v, 4) for k, v in timing.items()}


def _shard_complete(fs, root: str, k: int, checksums: bool = False) -> bool:
    """A shard is complete when its record is readable and its folder holds exactly the files the
    record lists, each of the recorded size (and, with `checksums`, the recorded sha256). Anything
    else (a crash, a second writer, a flipped bit) is redone by --resume."""
    base = f"{root}/shards/{shard_name(k)}"
    try:
        with fs.open(f"{base}/shard.json", "r") as f:
            record = json.load(f)
        listed = record["sha256"]
        present = {p[len(base) + 1:] for p in fs.find(base)} - {"shard.json"}
        if present != set(listed):
            return False
        sizes = record.get("bytes")
        if sizes is not None and any(int(fs.size(f"{base}/{name}")) != size for name, size in sizes.items()):
            return False
        return not checksums or all(sha256_file(fs, f"{base}/{name}") == digest for name, digest in listed.items())
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return False


def validate(cfg: CacheConfig) -> None:
    settings.validate(cfg)
    if not cfg.corpora:
        raise CacheError("no --corpus given: name at least one prepared corpus")


def check_layer(cfg: CacheConfig, model) -> None:
    """`layer` indexes hidden_states: embeddings, then each of the model's layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    if n is not None and not -(n + 1) <= cfg.layer <= n:
        raise CacheError(f"layer={cfg.layer}: the teacher has {n} layers, so hidden_states holds {n + 1} entries: "
                         f"choose from {-(n + 1)} to {n} (-1 = the last layer, 0 = the embeddings)")


def build_cache(cfg: CacheConfig, resume: bool = False, overwrite: bool = False,
                progress: bool = True) -> list[str]:
    """Write one cache per corpus under `cfg.out` (`<out>/<corpus name>/`); returns their URLs."""
    validate(cfg)
    state = process_state()
    corpora = [open_corpus(c, cfg.data_dir) for c in cfg.corpora]
    model, tokenizer = load_teacher(cfg.teacher, state.device, cfg.trust_remote_code)
    check_layer(cfg, model)
    check_length("max_length", cfg.max_length, model.config, f"teacher {cfg.teacher}")
    check_batch(cfg.batch_size, cfg.batch_size, cfg.max_length, model.config, state.device)
    outputs = []
    for corpus in corpora:
        outputs.append(_build_one(cfg, corpus, model, tokenizer, state, resume, overwrite, progress))
    return outputs


def _build_one(cfg, corpus, model, tokenizer, state, resume, overwrite, progress) -> str:
    url = f"{cfg.out.rstrip('/')}/{corpus.name}"
    fs, root = fsspec.core.url_to_fs(url)
    identity = _identity(cfg, corpus, model, tokenizer)
    started = time.time()
    lock = Lock(fs, root, url, "mmkd cache-teacher", CacheError)
    if state.is_main_process:
        if fs.exists(root) and not fs.isdir(root):
            raise CacheError(f"{url} is a file, not a folder; choose another --out")
        entries = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)} if fs.exists(root) else set()
        ours = "build.json" in entries and is_build_record(fs, root)
        if entries - LOCK_FILES and not ours:
            raise CacheError(f"{url} exists and is not an mmkd cache (it holds {', '.join(sorted(entries)[:3])}"
                             f"{' ...' if len(entries) > 3 else ''}, and no build record of mmkd's); nothing was "
                             "changed: choose another --out")
        if overwrite and ours:
            foreign = foreign_files(fs, root)
            if foreign:
                raise CacheError(f"{url} holds files mmkd did not write ({', '.join(foreign[:5])}); --overwrite deletes "
                                 "nothing there: move them away first")
            if "://" not in url or url.startswith("file://"):
                check_deletable(Path(root), entries, "teacher cache", [cfg.data_dir], CACHE_ENTRIES)
        fs.makedirs(root, exist_ok=True)
        lock.acquire()
    try:
        _build_locked(cfg, corpus, url, fs, root, identity, model, tokenizer, state, resume, overwrite, progress,
                      started)
    finally:
        if state.is_main_process:
            lock.release()
    return url


def _build_locked(cfg, corpus, url, fs, root, identity, model, tokenizer, state, resume, overwrite, progress,
                  started) -> None:
    if state.is_main_process:
        _start(fs, root, url, identity, resume, overwrite)
    state.wait_for_everyone()

    n_shards = max(1, -(-len(corpus) // cfg.shard_size))
    mine = [k for k in range(n_shards) if k % state.num_processes == state.process_index]
    todo = [k for k in mine if not (resume and _shard_complete(fs, root, k, checksums=True))]
    n_todo = sum(min(len(corpus), (k + 1) * cfg.shard_size) - k * cfg.shard_size for k in todo)
    with tqdm(total=n_todo, unit=" sent", desc=f"cache {corpus.name}", disable=not progress,
              position=state.process_index, dynamic_ncols=True) as bar:
        timing = _write_shards(fs, root, todo, corpus, cfg, model, tokenizer, bar)
    state.wait_for_everyone()
    if state.is_main_process:
        _finish(fs, root, url, cfg, identity, n_shards, n_todo, started, progress, state.num_processes, timing)
    state.wait_for_everyone()


def _start(fs, root: str, url: str, identity: dict, resume: bool, overwrite: bool) -> None:
    """The cache folder made ready: an existing cache replaced (--overwrite), continued if it was built
    the same way (--resume), or refused; the build's identity recorded, any old manifest removed."""
    if fs.exists(f"{root}/build.json"):
        if overwrite:     # checked above: only mmkd's own files are there
            for entry in CACHE_ENTRIES - LOCK_FILES:
                if fs.exists(f"{root}/{entry}"):
                    fs.rm(f"{root}/{entry}", recursive=True)
        elif not resume:
            raise CacheError(f"{url} already holds a cache; pass --resume to continue it or "
                             "--overwrite to replace it")
        else:
            diffs = _diff(read_json(fs, f"{root}/build.json", "build record"), identity)
            if diffs:
                raise CacheError(f"{url}: cannot resume, the cache was built differently:\n  "
                                 + "\n  ".join(diffs))
    fs.makedirs(f"{root}/shards", exist_ok=True)
    fs_write_text(fs, f"{root}/build.json", dumps(identity))
    if fs.exists(f"{root}/manifest.json"):
        fs.rm(f"{root}/manifest.json")   # rewritten when every shard is complete


def _finish(fs, root: str, url: str, cfg, identity: dict, n_shards: int, n_todo: int, started: float,
            progress: bool, processes: int, timing: dict) -> None:
    """Every shard's record into the manifest (written last: a cache without one is unfinished), and
    the run's summary."""
    shards = []
    for k in range(n_shards):
        if not _shard_complete(fs, root, k):
            raise CacheError(f"{url}: shard {shard_name(k)} is missing after the run; run again with --resume")
        shards.append(read_json(fs, f"{root}/shards/{shard_name(k)}/shard.json", "shard record"))
    manifest = {
        **identity,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("corpora", "out", "data_dir")},
        "n_shards": n_shards,
        "n_sentences": sum(s["n_sentences"] for s in shards),
        "n_words": sum(s["n_words"] for s in shards),
        "n_truncated": sum(s["n_truncated"] for s in shards),
        "n_words_dropped": sum(s["n_words_dropped"] for s in shards),
        "shards": shards,
    }
    fs_write_text(fs, f"{root}/manifest.json", dumps(manifest))
    elapsed = time.time() - started
    nbytes = sum(fs.du(f"{root}/shards/{s['name']}") for s in shards)
    summary = {"seconds": round(elapsed, 3), "sentences_written_this_run": n_todo,
               "sentences_per_second": round(n_todo / elapsed, 2) if elapsed else None,
               "n_sentences": manifest["n_sentences"], "n_words": manifest["n_words"],
               "bytes": nbytes, "processes": processes, **timing}
    fs_write_text(fs, f"{root}/summary.json", dumps(summary))
    if progress:
        print(f"{url}: {manifest['n_sentences']} sentences, {manifest['n_words']} words, "
              f"{nbytes / 1e6:.1f} MB in {n_shards} shards; {n_todo} sentences written in "
              f"{elapsed:.1f}s ({manifest['n_truncated']} truncated, {manifest['n_words_dropped']} words dropped)")
