"""Stage two's lifecycle (mmkd/trainer.py): the same numbers cached or online, on one or two processes,
after a kill -9 and resume; guards before any work."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mmkd import objectives as objs
from mmkd.cache import CacheConfig, build_cache
from mmkd.cli import main
from mmkd.trainer import TrainingError, train

from helpers import (
    copy_cache, losses_of_step, metrics, one_line, one_line_error, short_run, small_config, tiny_model,
    train_args)


def _cli_train(out: Path, cache_root: Path, student: str, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmkd", "train", "--cache", str(cache_root), "--student", student,
            "--out", str(out), "--data-dir", str(data_dir), "--batch-size", "8", "--lr", "1e-3",
            "--head-hidden", "32", "--head-out", "16", "--log-with", "none", "--quiet", *extra]


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
        train(short_run(tmp_path, cache / "en-fr", tiny_student, data_dir, max_steps=4, verify_cache=False), progress=False)
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


def test_impossible_training_counts(tmp_path, clean_cache, tiny_student, data_dir):
    for key in ("batch_size", "max_steps", "grad_accum"):
        r = CliRunner().invoke(main, ["train", "--cache", str(clean_cache), "--student", tiny_student, "--out",
                                      str(tmp_path / "r"), "--data-dir", str(data_dir), f"{key}=0", "--quiet"])
        one_line_error(r, f"{key}=0: must be at least 1")


def test_a_seed_beyond_numpy_and_torch_is_one_line(tmp_path, cache, tiny_student, data_dir):
    r = CliRunner().invoke(main, train_args(cache, tiny_student, tmp_path / "r", data_dir, "--seed", str(2**64 + 1)))
    one_line(r, f"seed={2**64 + 1}: must be at most 4294967295")
    assert not (tmp_path / "r").exists()


def test_a_batch_or_length_no_machine_or_model_takes_is_one_line_before_any_work(tmp_path, cache, tiny_student,
                                                                                  data_dir, tiny_teacher):
    out = tmp_path / "r"
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, out, data_dir, f"batch_size={10**20}")),
             "batch_size=100000000000000000000: one micro-batch", "lower batch_size")
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, out, data_dir, f"max_length={10**8}")),
             "max_length=100000000: the student", "takes at most 160 tokens")
    assert not out.exists()
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out",
                                  str(tmp_path / "c"), "--data-dir", str(data_dir), "max_length=100000", "--quiet"])
    one_line(r, "max_length=100000: the teacher")
    assert not (tmp_path / "c").exists()


def test_cached_and_online_teacher_give_the_same_losses(tmp_path, cache_root, tiny_student, tiny_teacher, data_dir):
    cached = small_config(tmp_path, cache_root, tiny_student, data_dir, batch_size=16)
    online = dataclasses.replace(cached, cache=[], online_teacher=tiny_teacher, corpora=["en-fr", "en-de"])
    torch.manual_seed(0)
    model = tiny_model(tiny_student).eval()
    a = losses_of_step(cached, model)
    b = losses_of_step(online, model)
    assert set(a) == set(objs.names())
    for o in objs.names():
        assert a[o] == pytest.approx(b[o], rel=1e-5, abs=1e-6), o
    assert a["xwcl"] > 0 and a["tlm"] > 0


def test_tiny_model_overfits_a_tiny_batch(tmp_path, tiny_student, tiny_teacher, shared):
    """8 pairs, batch 8, every step sees the same pairs: the loss must fall far."""
    from mmkd.corpus import CorpusConfig, prepare_corpus

    d = tmp_path / "data"
    prepare_corpus(CorpusConfig(pair="en-fr", data_dir=str(d), max_pairs=8,
                                tsv=str(shared / "parallel/tatoeba_challenge/eng-fra.tsv")), progress=False)
    build_cache(CacheConfig(corpora=["en-fr"], teacher=tiny_teacher, out=str(tmp_path / "c"), data_dir=str(d),
                            dtype="fp32"), progress=False)
    cfg = small_config(tmp_path, tmp_path / "c", tiny_student, d, max_steps=80, lr=3e-3, teacher_heads="train")
    rows = metrics(train(cfg, progress=False))
    first, last = rows[0], rows[-1]
    # TLM draws fresh masks every step (ln 6000 = 8.7 at the start), so it falls slowest.
    for term, factor in (("loss", 0.7), ("xwcl", 0.4), ("senta", 0.1), ("tlm", 0.7)):
        assert float(last[term]) < factor * float(first[term]), (term, first[term], last[term])
    # `mmkd plot metrics`: the run's 80 rows in one picture, four panels (losses, lr, grad norm, collapse).
    import matplotlib.image
    from click.testing import CliRunner

    from mmkd.cli import main
    r = CliRunner().invoke(main, ["plot", "metrics", cfg.out])
    assert r.exit_code == 0 and r.output.strip() == f"wrote {cfg.out}/metrics.png", r.output
    png = Path(cfg.out) / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert matplotlib.image.imread(png).shape[:2] == (4 * 280, 900)
    r = CliRunner().invoke(main, ["plot", "metrics", str(tmp_path)])
    assert r.exit_code == 2 and "no metrics.csv here" in r.output and r.output.count("\n") == 1


def test_log_with_takes_every_tracker_accelerate_knows_and_refuses_one_not_installed(tmp_path, cache_root,
                                                                                    tiny_student, data_dir):
    from accelerate.utils import LoggerType

    from mmkd.trackers import TRACKERS, installed
    assert set(TRACKERS) == {t.value for t in LoggerType} - {"all"}
    absent = next(t for t in TRACKERS if not installed(t))
    for value, message in ((absent, f"log_with={absent}: {absent} is not installed"),
                           ("tensorboard,nope", "log_with='tensorboard,nope': 'nope' is not one of auto, none, all")):
        r = subprocess.run(_cli_train(tmp_path / "r", cache_root, tiny_student, data_dir, "max_steps=1",
                                      f"log_with={value}"), capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
        assert not (tmp_path / "r").exists()


def test_resume_after_kill_9_gives_the_same_loss_curve(tmp_path, cache_root, tiny_student, data_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ("--max-steps", "30", "--checkpoint-every", "5", "--num-workers", "2")
    ref = tmp_path / "ref"
    subprocess.run(_cli_train(ref, cache_root, tiny_student, data_dir, *args), check=True, env=env)
    run = tmp_path / "killed"
    tracked = ("--log-with", "tensorboard", "--run-name", "kill-test")     # the killed run is tracked
    proc = subprocess.Popen(_cli_train(run, cache_root, tiny_student, data_dir, *args, *tracked), env=env)
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() == "step-0000010"):
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = metrics(run)
    assert 10 <= len(rows) < 30
    r = subprocess.run(_cli_train(run, cache_root, tiny_student, data_dir, *args), env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    # (the run name is not given again: tracker.json has it)
    subprocess.run(_cli_train(run, cache_root, tiny_student, data_dir, *args, "--resume", "--log-with", "tensorboard"),
                   check=True, env=env)
    got, want = metrics(run), metrics(ref)
    # The tracker run continues: TensorBoard's events of both processes are in one run folder, every
    # step is there, and each step's last value is metrics.csv's.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = json.loads((run / "tracker.json").read_text())
    assert record["run_name"] == "kill-test" and record["trackers"] == ["tensorboard"]
    assert len(list((run / "mmkd").glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(run / "mmkd"))
    events.Reload()
    last = {e.step: e.value for e in events.Scalars("loss")}
    assert sorted(last) == list(range(1, 31))
    for row in got:
        assert last[int(row["step"])] == pytest.approx(float(row["loss"]), rel=1e-6)
    assert [row["step"] for row in got] == [str(i) for i in range(1, 31)]
    for a, b in zip(got, want):
        for key in ("loss", "tlm", "xwcl", "senta", "struca", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6, abs=1e-9), (a["step"], key)
    from safetensors.torch import load_file
    w_got, w_ref = load_file(str(run / "student" / "model.safetensors")), load_file(str(ref / "student" / "model.safetensors"))
    assert w_got.keys() == w_ref.keys()
    assert all(torch.allclose(w_got[k], w_ref[k], atol=1e-6) for k in w_ref)
    assert len(list((run / "checkpoints").glob("step-*"))) == 3          # keep the last 3


def test_two_processes_match_one_process(tmp_path, cache_root, student_nodrop, data_dir):
    """Same global batch (16): 1 process; 1 process with 2 accumulation steps; 2 gloo processes.
    Frozen teacher heads: eq. (6) alone (the teacher heads' own loss over 2 processes is the next test)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ("--max-steps", "6", "--num-workers", "0", "--batch-size", "16", "--max-grad-norm", "0",
            "--teacher-heads", "frozen")
    one = tmp_path / "one"
    subprocess.run(_cli_train(one, cache_root, student_nodrop, data_dir, *args), check=True, env=env)
    accum = tmp_path / "accum"
    subprocess.run(_cli_train(accum, cache_root, student_nodrop, data_dir, *args, "--grad-accum", "2"),
                   check=True, env=env)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmkd",
           *_cli_train(two, cache_root, student_nodrop, data_dir, *args)[3:]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    assert json.loads((two / "config.json").read_text())["processes"] == 2
    # The same 2 processes with pairs given to them by position instead of by length (the default).
    stride = tmp_path / "stride"
    cmd_stride = [*cmd[:cmd.index("--out") + 1], str(stride), *cmd[cmd.index("--out") + 2:], "--assign", "stride"]
    r = subprocess.run(cmd_stride, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = metrics(one)
    for other in (accum, two, stride):
        for a, b in zip(metrics(other), ref):
            for key in ("loss", "tlm", "xwcl", "senta"):
                # Tolerance: different padding widths change float summation order (~1e-6 relative).
                assert float(a[key]) == pytest.approx(float(b[key]), rel=2e-4), (other.name, a["step"], key)
    from safetensors.torch import load_file
    w_one = load_file(str(one / "student" / "model.safetensors"))
    for other in (accum, two, stride):
        w = load_file(str(other / "student" / "model.safetensors"))
        worst = max((w[k] - w_one[k]).abs().max().item() for k in w_one)
        assert worst < 1e-4, (other.name, worst)


def test_two_processes_match_one_process_with_teacher_heads_trained(tmp_path, cache_root, student_nodrop, data_dir):
    """The teacher heads' own loss spans the gathered micro-batch: 2 processes × 8 pairs give the
    1 × 16 losses and weights (mode structure, whose loss is a function of the whole batch)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ("--max-steps", "4", "--num-workers", "0", "--batch-size", "16", "--max-grad-norm", "0",
            "--teacher-heads", "structure")
    one = tmp_path / "one"
    subprocess.run(_cli_train(one, cache_root, student_nodrop, data_dir, *args), check=True, env=env)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmkd",
           *_cli_train(two, cache_root, student_nodrop, data_dir, *args)[3:]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows_two, rows_one = metrics(two), metrics(one)
    for key in ("loss", "tlm", "xwcl", "senta", "teacher_heads"):      # step 1: the same weights, the same batch
        assert float(rows_two[0][key]) == pytest.approx(float(rows_one[0][key]), rel=1e-5), key
    assert float(rows_two[0]["struca"]) == pytest.approx(float(rows_one[0]["struca"]), abs=1e-6)
    for a, b in zip(rows_two, rows_one):
        assert float(a["teacher_heads"]) == pytest.approx(float(b["teacher_heads"]), rel=1e-5), a["step"]
        # Later steps: the random tiny model's [CLS] states are nearly parallel (StrucA ≈ 0), so the
        # normalisation in SentA amplifies rounding differences of the updates (~5e-5 here).
        for key in ("loss", "senta"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-3), (a["step"], key)
    from safetensors.torch import load_file
    h_one, h_two = load_file(str(one / "heads.safetensors")), load_file(str(two / "heads.safetensors"))
    # Adam moves every weight with a non-zero gradient by about lr (1e-3) a step, whatever the gradient's
    # size. So a gradient summed wrongly over the processes moves most weights differently, while float
    # rounding differs only where it flips a ReLU unit on its kink for some pair (that unit's row then
    # gets a gradient in one run and none in the other): a few rows, by up to lr a step.
    diff = torch.cat([(h_two[k] - h_one[k]).abs().flatten() for k in h_one if k.startswith("teacher_")])
    assert (diff > 1e-4).double().mean().item() < 0.02, f"{(diff > 1e-4).double().mean().item():.3f} of the weights differ"
    assert diff.median().item() < 1e-5


def test_nan_guard_names_step_and_loss(tmp_path, cache_root, tiny_student, data_dir):
    broken = tmp_path / "broken"
    model = AutoModelForMaskedLM.from_pretrained(tiny_student)
    with torch.no_grad():
        model.base_model.encoder.layer[0].output.dense.weight[0, 0] = float("nan")
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_student).save_pretrained(broken)
    cfg = small_config(tmp_path, cache_root, str(broken), data_dir)
    with pytest.raises(TrainingError, match=r"step 1, micro-batch 0: the tlm loss is nan .* \(corpus, pair_id\)"):
        train(cfg, progress=False)


def test_the_head_phase_moves_the_heads_and_not_the_encoder(tmp_path, cache_root, tiny_student, data_dir):
    from safetensors.torch import load_file

    cfg = small_config(tmp_path, cache_root, tiny_student, data_dir, max_steps=6, head_warmup_steps=3, checkpoint_every=3,
                 lr=1e-4, head_lr=1e-2)
    run = train(cfg, progress=False)
    start = AutoModelForMaskedLM.from_pretrained(tiny_student).state_dict()
    at3 = load_file(str(run / "checkpoints" / "step-0000003" / "model.safetensors"))
    at6 = load_file(str(run / "checkpoints" / "step-0000006" / "model.safetensors"))
    for name in ("bert.encoder.layer.0.attention.self.query.weight", "bert.embeddings.word_embeddings.weight"):
        assert torch.equal(at3["student." + name], start[name])          # frozen through the phase ...
        assert not torch.equal(at6["student." + name], at3["student." + name])   # ... trained after it
    for head in ("senta_projector.0.weight", "cls.predictions.transform.dense.weight"):
        key = head if head.startswith("senta") else "student." + head
        assert not torch.equal(at3[key], at6[key])
    assert not torch.equal(at3["student.cls.predictions.transform.dense.weight"],
                           start["cls.predictions.transform.dense.weight"])
    rows = metrics(run)
    # lr = the encoder's lr of that step (0 in the phase), lr_heads = the heads': the full head lr in the
    # phase (no warm-up), then the linear decay every group follows.
    assert [float(r["lr"]) for r in rows[:3]] == [0.0, 0.0, 0.0]
    assert float(rows[3]["lr"]) == pytest.approx(1e-4 * 3 / 6)
    assert [float(r["lr_heads"]) for r in rows] == pytest.approx([1e-2] * 3 + [1e-2 * (6 - i) / 6 for i in (3, 4, 5)])
    report = json.loads((run / "head_phase.json").read_text())
    assert report["steps"] == 3
    assert set(report["losses"]) == {"tlm", "xwcl", "senta", "struca", "teacher_heads"}
    for name, v in report["losses"].items():
        assert v["first"] == pytest.approx(float(rows[0][name])) and v["last"] == pytest.approx(float(rows[2][name]))


def test_a_fresh_mlm_head_starts_from_unigrams_and_is_fitted_well_below_ln_v(tmp_path, cache_root, data_dir,
                                                                          multilingual_texts):
    """A student shipped without an MLM head (a bare encoder, as multilingual-e5-small is): with
    the unigram start, TLM's first loss is already below the uniform ln V, and after the head phase
    (encoder frozen) it is well below it; the encoder did not move in the phase."""
    from mmkd.tiny import make_tiny_bert

    bare = str(make_tiny_bert(multilingual_texts, tmp_path / "bare", 6000, seed=2, mlm=False))
    ln_v = math.log(len(AutoTokenizer.from_pretrained(bare)))
    runs = {}
    for start in ("random", "unigram"):
        cfg = small_config(tmp_path / start, cache_root, bare, data_dir, max_steps=12, head_warmup_steps=12,
                     head_lr=1e-2, tlm={"fresh_head": start})
        runs[start] = metrics(train(cfg, progress=False))
    random_first, unigram_first = float(runs["random"][0]["tlm"]), float(runs["unigram"][0]["tlm"])
    assert random_first == pytest.approx(ln_v, abs=0.3)           # transformers' zero bias: about uniform
    assert unigram_first < ln_v - 1.0
    assert float(runs["unigram"][-1]["tlm"]) < ln_v - 2.0
    assert float(runs["unigram"][-1]["tlm"]) < unigram_first
    assert all(float(r["lr"]) == 0.0 for r in runs["unigram"])
