"""`cache-teacher` (mmkd/cache/writer.py): the cache holds the teacher's own numbers at each dtype, a
crashed or killed build resumes to the same bytes, one writer at a time, every bad input one line."""

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
from mmkd.words import split_words

from helpers import ENV, build, copy_cache, fresh, one_line, one_line_error


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


def _cli_cache(out: Path, teacher: str, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmkd", "cache-teacher", "--corpus", "en-fr", "--teacher", teacher,
            "--out", str(out), "--data-dir", str(data_dir), "--shard-size", "10", "--batch-size", "1",
            "--dtype", "fp16", "--quiet", *extra]


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


def test_several_corpora_get_one_cache_each(tmp_path, tiny_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir, corpora=("en-fr", "en-de"))
    for name in ("en-fr", "en-de"):
        m = json.loads((out / name / "manifest.json").read_text())
        assert m["corpus"]["name"] == name and m["n_sentences"] == 300


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


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, tiny_teacher, data_dir):
    first = subprocess.Popen(_cli_cache(tmp_path / "c", tiny_teacher, data_dir), env=ENV)
    lock = tmp_path / "c" / "en-fr" / "lock"
    deadline = time.time() + 120
    while not (lock.exists() and (tmp_path / "c" / "en-fr" / "shards" / "00001").exists()) and time.time() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the first writer finished too early"
    first.send_signal(signal.SIGSTOP)     # frozen mid-write: the second writer surely meets it at work
    try:
        second = subprocess.run(_cli_cache(tmp_path / "c", tiny_teacher, data_dir, "--resume"), env=ENV,
                                capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert f"is being written by process {first.pid} on" in second.stderr and "wait for it" in second.stderr
    assert first.wait() == 0
    assert lock.read_text() == ""               # released: it names no holder any more
    assert verify_cache(str(tmp_path / "c" / "en-fr"), k=2, progress=False).ok


def test_a_lock_held_by_a_killed_writer_is_free_at_once(tmp_path, clean_cache, tiny_teacher, data_dir):
    """The lock is the kernel's (flock): a writer killed with -9 holds nothing, whatever its lock file says."""
    cache = copy_cache(clean_cache, tmp_path) / "en-fr"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, fsspec; from mmkd.lock import Lock; "
                               f"Lock(fsspec.filesystem('file'), {str(cache)!r}, 'c', 'test').acquire(); "
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    (cache / "manifest.json").unlink()
    args = ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--dtype", "fp32", "--shard-size", "64",
            "--batch-size", "16", "--out", str(cache.parent), "--data-dir", str(data_dir), "--resume", "--quiet"]
    r = CliRunner().invoke(main, args)
    one_line_error(r, f"is being written by process {holder.pid}")
    holder.kill()
    holder.wait()
    assert json.loads((cache / "lock").read_text())["pid"] == holder.pid        # what it left behind
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert (cache / "lock").read_text() == "" and (cache / "manifest.json").is_file()


def test_resume_redoes_every_shard_that_is_not_exactly_complete(tmp_path, clean_cache, tiny_teacher, data_dir):
    cache = copy_cache(clean_cache, tmp_path)
    shards = cache / "en-fr" / "shards"
    (shards / "00001" / "00001.tmp" / "words").mkdir(parents=True)          # a second writer's leftovers
    (shards / "00002" / "words" / "c" / "0" / "0").unlink()                  # a file missing, record present
    target = shards / "00003" / "cls" / "c" / "0" / "0"                      # a flipped bit
    data = bytearray(target.read_bytes())
    data[7] ^= 0x10
    target.write_bytes(bytes(data))
    (cache / "en-fr" / "manifest.json").unlink()
    build_cache(CacheConfig(corpora=["en-fr"], teacher=tiny_teacher, out=str(cache), data_dir=str(data_dir),
                            dtype="fp32", shard_size=64, batch_size=16), resume=True, progress=False)
    assert snapshot(cache) == snapshot(clean_cache)


@pytest.mark.parametrize("key,value", [("shard_size", "0"), ("shard_size", "-5"), ("batch_size", "0")])
def test_impossible_cache_sizes(tmp_path, tiny_teacher, data_dir, key, value):
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out",
                                  str(tmp_path / "c"), "--data-dir", str(data_dir), f"{key}={value}", "--quiet"])
    one_line_error(r, f"{key}={value}: must be at least 1")
    assert not (tmp_path / "c").exists()


def test_missing_teacher_and_a_file_as_out(tmp_path, tiny_teacher, data_dir):
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", str(tmp_path / "no-teacher"),
                                  "--out", str(tmp_path / "c"), "--data-dir", str(data_dir), "--quiet"])
    one_line_error(r, f"'{tmp_path / 'no-teacher'}' does not exist")
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher,
                                  "--out", str(tmp_path / "file"), "--data-dir", str(data_dir), "--quiet"])
    one_line_error(r, str(tmp_path / "file"))


def test_cache_teacher_overwrite_never_deletes_files_placed_inside_its_folders(tmp_path, cache, tiny_teacher,
                                                                               data_dir):
    for inside in ("shards/mine.txt", "shards/00000/mine.txt", "verified/mine.txt"):
        own = fresh(cache, tmp_path / inside.replace("/", "_"))
        path = own / "en-fr" / inside
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
        r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out", str(own),
                                      "--data-dir", str(data_dir), "--overwrite", "--quiet", "--dtype", "fp32",
                                      "--shard-size", "64"])
        one_line(r, "holds files mmkd did not write", inside)
        assert path.read_text() == "mine" and (own / "en-fr" / "manifest.json").is_file()


def test_a_corpus_name_is_never_a_path(tmp_path, cache, tiny_teacher, data_dir):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    corpus = tmp_path / "data" / "corpora" / "evil"
    shutil.copytree(data_dir / "corpora" / "en-fr", corpus)
    meta = json.loads((corpus / "meta.json").read_text())
    meta["name"] = "../victim"
    (corpus / "meta.json").write_text(json.dumps(meta))
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", str(corpus), "--teacher", tiny_teacher,
                                  "--out", str(tmp_path / "outc"), "--overwrite", "--quiet"])
    one_line(r, "name", "one folder name")
    assert sorted(os.listdir(victim)) == ["keep.txt"] and not (tmp_path / "outc").exists()


@pytest.mark.parametrize("layer,shown", [("9", "layer=9: the teacher has 2 layers"),
                                         ("-9", "layer=-9: the teacher has 2 layers"),
                                         ("99", "layer=99: must be at most 64")])
def test_cache_teacher_layer_out_of_range(tmp_path, tiny_teacher, data_dir, layer, shown):
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out",
                                  str(tmp_path / "c"), "--data-dir", str(data_dir), f"layer={layer}", "--quiet"])
    one_line(r, shown)


@pytest.mark.parametrize("damage", ["truncated_pairs", "garbage_meta"])
def test_cache_teacher_on_a_damaged_corpus(tmp_path, tiny_teacher, data_dir, damage):
    corpus = tmp_path / "corpora" / "en-fr"
    shutil.copytree(data_dir / "corpora" / "en-fr", corpus)
    if damage == "truncated_pairs":
        os.truncate(corpus / "pairs.arrow", 300)
    else:
        (corpus / "meta.json").write_text("{garbage")
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", str(corpus), "--teacher", tiny_teacher, "--out",
                                  str(tmp_path / "c"), "--quiet"])
    one_line(r, "pairs.arrow" if damage == "truncated_pairs" else "meta.json")


def test_cache_teacher_overwrite_never_replaces_a_users_build_json(tmp_path, tiny_teacher, data_dir):
    out = tmp_path / "caches"
    (out / "en-fr").mkdir(parents=True)
    (out / "en-fr" / "build.json").write_text('{"my": "build settings"}')
    for extra in ((), ("--overwrite",), ("--resume",)):
        r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out",
                                      str(out), "--data-dir", str(data_dir), "--quiet", *extra])
        one_line(r, "is not an mmkd cache")
    assert os.listdir(out / "en-fr") == ["build.json"]
    assert (out / "en-fr" / "build.json").read_text() == '{"my": "build settings"}'
