"""Reading a cache (mmkd/cache/reader.py, mmkd/features.py): batches equal a plain loop, the cache is
the one artifact between the stages (text included), and what does not match is refused on open."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import fsspec
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mmkd.cache import CacheConfig, TeacherCache, build_cache
from mmkd.cache.verify import verify_cache
from mmkd.cli import main
from mmkd.corpus import open_corpus
from mmkd.errors import CacheError
from mmkd.features import SourceError
from mmkd.teacher import load_teacher
from mmkd.trainer import train
from mmkd.words import split_words

from helpers import build, cached_run, losses, small_config


def test_collated_batches_and_device_gather_match_a_plain_loop(tiny_teacher, data_dir):
    """The writer tokenizes a whole shard, groups by sub-token length and pads each batch itself;
    encode_prepared gathers the kept rows on the device. Both must match the tokenizer's own
    padding and a plain loop over the padded batch exactly."""
    from mmkd.teacher import collate, encode_prepared, length_grouped_batches, token_lengths, tokenize_words

    model, tok = load_teacher(tiny_teacher)
    english, _ = open_corpus("en-fr", str(data_dir)).rows(np.arange(23))
    words = [split_words(s) for s in english]
    enc = tokenize_words(tok, words)
    lengths = token_lengths(enc)
    batches = length_grouped_batches(lengths, 7)                      # 7, 7, 7, 2: padded batches
    assert [len(b) for b in batches] == [7, 7, 7, 2]
    assert all(lengths[a].min() >= lengths[b].max() for a, b in zip(batches, batches[1:]))
    for idx in batches:
        batch = [words[i] for i in idx]
        ref = tok(batch, is_split_into_words=True, truncation=True, max_length=128, padding=True,
                  return_tensors="pt", return_token_type_ids=True)
        prepared = collate(tok, enc, idx, words)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(prepared.enc[key], ref[key]), key
        with torch.no_grad():
            hidden = model(**ref).last_hidden_state
        for j, (ws, got) in enumerate(zip(batch, encode_prepared(model, prepared))):
            first = {}
            for t, w in enumerate(ref.word_ids(j)):
                if w is not None and w not in first:
                    first[w] = t
            assert got.kept.tolist() == sorted(first)
            assert np.array_equal(got.word_states, torch.stack([hidden[j, first[i]] for i in sorted(first)]).numpy())
            assert np.array_equal(got.cls, hidden[j, 0].numpy())


def test_padded_batches_words_and_masks(fp32_cache, data_dir):
    cache = TeacherCache(str(fp32_cache))
    ids = np.array([100, 3, 64, 3])        # shuffled, across shards, with a repeat
    batch = cache.get(ids)
    lengths = batch.word_mask.sum(1).tolist()
    assert [len(w) for w in batch.words] == lengths
    assert batch.word_states.shape == (4, max(lengths), 32)
    assert torch.equal(batch.word_states[1], batch.word_states[3])
    single = cache.get([100])
    assert torch.equal(single.word_states[0, :lengths[0]], batch.word_states[0, :lengths[0]])
    with pytest.raises(CacheError, match="pair id 300 out of range"):
        cache.get([300])


def test_zstd_and_fsspec_caches_read_the_same_values(tmp_path, fp32_cache, tiny_teacher, data_dir):
    ref = TeacherCache(str(fp32_cache)).get(np.arange(0, 300, 7))
    z = TeacherCache(str(build(tmp_path, tiny_teacher, data_dir, dtype="fp32", batch_size=1,
                               compression="zstd") / "en-fr"))
    assert not z.memmap
    got = z.get(np.arange(0, 300, 7))
    assert torch.equal(got.word_states, ref.word_states) and torch.equal(got.cls, ref.cls)
    url = "memory://mmkd-test/cache"
    cfg = CacheConfig(corpora=["en-fr"], teacher=tiny_teacher, out=url, data_dir=str(data_dir),
                      dtype="fp32", batch_size=1, shard_size=64)
    build_cache(cfg, progress=False)
    mem = TeacherCache(f"{url}/en-fr")
    assert not mem.memmap
    got = mem.get(np.arange(0, 300, 7))
    assert torch.equal(got.word_states, ref.word_states) and got.words == ref.words
    assert verify_cache(f"{url}/en-fr", k=2, progress=False).ok


def test_missing_shard_is_an_error_on_open(tmp_path, tiny_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir) / "en-fr"
    shutil.rmtree(out / "shards" / "00001")
    with pytest.raises(CacheError, match="shard 00001 is missing"):
        TeacherCache(str(out))


def test_truncated_chunk_file_names_the_shard(tmp_path, tiny_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir) / "en-fr"
    target = out / "shards" / "00002" / "words" / "c" / "0" / "0"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(CacheError, match=r"expected \d+ \(shard 00002 is corrupt\)"):
        TeacherCache(str(out)).get([2 * 64])


def test_manifest_from_another_format_version_is_refused(tmp_path, tiny_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir) / "en-fr"
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="cache format version 99, but this mmkd reads versions 2 and 3"):
        TeacherCache(str(out))
    r = CliRunner().invoke(main, ["cache", "info", str(out)])
    assert r.exit_code == 2 and "format version 99" in r.output


def test_cache_written_by_another_teacher(tmp_path, tiny_teacher, other_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir) / "en-fr"
    with pytest.raises(CacheError, match=r"cannot resume, the cache was built differently:\n  teacher\.hash"):
        build(tmp_path, other_teacher, data_dir, resume=True)
    report = verify_cache(str(out), k=2, teacher=other_teacher, progress=False)
    assert len(report.problems) == 1 and "is not the teacher that wrote this cache" in report.problems[0]


def test_info_cli(tmp_path, tiny_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir, dtype="int8") / "en-fr"
    r = CliRunner().invoke(main, ["cache", "info", str(out), "--json"])
    info = json.loads(r.output)
    assert info["sentences"] == 300 and info["dtype"].startswith("int8") and info["shards"] == 5
    words = sum(len(w) for w in TeacherCache(str(out)).words(np.arange(300)))
    assert info["words"] == words


def test_one_read_gives_text_and_features_in_the_order_asked_across_shards(clean_cache):
    """`CachedFeatures.read` (one pass over the shards) gives, for keys from several shards in any
    order, what reading each pair alone gives: its word list, English, target, word states and [CLS]."""
    from mmkd.features import open_cached

    features = open_cached([str(clean_cache / "en-fr")])
    cache = features.caches[0]
    ids = [250, 3, 64, 3 + 64 * 2, 127, 0]                       # shards 3, 0, 1, 2, 1, 0
    read = features.read([(0, s, i) for s, i in enumerate(ids)])
    batch = read.batch()
    for b, pair in enumerate(ids):
        alone = cache.get([pair])
        english, target = cache.texts([pair])
        n = len(alone.words[0])
        assert read.words[b] == alone.words[0] == cache.words([pair])[0]
        assert (read.english[b], read.targets[b]) == (english[0], target[0])
        assert torch.equal(batch.word_states[b, :n], alone.word_states[0, :n])
        assert not batch.word_mask[b, n:].any() and bool(batch.word_mask[b, :n].all())
        assert torch.equal(batch.cls[b], alone.cls[0])
        assert not batch.word_states[b, n:].any()                  # padding is zeros


def test_a_cache_alone_trains_moved_without_its_corpus_or_in_memory(tmp_path, own_cache, tiny_student):
    cache, data = own_cache
    manifest = json.loads((cache / "en-es" / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and "path" not in manifest["corpus"]
    want = losses(train(cached_run(tmp_path, cache, tiny_student, "here"), progress=False))
    shutil.rmtree(data)                                             # the corpora are gone
    moved = tmp_path / "elsewhere" / "c"
    shutil.move(cache, moved)                                       # and the cache is somewhere else
    assert losses(train(cached_run(tmp_path, moved, tiny_student, "moved"), progress=False)) == want
    mem = fsspec.filesystem("memory")                               # and behind an fsspec URL
    for path in moved.rglob("*"):
        if path.is_file() and "verified" not in path.parts:
            with mem.open(f"/boundary-test/{path.relative_to(moved)}", "wb") as f:
                f.write(path.read_bytes())
    assert losses(train(cached_run(tmp_path, "memory://boundary-test", tiny_student, "memory"), progress=False)) == want


def test_the_cache_holds_the_pairs_text(own_cache):
    from mmkd.cache import TeacherCache
    from mmkd.corpus import open_corpus

    cache, data = own_cache
    reader, corpus = TeacherCache(str(cache / "en-es")), open_corpus("en-es", str(data))
    ids = [0, 49, 50, 119, 3]
    assert reader.texts(ids) == corpus.rows(ids)


def test_corpus_options_with_a_cache_are_refused(tmp_path, own_cache, tiny_student):
    cache, _ = own_cache
    with pytest.raises(SourceError, match="--corpus is for --online-teacher: a teacher cache holds the pairs' text"):
        train(dataclasses.replace(cached_run(tmp_path, cache, tiny_student, "r"), corpora=["en-es"]), progress=False)


def test_stage_two_imports_no_stage_one_code():
    """Training (the reader, the features, the loop) imports neither the writer, the teacher nor the
    corpus code: a fresh interpreter shows what `import mmkd.trainer` loads."""
    code = ("import sys, mmkd.cache, mmkd.cache.reader, mmkd.features, mmkd.trainer; "
            "print([m for m in ('mmkd.cache.writer', 'mmkd.teacher', 'mmkd.corpus', 'mmkd.corpus_sources', "
            "'mmkd.download') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_caches_of_different_teachers_are_refused(tmp_path, cache_root, other_teacher, tiny_student, data_dir):
    build_cache(CacheConfig(corpora=["en-de"], teacher=other_teacher, out=str(tmp_path / "c2"), data_dir=str(data_dir),
                            dtype="fp32"), progress=False)
    cfg = small_config(tmp_path, cache_root, tiny_student, data_dir, cache=[str(cache_root / "en-fr"), str(tmp_path / "c2")])
    with pytest.raises(SourceError, match="differ in teacher"):
        train(cfg, progress=False)
