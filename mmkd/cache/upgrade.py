"""`mmkd cache upgrade`: a format-1 cache made self-contained (format 2), and a format-2 cache given
the teacher's mean pooling (format 3).

Format 2 to 3 loads the teacher (by default the one the manifest names; it must have the recorded
hash and tokenizer), re-runs it on each shard's stored English text with the cache's own word rule,
batching and max length, and checks that the [CLS] states it gets back equal the stored ones within
the dtype's tolerance before it adds `mean` (and `mean_scale` for int8) to the shard, re-records the
shard's checksums and finally writes the manifest as format 3.

Format 1 stored the teacher's word lists but not the pairs' text, so training also opened the
prepared corpus the manifest pointed at. The upgrade reads that corpus (it must have the
fingerprint and pair count the manifest recorded), adds `en` and `x` to every shard's meta.arrow
(written aside and renamed), updates each shard's sizes and checksums, and rewrites the manifest
as format 2 without the corpus path. The teacher's tensors are not touched. It holds the cache's
writer lock from its first read (a `cache-teacher` running there refuses it); an interrupted
upgrade can be run again. Every file is replaced atomically and durably (mmkd/atomic.py).

Nothing is trusted that the upgrade would vouch for: before it writes, every shard name must be
the shard's own (`00000`, ...; a manifest cannot send it outside the cache) and every file of every
shard must match the checksum the version-1 manifest recorded, so a corrupt file is reported, not
given a fresh checksum.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import torch
import zarr
from tqdm.auto import tqdm

from mmkd.atomic import fs_write_bytes, fs_write_text
from mmkd.cache.format import (
    FORMAT_VERSION,
    TOLERANCE,
    decode,
    dumps,
    encode,
    member_path,
    read_json,
    sha256_file,
    shard_name,
    zarr_location,
)
from mmkd.cache.manifest import Manifest
from mmkd.cache.reader import shard_path
from mmkd.cache.writer import _array
from mmkd.corpus import open_corpus
from mmkd.errors import CacheError
from mmkd.lock import Lock
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


def upgrade_cache(path: str, data_dir: str, corpus: str | None = None, log=print, teacher: str | None = None,
                  trust_remote_code: bool = False) -> str:
    """Upgrade the cache at `path` in place to the current format, holding its writer lock from the
    first read: format 1 -> 2 (text from the prepared corpus), then 2 -> 3 (the teacher's mean)."""
    url = path.rstrip("/")
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.isdir(root) or not fs.exists(f"{root}/manifest.json"):
        raise CacheError(f"{url}: no teacher cache here (no manifest.json); give the folder `cache-teacher` wrote")
    with Lock(fs, root, url, "mmkd cache upgrade", CacheError):    # a writer running: refused before any read
        manifest = read_json(fs, f"{root}/manifest.json", "cache manifest")
        if isinstance(manifest, dict) and manifest.get("format_version") == FORMAT_VERSION:
            log(f"{url}: already format {FORMAT_VERSION}; nothing to do")
            return url
        if isinstance(manifest, dict) and manifest.get("format_version") == 1:
            _upgrade(url, fs, root, data_dir, corpus, log)
        return _add_mean(url, fs, root, teacher, trust_remote_code, log)


def _verify_all(url: str, fs, manifest: dict, bases: list[str]) -> None:
    """Every file of every shard against the manifest, before anything is changed."""
    for record, base in zip(manifest["shards"], bases):
        where = f"{url} shard {record['name']}"
        for name, digest in sorted(record["sha256"].items()):
            if sha256_file(fs, member_path(fs, base, name, where)) != digest:
                raise CacheError(f"{where}: file {name} does not match its checksum in the manifest (corrupt); "
                                 "nothing was upgraded: rebuild the cache")


def _write_manifest(fs, root: str, manifest: dict, version: int, **changes) -> None:
    manifest.update(format_version=version, **changes)
    for name in ("build.json", "manifest.json"):     # the manifest last: it says the upgrade is complete
        if fs.exists(f"{root}/{name}"):
            record = manifest if name == "manifest.json" else {
                **read_json(fs, f"{root}/{name}", "build record"), "format_version": version, **changes}
            fs_write_text(fs, f"{root}/{name}", dumps(record))


def _add_mean(url: str, fs, root: str, teacher: str | None, trust_remote_code: bool, log) -> str:
    """Format 2 -> 3: the teacher's mean pooling of every sentence, from the stored text."""
    raw = read_json(fs, f"{root}/manifest.json", "cache manifest")
    m = Manifest.parse(raw, f"{url}/manifest.json")
    if m.format_version != 2:
        raise CacheError(f"{url}: cache format version {m.format_version}; `cache upgrade` turns 1 into 2 and 2 into 3")
    if m.word_rule != WORD_RULE_VERSION:
        raise CacheError(f"{url}: words were split with rule {m.word_rule!r}, this mmkd uses {WORD_RULE_VERSION!r}; "
                         "the teacher cannot be re-run as it was: rebuild the cache")
    name = teacher or m.teacher_name
    model, tokenizer = load_teacher(name, "cuda" if torch.cuda.is_available() else "cpu", trust_remote_code)
    recorded_tokenizer = (raw.get("tokenizer") or {}).get("hash")
    if model_hash(model) != m.teacher_hash or recorded_tokenizer not in (None, tokenizer_hash(tokenizer)):
        raise CacheError(f"{url}: {name} is not the teacher the cache was made with (its weights or tokenizer differ "
                         f"from the recorded hash {m.teacher_hash[:12]}); give that teacher with --teacher")
    bases = [shard_path(fs, root, rec.name, url) for rec in m.shards]
    _verify_all(url, fs, raw, bases)
    batch_size = int(raw.get("batch_size") or 64)
    with tqdm(total=m.n_sentences, desc="teacher mean", unit=" sent", disable=None) as bar:
        for record, rec, base in zip(raw["shards"], m.shards, bases):
            _mean_shard(fs, base, f"{url} shard {rec.name}", m, model, tokenizer, batch_size, bar)
            files = sorted(p[len(base) + 1:] for p in fs.find(base) if not p.endswith("/shard.json"))
            record["sha256"] = {f: sha256_file(fs, f"{base}/{f}") for f in files}
            if "bytes" in record:
                record["bytes"] = {f: int(fs.size(f"{base}/{f}")) for f in files}
            fs_write_text(fs, f"{base}/shard.json", dumps(record))
    _write_manifest(fs, root, raw, 3)
    log(f"{url}: upgraded to format 3 ({len(m.shards)} shards; the teacher's mean pooling added by {name})")
    return url


def _mean_shard(fs, base: str, where: str, m: Manifest, model, tokenizer, batch_size: int, bar) -> None:
    """One shard's mean vectors: the teacher re-run on its stored text, checked against its stored
    [CLS] within the dtype's tolerance before anything of the shard is changed."""
    with fs.open(member_path(fs, base, "meta.arrow", where), "rb") as f:
        table = pa.ipc.open_file(pa.BufferReader(f.read())).read_all()
    words = [split_words(s) for s in table.column("en").to_pylist()]
    enc = tokenize_words(tokenizer, words, m.max_length)
    mean = np.zeros((len(words), m.hidden_size), np.float32)
    cls = np.zeros_like(mean)
    for idx in length_grouped_batches(token_lengths(enc), batch_size):
        for i, e in zip(idx, encode_prepared(model, collate(tokenizer, enc, idx, words, m.max_length), m.layer)):
            mean[i], cls[i] = e.mean, e.cls
        bar.update(len(idx))
    group = zarr.open_group(zarr_location(fs, base), mode="r+")
    stored_cls = decode(group["cls"][...], group["cls_scale"][...] if "cls_scale" in group else None, m.dtype)
    error = float(np.max(np.linalg.norm(stored_cls - cls, axis=1) / np.maximum(np.linalg.norm(cls, axis=1), 1e-12)))
    if error > TOLERANCE[m.dtype]:
        raise CacheError(f"{where}: the teacher re-run gives [CLS] states {error:.1e} (relative) from the stored "
                         f"ones, above the {m.dtype} tolerance {TOLERANCE[m.dtype]:.0e}: not the run that "
                         "made the cache (another layer, library or device?); nothing of this shard was "
                         "changed; rebuild the cache")
    stored, scale = encode(mean, m.dtype)
    for array in ("mean", "mean_scale"):
        if array in group:
            del group[array]
    _array(group, "mean", stored, m.compression)
    if scale is not None:
        _array(group, "mean_scale", scale, m.compression)


def _upgrade(url: str, fs, root: str, data_dir: str, corpus: str | None, log) -> str:
    """Format 1 -> 2: each shard's text, from the prepared corpus the cache was made from."""
    manifest = read_json(fs, f"{root}/manifest.json", "cache manifest")
    bases = _format_1_shards(url, fs, root, manifest)
    want = manifest["corpus"]
    recorded = want.get("path")
    if corpus is None and recorded and (Path(recorded) / "meta.json").is_file():
        corpus = recorded   # where it was when the cache was written, if it is still there
    prepared = open_corpus(corpus or want["name"], data_dir)
    if prepared.fingerprint != want["fingerprint"] or len(prepared) != manifest["n_sentences"]:
        raise CacheError(f"{url} was written for corpus {want['name']!r} with fingerprint {want['fingerprint'][:16]} "
                         f"({manifest['n_sentences']} pairs), but {prepared.path} has {prepared.fingerprint[:16]} "
                         f"({len(prepared)} pairs): give the corpus it was made from (--data-dir / --corpus)")
    _verify_all(url, fs, manifest, bases)      # verify everything before changing anything
    for record, base in zip(manifest["shards"], bases):
        meta_path = _add_text(fs, member_path(fs, base, "meta.arrow", f"{url} shard {record['name']}"), prepared)
        record["sha256"]["meta.arrow"] = sha256_file(fs, meta_path)
        if "bytes" in record:
            record["bytes"]["meta.arrow"] = int(fs.size(meta_path))
        fs_write_text(fs, f"{base}/shard.json", dumps(record))
    _write_manifest(fs, root, manifest, 2, corpus={k: v for k, v in want.items() if k != "path"})
    log(f"{url}: upgraded to format 2 ({len(manifest['shards'])} shards; the text of "
        f"{manifest['n_sentences']} pairs added from {prepared.path})")
    return url


def _format_1_shards(url: str, fs, root: str, manifest) -> list[str]:
    """The shard folders of a format-1 manifest, each record checked to name its shard and carry its
    checksums (and never a link to a folder outside the cache)."""
    if not isinstance(manifest, dict):
        raise CacheError(f"{url}/manifest.json: not a cache manifest (a JSON {type(manifest).__name__})")
    version = manifest.get("format_version")
    if version != 1:
        raise CacheError(f"{url}: cache format version {version}; `cache upgrade` turns 1 into 2 and 2 into 3")
    if not isinstance(manifest.get("shards"), list) or not isinstance(manifest.get("corpus"), dict):
        raise CacheError(f"{url}/manifest.json: no shards or corpus record; not a cache mmkd can upgrade")
    bases = []
    for k, record in enumerate(manifest["shards"]):
        if not isinstance(record, dict) or record.get("name") != shard_name(k) or \
                not isinstance(record.get("sha256"), dict):
            raise CacheError(f"{url}/manifest.json: shard {k} is recorded as {str(record)[:80]!r}, not shard "
                             f"{shard_name(k)} with its checksums; refused (the manifest is corrupt or was edited)")
        bases.append(shard_path(fs, root, record["name"], url))
    return bases


def _add_text(fs, meta_path: str, prepared) -> str:
    """The shard's meta.arrow with the pairs' English and target text added (if not there yet)."""
    try:
        with fs.open(meta_path, "rb") as f:
            table = pa.ipc.open_file(pa.BufferReader(f.read())).read_all()
    except (OSError, pa.ArrowException) as e:
        raise CacheError(f"{meta_path}: unreadable ({str(e).splitlines()[0][:120]}); rebuild the cache") from None
    if "x" not in table.column_names:
        english, targets = prepared.rows(table.column("pair_id").to_numpy())
        table = table.append_column("en", pa.array(english, pa.string())).append_column(
            "x", pa.array(targets, pa.string()))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        fs_write_bytes(fs, meta_path, sink.getvalue().to_pybytes())
    return meta_path
