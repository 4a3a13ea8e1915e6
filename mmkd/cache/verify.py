"""`mmkd cache verify` and `mmkd cache info`.

verify: the manifest's format and counts, every shard's record against the manifest, the sha256
of every file, the offsets' consistency, and the teacher re-run on k random sentences, compared
to the stored states within the dtype's tolerance (`format.TOLERANCE`). Every problem names the
shard (and sentence); all problems are collected before reporting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from mmkd.cache.format import TOLERANCE, member_path, read_json, sha256_file
from mmkd.cache.integrity import shard_members
from mmkd.cache.reader import TeacherCache, shard_path
from mmkd.errors import CacheError


@dataclass
class VerifyReport:
    url: str
    problems: list[str] = field(default_factory=list)
    checked_files: int = 0
    rerun_sentences: int = 0
    max_rel_error: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def _rel_error(stored: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    return np.linalg.norm(stored - fresh, axis=-1) / np.maximum(np.linalg.norm(fresh, axis=-1), 1e-12)


def verify_cache(path: str, k: int = 8, teacher: str | None = None, seed: int = 0,
                 progress: bool = True) -> VerifyReport:
    try:
        cache = TeacherCache(path)      # the manifest is checked against the format here (cache/manifest.py)
    except CacheError as e:
        return VerifyReport(url=str(path).rstrip("/"), problems=[str(e)])
    report = VerifyReport(url=cache.url)
    for index, rec in enumerate(tqdm(cache.manifest.shards, desc="checksums", unit=" shard", disable=not progress)):
        _check_shard(cache, index, rec, report)
    if not report.problems and k > 0:
        _rerun_teacher(cache, k, teacher, seed, report)
    return report


def _check_shard(cache: TeacherCache, index: int, rec, report: VerifyReport) -> None:
    """One shard: its record against the manifest's, a checksum for every file and every checksum
    right, then its offsets."""
    fs, where = cache.fs, f"shard {rec.name}"
    try:
        base = shard_path(fs, cache.root, rec.name, cache.url)
    except CacheError as e:
        report.problems.append(str(e))
        return
    try:
        on_disk = read_json(fs, f"{base}/shard.json", f"{where} record")
    except CacheError as e:
        on_disk = str(e)
    before = len(report.problems)
    if on_disk != cache.manifest.raw["shards"][index]:
        report.problems.append(f"{where}: shard.json differs from the manifest's record")
    for name in sorted(shard_members(fs, base) - set(rec.sha256)):
        report.problems.append(f"{where}: file {name} has no checksum in the manifest")
    for name, digest in rec.sha256.items():
        try:
            actual = sha256_file(fs, member_path(fs, base, name, where))
        except CacheError as e:
            report.problems.append(str(e))
            continue
        report.checked_files += 1
        if actual != digest:
            report.problems.append(f"{where}: file {name} checksum mismatch (corrupted)")
    if not any("shard " + rec.name in p for p in report.problems[before:]):
        try:
            offsets = cache.shard(index).offsets
            if offsets[0] != 0 or offsets[-1] != rec.n_words or np.any(np.diff(offsets) < 0):
                report.problems.append(f"{where}: offsets are inconsistent with n_words={rec.n_words}")
        except CacheError as e:
            report.problems.append(f"{where}: {e}")


def _rerun_teacher(cache: TeacherCache, k: int, teacher: str | None, seed: int, report: VerifyReport) -> None:
    """The teacher re-run on k random sentences, alone, from their stored word lists (the kept words
    are exactly these), compared with the stored states within the dtype's tolerance."""
    from mmkd.teacher import encode_words, load_teacher, model_hash   # lazy: stage one; the trainer imports this module

    m = cache.manifest
    name = teacher or m.teacher_name
    model, tokenizer = load_teacher(name)
    if model_hash(model) != m.teacher_hash:
        report.problems.append(f"teacher {name!r} is not the teacher that wrote this cache "
                               f"(weights hash {model_hash(model)[:12]} vs {m.teacher_hash[:12]})")
        return
    ids = np.sort(np.random.default_rng(seed).choice(len(cache), size=min(k, len(cache)), replace=False))
    batch, tol = cache.get(ids), TOLERANCE[m.dtype]
    for j, (pid, words) in enumerate(zip(ids, batch.words)):
        fresh = encode_words(model, tokenizer, [words], m.layer, m.max_length)[0]
        n = int(batch.word_mask[j].sum())
        where = f"shard {int(pid) // cache.shard_size:05d} sentence pair_id={int(pid)}"
        if len(fresh.kept) != n:
            report.problems.append(f"{where}: {n} stored words, the teacher now keeps {len(fresh.kept)}")
            continue
        err_w = _rel_error(batch.word_states[j, :n].numpy(), fresh.word_states)
        err_c = _rel_error(batch.cls[j].numpy()[None], fresh.cls[None])
        worst = float(max(err_w.max(initial=0.0), err_c.max()))
        report.max_rel_error = max(report.max_rel_error, worst)
        report.rerun_sentences += 1
        if worst > tol:
            report.problems.append(f"{where}: stored states differ from the teacher by relative "
                                   f"error {worst:.2e} > {tol:.0e} ({m.dtype})")


def cache_info(path: str) -> dict:
    cache = TeacherCache(path)
    m = cache.manifest.raw
    total = sum(cache.fs.du(f"{cache.root}/shards/{s['name']}") for s in m["shards"])
    return {
        "path": cache.url,
        "format_version": m["format_version"],
        "teacher": m["teacher"]["name_or_path"],
        "teacher_hash": m["teacher"]["hash"][:16],
        "corpus": f"{m['corpus']['name']} ({m['corpus']['pair']}, fingerprint {m['corpus']['fingerprint'][:16]})",
        "layer": m["layer"],
        "max_length": m["max_length"],
        "dtype": f"{m['dtype']} (stored {m['stored_dtype']}, compression {m['compression']})",
        "hidden_size": m["hidden_size"],
        "word_rule": m["word_rule"],
        "sentences": m["n_sentences"],
        "words": m["n_words"],
        "words_per_sentence": round(m["n_words"] / max(1, m["n_sentences"]), 2),
        "truncated_sentences": m["n_truncated"],
        "words_dropped": m["n_words_dropped"],
        "shards": m["n_shards"],
        "bytes": total,
        "bytes_per_word": round(total / max(1, m["n_words"]), 1),
        "mmkd_version": m["mmkd_version"],
    }
