"""The teacher cache: fidelity, crash safety, corruption detection, refusals, and reading it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModel, AutoTokenizer

from mmkd.cache import CacheConfig, TeacherCache, build_cache
from mmkd.cache.verify import verify_cache
from mmkd.cli import main
from mmkd.corpus import open_corpus
from mmkd.errors import CacheError
from mmkd.teacher import load_teacher
from mmkd.words import split_words


def build(tmp_path: Path, teacher: str, data_dir: Path, corpora=("en-fr",), resume=False, **kw) -> Path:
    cfg = CacheConfig(corpora=list(corpora), teacher=teacher, out=str(tmp_path / kw.pop("name", "cache")),
                      data_dir=str(data_dir), **{"shard_size": 64, "batch_size": 16, **kw})
    build_cache(cfg, progress=False, resume=resume)
    return Path(cfg.out)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a cache, except the run's timings."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "summary.json"}


def naive_teacher_states(teacher: str, words: list[str]):
    """Independent reference: one sentence alone, first sub-token found by a plain loop."""
    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModel.from_pretrained(teacher).eval()
    enc = tok(words, is_split_into_words=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    first = {}
    for t, w in enumerate(enc.word_ids(0)):
        if w is not None and w not in first:
            first[w] = t
    rows = [hidden[first[i]] for i in sorted(first)]
    return torch.stack(rows).numpy(), hidden[0].numpy()


@pytest.fixture(scope="module")
def fp32_cache(tmp_path_factory, tiny_teacher, data_dir):
    return build(tmp_path_factory.mktemp("fp32"), tiny_teacher, data_dir, dtype="fp32", batch_size=1) / "en-fr"


def test_fp32_cache_equals_a_fresh_teacher_forward_exactly(fp32_cache, tiny_teacher, data_dir):
    cache = TeacherCache(str(fp32_cache))
    corpus = open_corpus("en-fr", str(data_dir))
    ids = np.array([0, 5, 63, 64, 150, len(corpus) - 1])
    batch = cache.get(ids)
    english, _ = corpus.rows(ids)
    for j, sentence in enumerate(english):
        words = split_words(sentence)
        ref_words, ref_cls = naive_teacher_states(tiny_teacher, words)
        n = int(batch.word_mask[j].sum())
        assert batch.words[j] == words[:n]
        assert n == len(ref_words)
        assert np.array_equal(batch.word_states[j, :n].numpy(), ref_words)
        assert np.array_equal(batch.cls[j].numpy(), ref_cls)
        assert not batch.word_states[j, n:].any()


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


def test_reduced_precision_stays_within_tolerance(tmp_path, fp32_cache, tiny_teacher, data_dir):
    ref = TeacherCache(str(fp32_cache)).get(np.arange(200))
    mask = ref.word_mask
    limits = {"fp16": 1e-3, "bf16": 8e-3, "int8": 2e-2}   # max relative L2 error per vector
    for dtype, limit in limits.items():
        got = TeacherCache(str(build(tmp_path, tiny_teacher, data_dir, dtype=dtype, batch_size=1,
                                     name=dtype) / "en-fr")).get(np.arange(200))
        assert torch.equal(got.word_mask, mask)
        a, b = got.word_states[mask], ref.word_states[mask]
        rel = ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()
        cls_rel = ((got.cls - ref.cls).norm(dim=-1) / ref.cls.norm(dim=-1)).max().item()
        assert rel < limit and cls_rel < limit, (dtype, rel, cls_rel)
        assert rel > 0  # it really is a lossy format


def test_int8_is_absmax_per_vector():
    from mmkd.cache.format import decode, encode

    x = np.array([[0.5, -2.0, 1.0], [0.0, 0.0, 0.0], [3.0, 1.5, -0.75]], dtype=np.float32)
    q, scale = encode(x, "int8")
    assert scale.tolist() == pytest.approx([2.0 / 127, 0.0, 3.0 / 127])
    assert q.tolist() == [[32, -127, 64], [0, 0, 0], [127, 64, -32]]   # round(0.5*127/2)=32 ...
    assert np.abs(decode(q, scale, "int8") - x).max() <= (3.0 / 127) / 2 + 1e-7


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


def test_long_sentences_keep_only_the_words_the_teacher_saw(tmp_path, tiny_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir, max_length=12, dtype="fp32") / "en-fr"
    cache = TeacherCache(str(out))
    assert cache.manifest.raw["n_truncated"] > 250
    corpus = open_corpus("en-fr", str(data_dir))
    batch = cache.get([0])
    words = split_words(corpus.rows([0])[0][0])
    n = int(batch.word_mask[0].sum())
    assert 0 < n < len(words) and batch.words[0] == words[:n]
    shard = cache.shard(0)
    assert shard.meta.column("truncated")[0].as_py() is True
    assert shard.meta.column("n_words_split")[0].as_py() == len(words)


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


def test_several_corpora_get_one_cache_each(tmp_path, tiny_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir, corpora=("en-fr", "en-de"))
    for name in ("en-fr", "en-de"):
        m = json.loads((out / name / "manifest.json").read_text())
        assert m["corpus"]["name"] == name and m["n_sentences"] == 300


# ------------------------------------------------------------------ crash safety
def _cli_cache(out: Path, teacher: str, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmkd", "cache-teacher", "--corpus", "en-fr", "--teacher", teacher,
            "--out", str(out), "--data-dir", str(data_dir), "--shard-size", "10", "--batch-size", "1",
            "--dtype", "fp16", "--quiet", *extra]


def test_kill_9_then_resume_is_byte_identical(tmp_path, tiny_teacher, data_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_cli_cache(ref, tiny_teacher, data_dir), check=True, env=env)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli_cache(killed, tiny_teacher, data_dir), env=env)
    shards = killed / "en-fr" / "shards"
    deadline = time.time() + 120
    while not (shards / "00003").exists() and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "en-fr" / "manifest.json").exists()
    complete = [p.name for p in shards.iterdir() if not p.name.endswith(".tmp")]
    assert 3 < len(complete) < 30
    with pytest.raises(CacheError, match="missing cache manifest"):
        TeacherCache(str(killed / "en-fr"))
    # Without --resume the half-made cache is not silently overwritten.
    r = subprocess.run(_cli_cache(killed, tiny_teacher, data_dir), env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    subprocess.run(_cli_cache(killed, tiny_teacher, data_dir, "--resume"), check=True, env=env)
    assert snapshot(killed) == snapshot(ref)


def test_resume_redoes_a_partial_shard(tmp_path, tiny_teacher, data_dir):
    ref = build(tmp_path, tiny_teacher, data_dir, name="ref")
    broken = build(tmp_path, tiny_teacher, data_dir, name="broken")
    shards = broken / "en-fr" / "shards"
    shutil.rmtree(shards / "00002")
    (shards / "00002.tmp" / "words").mkdir(parents=True)
    (shards / "00002.tmp" / "words" / "zarr.json").write_text("{half written")
    (broken / "en-fr" / "manifest.json").unlink()
    build(tmp_path, tiny_teacher, data_dir, name="broken", resume=True)
    assert not (shards / "00002.tmp").exists()
    assert snapshot(broken) == snapshot(ref)


def test_two_processes_write_the_same_cache_as_one(tmp_path, tiny_teacher, data_dir):
    """`accelerate launch` with 2 CPU processes: each owns whole shards, rank 0 writes the manifest."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    subprocess.run(_cli_cache(one, tiny_teacher, data_dir), check=True, env=env)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "mmkd", *_cli_cache(two, tiny_teacher, data_dir)[3:]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert snapshot(two) == snapshot(one)
    assert json.loads((two / "en-fr" / "summary.json").read_text())["processes"] == 2


# ------------------------------------------------------------------ corruption and refusals
def test_flipped_byte_is_caught_by_verify_naming_the_shard(tmp_path, tiny_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir) / "en-fr"
    assert verify_cache(str(out), k=4, progress=False).ok
    target = out / "shards" / "00003" / "words" / "c" / "0" / "0"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    report = verify_cache(str(out), k=4, progress=False)
    assert report.problems == ["shard 00003: file words/c/0/0 checksum mismatch (corrupted)"]
    r = CliRunner().invoke(main, ["cache", "verify", str(out)])
    assert r.exit_code == 1 and "shard 00003" in r.output


def test_wrong_stored_values_are_caught_by_the_teacher_rerun(tmp_path, tiny_teacher, data_dir):
    """Checksums can be recomputed by whoever changed the data; the re-run cannot be fooled."""
    out = build(tmp_path, tiny_teacher, data_dir, dtype="fp32") / "en-fr"
    import zarr
    arr = zarr.open_array(str(out / "shards" / "00000" / "cls"), mode="r+")
    arr[:] = arr[:] * 1.5
    report = verify_cache(str(out), k=0, progress=False)
    assert not report.ok  # checksums catch it first
    # Re-record checksums as a careless tool would, then only the teacher re-run finds it.
    from mmkd.cache.format import dumps, sha256_file
    import fsspec
    fs = fsspec.filesystem("file")
    manifest = json.loads((out / "manifest.json").read_text())
    rec = manifest["shards"][0]
    rec["sha256"]["cls/c/0/0"] = sha256_file(fs, str(out / "shards/00000/cls/c/0/0"))
    (out / "shards/00000/shard.json").write_text(dumps(rec))
    (out / "manifest.json").write_text(dumps(manifest))
    report = verify_cache(str(out), k=300, progress=False)
    assert report.problems and all(p.startswith("shard 00000 sentence pair_id=") for p in report.problems)
    assert len(report.problems) == 64


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
