"""`cache-teacher`, `cache verify` and `train` under failure: one writer per cache, shards complete
or redone, finite-or-nothing updates and checkpoints, verified reads, paths kept inside the cache,
resume by folder, and one clear line for every bad input."""

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

from mmkd.cache import CacheConfig, build_cache
from mmkd.objectives import HeadSettings
from mmkd.cache.verify import verify_cache
from mmkd.cli import main
from mmkd.errors import MMKDError
from mmkd.trainer import TrainConfig, TrainingError, train

from conftest import copy_cache

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _one_line_error(r, *fragments):
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
    for fragment in fragments:
        assert fragment in r.output, r.output


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "summary.json"}


def cfg(tmp_path, cache, student, data_dir, **kw) -> TrainConfig:
    base = dict(cache=[str(cache)], student=student, out=str(tmp_path / "run"), data_dir=str(data_dir), batch_size=8,
                max_steps=2, lr=1e-3, warmup_ratio=0.0, checkpoint_every=1, num_workers=0, log_with="none",
                heads=HeadSettings(hidden=32, out=16))
    base.update(kw)
    return TrainConfig(**base)


def _cache_cli(out: Path, teacher: str, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmkd", "cache-teacher", "--corpus", "en-fr", "--teacher", teacher, "--out", str(out),
            "--data-dir", str(data_dir), "--shard-size", "10", "--batch-size", "1", "--quiet", *extra]


# ------------------------------------------------------------------ one writer per cache
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, tiny_teacher, data_dir):
    first = subprocess.Popen(_cache_cli(tmp_path / "c", tiny_teacher, data_dir), env=ENV)
    lock = tmp_path / "c" / "en-fr" / "lock"
    deadline = time.time() + 120
    while not (lock.exists() and (tmp_path / "c" / "en-fr" / "shards" / "00001").exists()) and time.time() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the first writer finished too early"
    first.send_signal(signal.SIGSTOP)     # frozen mid-write: the second writer surely meets it at work
    try:
        second = subprocess.run(_cache_cli(tmp_path / "c", tiny_teacher, data_dir, "--resume"), env=ENV,
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
    _one_line_error(r, f"is being written by process {holder.pid}")
    holder.kill()
    holder.wait()
    assert json.loads((cache / "lock").read_text())["pid"] == holder.pid        # what it left behind
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert (cache / "lock").read_text() == "" and (cache / "manifest.json").is_file()


def test_a_killed_holders_forked_children_delay_the_lock_but_do_not_refuse_it(tmp_path):
    """kill -9 of a run leaves its data-loader workers (forked, so holding the inherited flock) alive
    for a few seconds: a resume started at once waits for them instead of naming a process that is gone;
    a holder that is alive is refused at once."""
    import fsspec

    from mmkd.errors import MMKDError
    from mmkd.lock import Lock

    folder = tmp_path / "run"
    folder.mkdir()
    code = ("import os, sys, time, fsspec; from mmkd.lock import Lock; "
            f"Lock(fsspec.filesystem('file'), {str(folder)!r}, 'run', 'test').acquire(); "
            "child = os.fork()\n"
            "if child == 0:\n    time.sleep(2); os._exit(0)\n"       # the worker: holds the lock 2 s more
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(MMKDError, match=f"is being written by process {holder.pid}"):
        Lock(fsspec.filesystem("file"), str(folder), "run", "test").acquire()      # alive: refused at once
    holder.kill()
    holder.wait()
    started = time.monotonic()
    lock = Lock(fsspec.filesystem("file"), str(folder), "run", "test")
    lock.acquire()                                              # waits for the orphaned child, then holds it
    assert lock.held and 0.5 < time.monotonic() - started < 15
    lock.release()


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
    _one_line_error(r, f"{key}={value}: must be at least 1")
    assert not (tmp_path / "c").exists()


def test_missing_teacher_and_a_file_as_out(tmp_path, tiny_teacher, data_dir):
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", str(tmp_path / "no-teacher"),
                                  "--out", str(tmp_path / "c"), "--data-dir", str(data_dir), "--quiet"])
    _one_line_error(r, f"'{tmp_path / 'no-teacher'}' does not exist")
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher,
                                  "--out", str(tmp_path / "file"), "--data-dir", str(data_dir), "--quiet"])
    _one_line_error(r, str(tmp_path / "file"))


# ------------------------------------------------------------------ verify stays inside the cache
@pytest.mark.parametrize("name", ["../../../../../../etc/passwd", "/dev/zero", "words/../../00001/cls/c/0/0"])
def test_verify_never_reads_outside_the_cache(tmp_path, clean_cache, name):
    cache = copy_cache(clean_cache, tmp_path) / "en-fr"
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"][0]["sha256"][name] = "0" * 64
    (cache / "manifest.json").write_text(json.dumps(manifest))
    (cache / "shards" / "00000" / "shard.json").write_text(json.dumps(manifest["shards"][0]))
    started = time.time()
    report = verify_cache(str(cache), k=0, progress=False)
    assert time.time() - started < 30                         # /dev/zero is never opened
    assert f"shards[0].sha256: file name {name!r} is not a path inside the shard" in " ".join(report.problems)


def test_verify_refuses_a_link_or_device_inside_a_shard(tmp_path, clean_cache):
    cache = copy_cache(clean_cache, tmp_path) / "en-fr"
    target = cache / "shards" / "00000" / "offsets" / "c" / "0"
    target.unlink()
    os.symlink("/dev/zero", target)
    report = verify_cache(str(cache), k=0, progress=False)
    assert any("offsets/c/0" in p and ("outside the shard" in p or "not a regular file" in p) for p in report.problems)


# ------------------------------------------------------------------ training verifies what it reads
@pytest.mark.parametrize("target", ["words/c/0/0", "cls/c/0/0", "offsets/c/0", "meta.arrow"])
def test_training_refuses_a_corrupt_shard_naming_it(tmp_path, clean_cache, tiny_student, data_dir, target):
    cache = copy_cache(clean_cache, tmp_path)
    path = cache / "en-fr" / "shards" / "00002" / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match=rf"shard 00002: file {target} does not match its checksum"):
        train(cfg(tmp_path, cache / "en-fr", tiny_student, data_dir), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_verification_is_remembered_and_redone_when_a_file_changes(tmp_path, clean_cache, tiny_student, data_dir,
                                                                   monkeypatch):
    from mmkd.cache import integrity

    cache = copy_cache(clean_cache, tmp_path) / "en-fr"
    hashed = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda fs, p: hashed.append(p) or real(fs, p))
    train(cfg(tmp_path, cache, tiny_student, data_dir, max_steps=1), progress=False)
    n_files = sum(len(s["sha256"]) for s in json.loads((cache / "manifest.json").read_text())["shards"])
    assert len(hashed) == n_files and len(list((cache / "verified").glob("*.json"))) == 5
    hashed.clear()
    train(cfg(tmp_path, cache, tiny_student, data_dir, max_steps=1, out=str(tmp_path / "run2")), progress=False)
    assert hashed == []                                        # remembered: nothing hashed again
    path = cache / "shards" / "00004" / "words" / "c" / "0" / "0"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match="shard 00004: file words/c/0/0 does not match"):
        train(cfg(tmp_path, cache, tiny_student, data_dir, max_steps=1, out=str(tmp_path / "run3")), progress=False)


def test_a_read_only_cache_keeps_its_markers_in_the_run(tmp_path, clean_cache, tiny_student, data_dir, monkeypatch):
    from mmkd.cache import integrity

    monkeypatch.setattr(integrity, "writable", lambda fs, root: False)
    cache = copy_cache(clean_cache, tmp_path) / "en-fr"
    run = train(cfg(tmp_path, cache, tiny_student, data_dir, max_steps=1), progress=False)
    assert len(list((run / "verified-cache" / "en-fr").glob("*.json"))) == 5 and not (cache / "verified").exists()


def test_a_truncated_arrow_file_is_one_line(tmp_path, clean_cache, tiny_student, data_dir):
    cache = copy_cache(clean_cache, tmp_path)
    meta = cache / "en-fr" / "shards" / "00000" / "meta.arrow"
    meta.write_bytes(meta.read_bytes()[:200])
    r = CliRunner().invoke(main, ["train", "--cache", str(cache), "--student", tiny_student, "--out",
                                  str(tmp_path / "r"), "--data-dir", str(data_dir), "--batch-size", "8", "--max-steps",
                                  "1", "--num-workers", "0", "--log-with", "none", "--no-verify", "--quiet"])
    _one_line_error(r, "meta.arrow: unreadable", "shard 00000 is corrupt")


# ------------------------------------------------------------------ finite or nothing
def test_a_huge_cache_value_stops_before_the_update_and_keeps_the_checkpoint(tmp_path, clean_cache, tiny_student,
                                                                             data_dir):
    """One dimension of the word vectors of step 3's pairs at 3e36: the XWCL loss stays finite, the
    gradient norm does not. Steps 1-2 train and checkpoint; step 3 must stop before its update."""
    from mmkd.cache import TeacherCache
    from mmkd.schedule import BalancedSchedule

    cache = copy_cache(clean_cache, tmp_path)
    reader = TeacherCache(str(cache / "en-fr"))
    step3 = [pair for _, _, pair in BalancedSchedule([len(reader)], 8, 0).batch(2)]
    earlier = {pair for step in (0, 1) for _, _, pair in BalancedSchedule([len(reader)], 8, 0).batch(step)}
    assert not set(step3) & earlier
    for pair in step3:
        k, local = divmod(pair, 64)
        offsets = reader.shard(k).offsets
        path = cache / "en-fr" / "shards" / f"{k:05d}" / "words" / "c" / "0" / "0"
        rows = np.frombuffer(path.read_bytes(), dtype="<f4").reshape(-1, 32).copy()
        rows[offsets[local]:offsets[local + 1], 5] = 3e36
        path.write_bytes(rows.tobytes())
    with pytest.raises(TrainingError) as e:
        train(cfg(tmp_path, cache / "en-fr", tiny_student, data_dir, max_steps=4, verify_cache=False), progress=False)
    message = str(e.value)
    assert message.startswith("step 3: the gradient norm is inf (non-finite on this or another process) although "
                              "the losses were finite"), message
    assert "Stopped before the update; the last checkpoint, step-0000002, is intact" in message
    assert str((0, step3[0])) in message
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (tmp_path / "run" / "student").exists()


def test_a_checkpoint_with_non_finite_tensors_is_never_written(tmp_path):
    from accelerate import Accelerator

    from mmkd.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    accelerator = Accelerator(cpu=True)
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {}, accelerator)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="step 2: 1 tensors are not finite \\(e.g. weight\\)"):
        save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {}, accelerator)
    assert latest_checkpoint(tmp_path).name == "step-0000001"
    assert not (tmp_path / "checkpoints" / "step-0000002").exists()


def test_a_truncated_checkpoint_is_one_line_naming_the_fix(tmp_path, clean_cache, tiny_student, data_dir):
    cache = copy_cache(clean_cache, tmp_path)
    train(cfg(tmp_path, cache, tiny_student, data_dir), progress=False)
    weights = tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    r = CliRunner().invoke(main, ["train", "--cache", str(cache), "--student", tiny_student, "--out",
                                  str(tmp_path / "run"), "--data-dir", str(data_dir), "--batch-size", "8", "--lr", "1e-3",
                                  "--warmup-ratio", "0", "--checkpoint-every", "1", "--max-steps", "2",
                                  "--num-workers", "0", "--log-with", "none", "--head-hidden", "32", "--head-out", "16",
                                  "--resume", "--quiet"])
    _one_line_error(r, "step-0000002 is damaged", "checkpoints/latest")


# ------------------------------------------------------------------ a run folder identifies itself
def test_resume_accepts_any_spelling_of_the_run_folder_and_a_moved_one(tmp_path, clean_cache, tiny_student,
                                                                       data_dir, monkeypatch):
    import dataclasses

    cache = copy_cache(clean_cache, tmp_path)
    monkeypatch.chdir(tmp_path)
    first = cfg(tmp_path, cache, tiny_student, data_dir, out="st1", max_steps=2)
    train(first, progress=False)
    for out in ("./st1/", "st1/", str(tmp_path / "st1")):
        train(dataclasses.replace(first, out=out), resume=True, progress=False)
    shutil.move(tmp_path / "st1", tmp_path / "moved")
    run = train(dataclasses.replace(first, out="moved"), resume=True, progress=False)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert json.loads((run / "config.json").read_text())["config"]["out"] == "moved"
    with pytest.raises(TrainingError, match="lr: run has 0.001, now 0.002"):    # other settings still refused
        train(dataclasses.replace(first, out="moved", lr=2e-3), resume=True, progress=False)


def test_impossible_training_counts(tmp_path, clean_cache, tiny_student, data_dir):
    for key in ("batch_size", "max_steps", "grad_accum"):
        r = CliRunner().invoke(main, ["train", "--cache", str(clean_cache), "--student", tiny_student, "--out",
                                      str(tmp_path / "r"), "--data-dir", str(data_dir), f"{key}=0", "--quiet"])
        _one_line_error(r, f"{key}=0: must be at least 1")


# ------------------------------------------------------------------ the student folder is atomic
def test_a_kill_during_the_final_save_leaves_no_student_folder(tmp_path, clean_cache, tiny_student, data_dir):
    """SIGKILL while the student is being written: `student/` never appears half-written."""
    cache = copy_cache(clean_cache, tmp_path)
    code = f"""
import os, signal, mmkd.student
def killed(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
mmkd.student.card_text = killed      # the card is written after the weights, inside student.tmp/
from mmkd.objectives import HeadSettings
from mmkd.trainer import TrainConfig, train
train(TrainConfig(cache=[{str(cache)!r}], student={tiny_student!r}, out={str(tmp_path / 'run')!r},
      data_dir={str(data_dir)!r}, batch_size=8, max_steps=1, num_workers=0, log_with="none", heads=HeadSettings(hidden=32,
      out=16)), progress=False)
"""
    r = subprocess.run([sys.executable, "-c", code], env=ENV)
    assert r.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "student.tmp" / "model.safetensors").is_file()   # it died mid-save
    assert not (tmp_path / "run" / "student").exists()


# ------------------------------------------------------------------ power loss: fsync before every publication
class FsyncAudit:
    """Stands in for os.fsync and os.replace: every rename that publishes (its source is a `*.tmp*`
    or `*.part` file or folder) must come after an fsync of each file under its source, and be
    followed by an fsync of the folder it renamed into."""

    def __init__(self, monkeypatch):
        self.synced: list[str] = []
        self.renames: list[tuple[int, str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.synced.append(os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst, **kw):
            src, dst = os.path.realpath(src), os.path.realpath(dst)
            name = os.path.basename(src)
            if ".tmp" in name or name.endswith(".part"):
                files = [os.path.join(t, f) for t, _, fs in os.walk(src) for f in fs] if os.path.isdir(src) else [src]
                unsynced = [f for f in files if f not in self.synced]
                assert not unsynced, f"{src} renamed to {dst} before its files were fsynced: {unsynced[:3]}"
                self.renames.append((len(self.synced), src, dst))
            return real_replace(src, dst, **kw)

        def rename(src, dst, **kw):
            raise AssertionError(f"os.rename({src}, {dst}): mmkd publishes with mmkd.atomic.publish only")
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)

    def check(self, *must: str) -> None:
        for at, src, dst in self.renames:
            assert os.path.dirname(dst) in self.synced[at:], f"{dst}: its folder was not fsynced after the rename"
        published = [os.path.basename(dst) for _, _, dst in self.renames]
        for name in must:
            assert name in published, (name, published)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads fsync'd paths from /proc")
def test_every_publishing_rename_is_fsynced_before_and_its_folder_after(tmp_path, shared, tiny_teacher, tiny_student,
                                                                         monkeypatch):
    import mmkd.eval.runner as runner
    from mmkd.corpus import CorpusConfig, prepare_corpus

    audit = FsyncAudit(monkeypatch)
    data = tmp_path / "data"
    prepare_corpus(CorpusConfig(pair="en-fr", data_dir=str(data), max_pairs=120, min_tokens=3,
                                tsv=str(shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv")), progress=False)
    build_cache(CacheConfig(corpora=["en-fr"], teacher=tiny_teacher, out=str(tmp_path / "cache"), data_dir=str(data),
                            shard_size=64), progress=False)
    run = train(cfg(tmp_path, tmp_path / "cache" / "en-fr", tiny_student, data), progress=False)
    import mmkd.supply as supply

    def build(files, dest, bar):
        (dest / "model.safetensors").write_bytes(b"weights")
        return {}
    monkeypatch.setattr(supply, "_supplies", lambda: {"fake": supply.Supply("fake", "org/fake", "MIT", (), build, 1, "")})
    monkeypatch.setenv("MMKD_MODELS_DIR", str(tmp_path / "models"))
    supply.model_folder("fake", progress=False)
    monkeypatch.setattr(runner, "markdown_table", lambda result: "| table |")
    runner.write_result({"task": "retrieval", "model": str(run / "student"), "sets": {"en-fr": {"cls": 1.0, "mean": 2.0}},
                         "average": {"cls": 1.0, "mean": 2.0}},
                        tmp_path / "eval")
    audit.check("en-fr", "00000", "00001", "build.json", "manifest.json", "summary.json", "step-0000001",
                "step-0000002", "latest", "config.json", "student", "heads.safetensors", "results.json",
                "eval_summary.json", "README.md", "fake", ".mmkd-verified.json")
    assert (run / "student" / "config.json").is_file()


# ------------------------------------------------------------------ round three: damage the audit found
def test_a_non_finite_cache_value_is_refused_even_where_no_objective_reads_it(tmp_path, clean_cache, tiny_student,
                                                                              data_dir):
    """NaN in step 1's word vectors with the checksums re-recorded over it (verification passes); XWCL,
    the only reader of word vectors, removed: still refused, naming the shard and the pair."""
    from mmkd.cache import TeacherCache
    from mmkd.cache.format import dumps, sha256_file
    from mmkd.schedule import BalancedSchedule
    import fsspec

    cache = copy_cache(clean_cache, tmp_path)
    reader = TeacherCache(str(cache / "en-fr"))
    first = [pair for _, _, pair in BalancedSchedule([len(reader)], 8, 0).batch(0)][0]
    k, local = divmod(first, 64)
    base = cache / "en-fr" / "shards" / f"{k:05d}"
    chunk = base / "words" / "c" / "0" / "0"
    rows = np.frombuffer(chunk.read_bytes(), dtype="<f4").reshape(-1, 32).copy()
    rows[reader.shard(k).offsets[local], 3] = np.nan
    chunk.write_bytes(rows.tobytes())
    manifest = json.loads((cache / "en-fr" / "manifest.json").read_text())
    manifest["shards"][k]["sha256"]["words/c/0/0"] = sha256_file(fsspec.filesystem("file"), str(chunk))
    (cache / "en-fr" / "manifest.json").write_text(dumps(manifest))
    (base / "shard.json").write_text(dumps(manifest["shards"][k]))
    with pytest.raises(MMKDError) as e:
        train(cfg(tmp_path, cache / "en-fr", tiny_student, data_dir, without=["xwcl"]), progress=False)
    assert f"shard {k:05d}: a non-finite value (nan) in words (pair {first})" in str(e.value), e.value
    assert not (tmp_path / "run" / "student").exists()


def test_a_damaged_shard_json_is_refused_by_train(tmp_path, clean_cache, tiny_student, data_dir):
    cache = copy_cache(clean_cache, tmp_path)
    record = cache / "en-fr" / "shards" / "00001" / "shard.json"
    record.write_text(record.read_text().replace('"n_words"', '"n_wurds"'))
    r = CliRunner().invoke(main, ["train", "--cache", str(cache / "en-fr"), "--student", tiny_student, "--out",
                                  str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "8", "--head-hidden",
                                  "32", "--head-out", "16", "--num-workers", "0", "--log-with", "none", "--quiet"])
    _one_line_error(r, "shard 00001: file shard.json is damaged or differs from the manifest's record")


def test_a_run_moved_without_its_config_or_metrics_or_with_only_its_checkpoints_resumes(tmp_path, clean_cache,
                                                                                        tiny_student, data_dir,
                                                                                        monkeypatch):
    cache = copy_cache(clean_cache, tmp_path)
    monkeypatch.chdir(tmp_path)
    base = ["--student", tiny_student, "--data-dir", str(data_dir), "--quiet"]
    first = ["train", "--cache", "cache/en-fr", "--out", "run", "--max-steps", "4", "--checkpoint-every", "2",
             "--batch-size", "8", "--head-hidden", "32", "--head-out", "16", "--num-workers", "0", "--log-with",
             "none", *base]
    assert CliRunner().invoke(main, first).exit_code == 0
    shutil.rmtree(tmp_path / "run" / "student")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-0000002\n")
    for name, keep in (("no-config", lambda p: (p / "config.json").unlink()),
                       ("no-metrics", lambda p: (p / "metrics.csv").unlink()),
                       ("only-checkpoints", None)):
        dest = tmp_path / "moved" / name
        if keep is None:
            dest.mkdir(parents=True)
            shutil.copytree(tmp_path / "run" / "checkpoints", dest / "checkpoints")
        else:
            shutil.copytree(tmp_path / "run", dest)
            keep(dest)
        r = CliRunner().invoke(main, ["train", "--out", str(dest), "--resume", "--quiet"])
        assert r.exit_code == 0, (name, r.output)
        assert (dest / "checkpoints" / "latest").read_text().strip() == "step-0000004"
        if name != "no-config":
            assert "the rows of steps 1-2 are lost" in r.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(tmp_path / "run", elsewhere / "run")
    monkeypatch.chdir(elsewhere)          # the run recorded cache/en-fr, relative to tmp_path
    r = CliRunner().invoke(main, ["train", "--out", "run", "--resume", "--quiet"])
    _one_line_error(r, "records the cache 'cache/en-fr', which is not there", "give it again with --cache")
    r = CliRunner().invoke(main, ["train", "--out", "run", "--resume", "--cache", str(cache / "en-fr"), "--quiet"])
    assert r.exit_code == 0, r.output
