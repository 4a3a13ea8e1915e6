"""Stage two: the trainer against the cache, on tiny models and real sample sentences."""

from __future__ import annotations

import csv
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
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

from mmkd import objectives as objs
from mmkd import settings as st
from mmkd.cache import CacheConfig, build_cache
from mmkd.config import TrainConfig, TrainingError
from mmkd.features import SourceError, open_features
from mmkd.model import build_model
from mmkd.schedule import BalancedSchedule
from mmkd.step_data import StepData
from mmkd.trainer import train

from mmkd.tiny import make_tiny_bert, tiny_batch


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory, tiny_teacher, data_dir) -> Path:
    out = tmp_path_factory.mktemp("train-cache") / "cache"
    build_cache(CacheConfig(corpora=["en-fr", "en-de"], teacher=tiny_teacher, out=str(out), data_dir=str(data_dir),
                            dtype="fp32", batch_size=1, shard_size=128), progress=False)
    return out


def config(tmp_path, cache_root, student, data_dir, **kw) -> TrainConfig:
    """A small run's settings; `kw` by setting name (`alpha`, `xwcl_temperature` or `xwcl.temperature`)."""
    base = dict(cache=[str(cache_root)], student=student, out=str(tmp_path / "run"), data_dir=str(data_dir),
                batch_size=8, max_steps=4, lr=1e-3, warmup_ratio=0.0, checkpoint_every=1000, num_workers=0,
                log_with="none", head_hidden=32, head_out=16)
    base.update(kw)
    return st.from_mapping(TrainConfig, base, "test")


def settings(**kw) -> TrainConfig:
    return st.from_mapping(TrainConfig, {"head_hidden": 32, "head_out": 16, **kw}, "test")


def changed(cfg: TrainConfig, **kw) -> TrainConfig:
    """`cfg` with the settings `kw` (by name, as `config` takes them) replaced."""
    return st.from_mapping(TrainConfig, kw, "test", base=cfg)


def tiny_model(student: str, teacher_hidden: int = 32, **kw):
    return build_model(AutoModelForMaskedLM.from_pretrained(student), teacher_hidden, settings(**kw))[0]


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ the same numbers both ways
def _losses_of_step(cfg: TrainConfig, model, step: int = 0) -> dict[str, float]:
    tokenizer = AutoTokenizer.from_pretrained(cfg.student)
    features = open_features(cfg)
    data = StepData(features, BalancedSchedule(features.sizes, cfg.batch_size, cfg.seed), 0, 1, cfg, tokenizer)
    (batch,) = [data.build(part) for part in data.plan(step)]
    out = model(batch, cfg.objectives)
    return {o: model.terms[o].loss(out, lambda t: t).item() for o in cfg.objectives}


def test_cached_and_online_teacher_give_the_same_losses(tmp_path, cache_root, tiny_student, tiny_teacher, data_dir):
    cached = config(tmp_path, cache_root, tiny_student, data_dir, batch_size=16)
    online = dataclasses.replace(cached, cache=[], online_teacher=tiny_teacher, corpora=["en-fr", "en-de"])
    torch.manual_seed(0)
    model = tiny_model(tiny_student).eval()
    a = _losses_of_step(cached, model)
    b = _losses_of_step(online, model)
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
    cfg = config(tmp_path, tmp_path / "c", tiny_student, d, max_steps=80, lr=3e-3, teacher_heads="train")
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


# ------------------------------------------------------------------ ablations
@pytest.mark.parametrize("removed", objs.names())
def test_without_drops_exactly_its_term(tmp_path, cache_root, tiny_student, data_dir, removed):
    cfg = config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2, without=[removed], alpha=0.5)
    rows = metrics(train(cfg, progress=False))
    for row in rows:
        assert row[removed] == ""
        kept = [o for o in objs.names() if o != removed]
        assert all(row[o] != "" for o in kept)
        expected = sum(float(row[o]) * (0.5 if o == "struca" else 1.0) for o in kept)
        expected += float(row["teacher_heads"] or 0.0)     # the teacher heads' own loss, if the mode has one
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-9)


def test_removed_objectives_skip_their_forward_pass(tiny_student):
    torch.manual_seed(0)
    model = tiny_model(tiny_student)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    batch = tiny_batch(tiny_student)
    for objectives, n in [(objs.names(), 3), (("xwcl", "senta", "struca"), 2), (("tlm", "senta", "struca"), 2),
                          (("tlm", "xwcl", "struca"), 3), (("tlm", "xwcl"), 2), (("senta",), 1)]:
        calls.clear()
        out = model(batch, tuple(objectives))
        assert len(calls) == n, objectives
        assert set(out) == set(objectives)


def test_teacher_heads_frozen_or_trained(tmp_path, cache_root, tiny_student, data_dir):
    from safetensors.torch import load_file

    for mode, should_change in (("frozen", False), ("train", True), ("structure", True), ("guard", True)):
        cfg = config(tmp_path / mode, cache_root, tiny_student, data_dir, max_steps=3, teacher_heads=mode)
        run = train(cfg, progress=False)
        torch.manual_seed(cfg.seed)
        ref = tiny_model(tiny_student)
        heads = load_file(str(run / "heads.safetensors"))
        w0 = ref.teacher_senta_projector[0].weight
        changed = not torch.equal(heads["teacher_senta_projector.0.weight"], w0)
        assert changed == should_change, mode
        assert not torch.equal(heads["senta_projector.0.weight"], ref.senta_projector[0].weight)
        stds = [float(r["std_teacher_senta"]) for r in metrics(run)]
        assert all(s >= 0 for s in stds)


def _head_grads(mode: str, tiny_student: str, objectives: tuple[str, ...]) -> dict[str, bool]:
    """Which parts get a gradient from each objective's loss, in teacher-head mode `mode`."""
    torch.manual_seed(0)
    cfg = settings(teacher_heads=mode, without=[n for n in objs.names() if n not in objectives])
    model, terms = build_model(AutoModelForMaskedLM.from_pretrained(tiny_student), 32, cfg)
    got = {}
    for o in terms:
        model.zero_grad(set_to_none=True)
        out = model(tiny_batch(tiny_student), terms.names)
        o.loss(out, lambda t: t).backward()
        got[o.name] = {part: any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
                       for part, module in (("teacher", model.teacher_senta_projector),
                                            ("teacher_struca", model.teacher_struca_projector),
                                            ("student_heads", model.senta_projector),
                                            ("encoder", model.encoder))}
    return got


def test_teacher_head_modes_route_gradients_as_documented(tiny_student):
    """structure: SentA/StrucA stop at the teacher projections, which learn from their own loss only
    (and it reaches nothing else); guard and train: SentA reaches them; frozen/train add no term."""
    structure = _head_grads("structure", tiny_student, ("senta", "struca"))
    assert [n for n in structure] == ["senta", "struca", "teacher_heads"]
    assert not structure["senta"]["teacher"] and structure["senta"]["student_heads"] and structure["senta"]["encoder"]
    assert not structure["struca"]["teacher_struca"]
    assert structure["teacher_heads"] == {"teacher": True, "teacher_struca": True, "student_heads": False,
                                          "encoder": False}
    guard = _head_grads("guard", tiny_student, ("senta", "struca"))
    assert guard["senta"]["teacher"] and guard["struca"]["teacher_struca"]
    assert guard["teacher_heads"]["teacher"] and not guard["teacher_heads"]["encoder"]
    # Only the heads of the objectives trained: with SentA removed, its teacher head has no own loss.
    assert not _head_grads("structure", tiny_student, ("struca",))["teacher_heads"]["teacher"]
    for mode in ("frozen", "train"):
        assert "teacher_heads" not in _head_grads(mode, tiny_student, ("senta", "struca"))
    # Without a sentence objective the mode adds no term.
    assert objs.build_objectives(settings(teacher_heads="structure", without=["senta", "struca"])).names == ("tlm", "xwcl")


def test_guard_of_each_head_is_weighted_like_its_objective():
    """guard: SentA's head's guard has weight 1, StrucA's α (what it must hold off); structure: eq. 7
    per head, unweighted."""
    from mmkd.losses import structure_loss, variance_covariance

    g = torch.Generator().manual_seed(0)
    cls = torch.randn(6, 12, generator=g)
    out = {"senta": {"teacher": torch.randn(6, 8, generator=g), "teacher_vector": cls},
           "struca": {"teacher": torch.randn(6, 8, generator=g), "teacher_vector": cls}}
    same = lambda t: t   # noqa: E731
    for alpha in (1.0, 50.0):
        term = objs.build_objectives(settings(teacher_heads="guard", alpha=alpha)).terms[-1]
        assert term.name == "teacher_heads"
        got = term.loss(out, same)
        expected = (variance_covariance(out["senta"]["teacher"])
                    + alpha * variance_covariance(out["struca"]["teacher"]))
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got = objs.build_objectives(settings(teacher_heads="structure", alpha=50.0)).terms[-1].loss(out, same)
    expected = sum(structure_loss(out[k]["teacher"], cls, 0.1) for k in ("senta", "struca"))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_teacher_heads_term_is_logged_and_weighted(tmp_path, cache_root, tiny_student, data_dir):
    cfg = config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2, teacher_heads="guard",
                 teacher_head_weight=0.5, alpha=0.5)
    for row in metrics(train(cfg, progress=False)):
        assert float(row["teacher_heads"]) > 0
        expected = sum(float(row[o]) * w for o, w in (("tlm", 1), ("xwcl", 1), ("senta", 1), ("struca", 0.5),
                                                       ("teacher_heads", 0.5)))
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-9)


def test_a_collapsed_head_warns_on_the_console(tmp_path, cache_root, tiny_student, data_dir, capfd):
    """The random tiny teacher gives nearly the same [CLS] for every sentence, so frozen teacher
    projections are nearly one vector (std ≈ 5e-4 against 1/√16 = 0.25) and never change: a real case
    of what the warning is for. Once per indicator, naming it and the step."""
    run = train(config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2, teacher_heads="frozen"),
                progress=False)
    err = capfd.readouterr().err
    low = float(metrics(run)[0]["std_teacher_senta"])
    assert low < 0.25 / 16 ** 0.5
    assert err.count("warning: step 1: std_teacher_senta") == 1 and "step 2: std_teacher_senta" not in err
    assert "the head is collapsing" in err and "it is not trained" in err


def test_collapse_warnings_once_per_indicator_when_a_trained_head_falls():
    from mmkd.monitor import CollapseWatch

    watch = CollapseWatch(128, teacher_heads="structure")
    floor = 0.25 / 128 ** 0.5                     # 0.0221
    assert watch({"step": 1, "std_student_senta": 0.03, "std_teacher_senta": 0.08}) == []
    first = watch({"step": 7, "std_student_senta": 0.004, "std_teacher_senta": 0.08})
    assert len(first) == 1 and "std_student_senta = 0.0040" in first[0] and "step 7" in first[0]
    assert f"{floor:.4f}" in first[0] and "fell from 0.0300" in first[0]
    assert watch({"step": 8, "std_student_senta": 0.001}) == []
    assert watch({"step": 9, "std_teacher_struca": 0.09}) == []
    assert len(watch({"step": 10, "std_teacher_struca": 0.0})) == 1


def test_a_trained_head_that_starts_narrow_and_widens_is_not_a_collapse():
    """multilingual-e5-small's [CLS] vectors point one way, so its student heads start at ~0.009
    (floor 0.022) and widen as they learn: no warning. Falling to half its highest, it is one."""
    from mmkd.monitor import CollapseWatch

    watch = CollapseWatch(128, teacher_heads="structure")
    for step, value in enumerate((0.0085, 0.0090, 0.0110, 0.0160, 0.0150), start=1):
        assert watch({"step": step, "std_student_senta": value}) == []
    assert len(watch({"step": 6, "std_student_senta": 0.0079})) == 1


def test_a_collapse_warning_names_the_remedy_for_its_side_under_the_run_settings():
    """Student SentA collapsing under plain SentA: --senta-center; teacher heads collapsing while frozen
    or trained by the objectives: structure/guard; neither remedy offered when the run already has it."""
    from mmkd.monitor import CollapseWatch

    def warn(name, teacher_heads=None, senta_center=None):
        watch = CollapseWatch(128, teacher_heads, senta_center)
        watch({"step": 2, name: 0.08})
        (message,) = watch({"step": 3, name: 0.001})
        return message

    assert "senta.center=true" in warn("std_student_senta", teacher_heads="structure", senta_center=False)
    assert "senta.center=true" not in warn("std_student_senta", teacher_heads="structure", senta_center=True)
    for heads in ("frozen", "train"):
        assert "heads.teacher=structure or guard" in warn("std_teacher_struca", teacher_heads=heads)
    assert "heads.teacher=structure or guard" in warn("std_student_struca", teacher_heads="train")
    assert "heads.teacher" not in warn("std_student_struca", teacher_heads="frozen")
    for heads in ("structure", "guard"):
        message = warn("std_teacher_senta", teacher_heads=heads, senta_center=True)
        assert "heads.teacher" not in message and "senta.center" not in message
        assert "docs/results.md" in message

# ------------------------------------------------------------------ resume and distribution
def _cli_train(out: Path, cache_root: Path, student: str, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmkd", "train", "--cache", str(cache_root), "--student", student,
            "--out", str(out), "--data-dir", str(data_dir), "--batch-size", "8", "--lr", "1e-3",
            "--head-hidden", "32", "--head-out", "16", "--log-with", "none", "--quiet", *extra]


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


# ------------------------------------------------------------------ refusals and guards
def test_caches_of_different_teachers_are_refused(tmp_path, cache_root, other_teacher, tiny_student, data_dir):
    build_cache(CacheConfig(corpora=["en-de"], teacher=other_teacher, out=str(tmp_path / "c2"), data_dir=str(data_dir),
                            dtype="fp32"), progress=False)
    cfg = config(tmp_path, cache_root, tiny_student, data_dir, cache=[str(cache_root / "en-fr"), str(tmp_path / "c2")])
    with pytest.raises(SourceError, match="differ in teacher"):
        train(cfg, progress=False)


def test_resume_with_other_settings_is_refused(tmp_path, cache_root, tiny_student, data_dir):
    cfg = config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2)
    train(cfg, progress=False)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(cfg, progress=False)
    with pytest.raises(TrainingError, match=r"other settings:\n  lr: run has 0.001, now 0.002"):
        train(changed(cfg, lr=2e-3), resume=True, progress=False)


@pytest.mark.parametrize("width", [48, 24])
def test_a_teacher_of_another_width_goes_through_a_learned_map(tmp_path, english_texts, tiny_student, data_dir, width,
                                                               cache_root, shared):
    """A wider (48) or narrower (24) teacher than the 32-d student: XWCL compares W·h̃ with h through a
    learned linear map W, trained with the student and saved with the heads; cached and online
    teachers give the same losses; `--xwcl-map none` refuses, as the paper's direct comparison must."""
    from safetensors.torch import load_file

    teacher = make_tiny_bert(english_texts[:2000], tmp_path / "teacher", 1000, seed=0, hidden=width)
    build_cache(CacheConfig(corpora=["en-fr"], teacher=str(teacher), out=str(tmp_path / "c"), data_dir=str(data_dir),
                            dtype="fp32"), progress=False)
    cfg = config(tmp_path, tmp_path / "c", tiny_student, data_dir)
    with pytest.raises(TrainingError, match=f"student 32, teacher {width}. Use xwcl.map=linear"):
        train(changed(cfg, xwcl_map="none"), progress=False)
    run = train(cfg, progress=False)
    rows = metrics(run)
    assert len(rows) == 4 and all(float(r["xwcl"]) > 0 for r in rows)
    heads = load_file(str(run / "heads.safetensors"))
    assert heads["word_map.weight"].shape == (width, 32)
    torch.manual_seed(cfg.seed)
    start = tiny_model(tiny_student, width, xwcl_map="linear").word_map.weight
    assert not torch.equal(heads["word_map.weight"], start)            # trained with the student
    # The saved student reloads (trained, not the start) and evaluates like any other.
    saved = AutoModelForMaskedLM.from_pretrained(run / "student")
    assert saved.config.hidden_size == 32
    assert not torch.equal(saved.get_input_embeddings().weight,
                           AutoModelForMaskedLM.from_pretrained(tiny_student).get_input_embeddings().weight)
    from click.testing import CliRunner

    from mmkd.cli import main
    r = CliRunner().invoke(main, ["eval", "xnli", "--model", str(run / "student"), "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "xnli" / "dev-en.tsv"), "--languages", "fr",
                                  "--max-train-examples", "32", "--max-eval-examples", "16", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    result = json.loads((run / "student" / "eval" / "xnli" / "results.json").read_text())
    assert result["languages"] == ["fr"] and 0 <= result["summary"]["fr"]["mean"] <= 100
    torch.manual_seed(0)
    model = tiny_model(tiny_student, width, xwcl_map="linear").eval()
    online = dataclasses.replace(cfg, cache=[], online_teacher=str(teacher), corpora=["en-fr"])
    a, b = _losses_of_step(cfg, model), _losses_of_step(online, model)
    assert a["xwcl"] == pytest.approx(b["xwcl"], rel=1e-5)
    # Same width: no map unless asked (the paper's dot product).
    same = train(config(tmp_path / "same", cache_root, tiny_student, data_dir, max_steps=1), progress=False)
    assert "word_map.weight" not in load_file(str(same / "heads.safetensors"))
    asked = train(config(tmp_path / "asked", cache_root, tiny_student, data_dir, max_steps=1, xwcl_map="linear"),
                  progress=False)
    assert load_file(str(asked / "heads.safetensors"))["word_map.weight"].shape == (32, 32)


def test_nan_guard_names_step_and_loss(tmp_path, cache_root, tiny_student, data_dir):
    broken = tmp_path / "broken"
    model = AutoModelForMaskedLM.from_pretrained(tiny_student)
    with torch.no_grad():
        model.base_model.encoder.layer[0].output.dense.weight[0, 0] = float("nan")
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_student).save_pretrained(broken)
    cfg = config(tmp_path, cache_root, str(broken), data_dir)
    with pytest.raises(TrainingError, match=r"step 1, micro-batch 0: the tlm loss is nan .* \(corpus, pair_id\)"):
        train(cfg, progress=False)


def test_trained_student_loads_with_automodel(tmp_path, cache_root, tiny_student, data_dir):
    run = train(config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2), progress=False)
    student = AutoModel.from_pretrained(run / "student")
    tok = AutoTokenizer.from_pretrained(run / "student")
    with torch.no_grad():
        out = student(**tok(["A sentence."], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 32
    assert (run / "student" / "mmkd_run.json").is_file()
    assert sorted(p.name for p in (run / "student").glob("cache-manifest-*.json")) == [
        "cache-manifest-en-de.json", "cache-manifest-en-fr.json"]
    before = AutoModel.from_pretrained(tiny_student)
    name = "embeddings.word_embeddings.weight"
    assert not torch.equal(dict(student.named_parameters())[name], dict(before.named_parameters())[name])
    assert AutoConfig.from_pretrained(run / "student").hidden_size == 32


def test_saved_student_is_the_whole_starting_model(tmp_path, cache_root, tiny_student, data_dir):
    """The tiny student is saved like mBERT (BertForPreTraining). MMKD trains its encoder and MLM
    head; the pooler and the NSP head must come back unchanged, so a sequence classifier built
    from the student starts from the same pooler as one built from the starting model."""
    from safetensors.torch import load_file
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, BertForPreTraining

    run = train(config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2), progress=False)
    start = BertForPreTraining.from_pretrained(tiny_student)
    saved = load_file(str(run / "student" / "model.safetensors"))
    for key in ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.seq_relationship.weight",
                "cls.seq_relationship.bias"):
        assert torch.equal(saved[key], start.state_dict()[key]), key
    assert not torch.equal(saved["bert.encoder.layer.0.attention.self.query.weight"],
                           start.state_dict()["bert.encoder.layer.0.attention.self.query.weight"])
    clf, info = AutoModelForSequenceClassification.from_pretrained(run / "student", num_labels=3,
                                                                   output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(clf.bert.pooler.dense.weight, start.bert.pooler.dense.weight)
    base, info = AutoModel.from_pretrained(run / "student", output_loading_info=True)
    assert not info["missing_keys"] and torch.equal(base.pooler.dense.bias, start.bert.pooler.dense.bias)
    _, info = AutoModelForQuestionAnswering.from_pretrained(run / "student", output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["qa_outputs.bias", "qa_outputs.weight"]
    assert not (run / "student.tmp").exists()


def test_bare_encoder_start_keeps_its_pooler_under_the_model_prefix(tmp_path, cache_root, data_dir, multilingual_texts):
    """A student that starts from a bare encoder checkpoint (BertModel, like all-MiniLM-L6-v2)."""
    from safetensors.torch import load_file

    bare = make_tiny_bert(multilingual_texts[:3000], tmp_path / "bare", 2000, seed=4)
    run = train(config(tmp_path, cache_root, str(bare), data_dir, max_steps=1, without=["xwcl"]), progress=False)
    saved = load_file(str(run / "student" / "model.safetensors"))
    start = AutoModel.from_pretrained(bare)
    assert torch.equal(saved["bert.pooler.dense.weight"], start.pooler.dense.weight)
    assert not any(k.startswith("pooler.") for k in saved)


def test_student_folder_has_a_model_card_that_eval_updates(tmp_path, cache_root, tiny_student, data_dir, shared):
    from click.testing import CliRunner

    from mmkd.cli import main

    run = train(config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2), progress=False)
    card = (run / "student" / "README.md").read_text()
    front = card.split("---")[1]
    assert "language:\n- en\n- de\n- fr\n" in front and "library_name: transformers" in front
    assert "base_model" not in front            # a local starting model is named in the body, not as a hub id
    name = Path(tiny_student).name
    assert f"| starting model | a local model folder named '{name}' |" in card
    assert tiny_student not in card and str(cache_root) not in card   # never a local absolute path
    assert "| steps | 2 of global batch 8 on 1 process(es)" in card
    assert "| en-fr | en-fr | 300 |" in card and "Not evaluated yet" in card
    r = CliRunner().invoke(main, ["eval", "retrieval", "--model", str(run / "student"),
                                  "--pairs", f"tatoeba-fr={shared / 'parallel/tatoeba_challenge/eng-fra.tsv'}",
                                  "--max-eval-examples", "50"])
    assert r.exit_code == 0, r.output
    card = (run / "student" / "README.md").read_text()
    assert "Not evaluated yet" not in card and "**retrieval**" in card and "| tatoeba-fr | avg |" in card


def test_param_groups_give_every_fresh_head_the_head_lr(tiny_student):
    from mmkd.optim import param_groups

    model = tiny_model(tiny_student)
    groups = param_groups(model, 0.01, lr=2e-5, head_lr=1e-3)
    by_id = {id(p): g for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    heads = {n for n, p in names.items() if by_id[id(p)]["name"] == "heads"}
    # The objectives' heads and the MLM head's transform and output bias learn at the head lr ...
    assert {"senta_projector.0.weight", "struca_predictor.2.bias", "teacher_senta_projector.0.weight",
            "student.cls.predictions.transform.dense.weight", "student.cls.predictions.bias"} <= heads
    # ... the encoder, and the MLM decoder tied to its word embeddings, at the encoder's.
    encoder = {n for n in names if n.startswith("student.bert.")}
    assert encoder and not encoder & heads and all(by_id[id(names[n])]["lr"] == 2e-5 for n in encoder)
    assert all(by_id[id(names[n])]["lr"] == 1e-3 for n in heads)
    assert model.student.get_output_embeddings().weight is model.student.bert.embeddings.word_embeddings.weight
    assert all(by_id[id(p)]["weight_decay"] == 0.0 for n, p in names.items() if n.endswith("bias"))
    # No head lr: the paper's one lr for everything.
    assert {g["lr"] for g in param_groups(model, 0.01, lr=2e-5)} == {2e-5}


def test_the_head_phase_runs_the_encoder_without_gradients(tiny_student):
    model = tiny_model(tiny_student)
    batch = tiny_batch(tiny_student)
    out = model(batch, objs.names(), frozen_encoder=True)
    sum(model.terms[o].loss(out, lambda t: t) for o in objs.names()).backward()
    for name, p in model.named_parameters():
        if name.startswith("student.bert.") and name != "student.bert.embeddings.word_embeddings.weight":
            assert p.grad is None, name                              # nothing flowed into the encoder
    # ... but for the MLM decoder, which is the word-embedding matrix (the trainer drops that gradient).
    for name in ("senta_projector.0.weight", "struca_predictor.0.weight", "student.cls.predictions.bias",
                 "student.cls.predictions.transform.dense.weight"):
        assert dict(model.named_parameters())[name].grad is not None, name
    assert torch.is_grad_enabled()


def test_the_head_phase_moves_the_heads_and_not_the_encoder(tmp_path, cache_root, tiny_student, data_dir):
    from safetensors.torch import load_file

    cfg = config(tmp_path, cache_root, tiny_student, data_dir, max_steps=6, head_warmup_steps=3, checkpoint_every=3,
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


def test_unigram_log_probs_by_hand(tiny_student):
    from mmkd.objectives.tlm import unigram_log_probs

    tok = AutoTokenizer.from_pretrained(tiny_student)
    texts = ["the the report", "report the"]
    the, report = tok("the", add_special_tokens=False)["input_ids"], tok("report", add_special_tokens=False)["input_ids"]
    assert len(the) == 1 and len(report) == 1
    rows = len(tok) + 3
    got = unigram_log_probs(tok, texts, rows, smoothing=0.5)
    total = 3 + 2 + 0.5 * rows                # 3 x "the", 2 x "report", every row smoothed (specials zeroed first)
    assert got[the[0]] == pytest.approx(np.log(3.5 / total))
    assert got[report[0]] == pytest.approx(np.log(2.5 / total))
    assert got[tok.cls_token_id] == pytest.approx(np.log(0.5 / total)) and got[rows - 1] == got[tok.cls_token_id]
    assert np.exp(got).sum() == pytest.approx(1.0)


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
        cfg = config(tmp_path / start, cache_root, bare, data_dir, max_steps=12, head_warmup_steps=12,
                     head_lr=1e-2, tlm={"fresh_head": start})
        runs[start] = metrics(train(cfg, progress=False))
    random_first, unigram_first = float(runs["random"][0]["tlm"]), float(runs["unigram"][0]["tlm"])
    assert random_first == pytest.approx(ln_v, abs=0.3)           # transformers' zero bias: about uniform
    assert unigram_first < ln_v - 1.0
    assert float(runs["unigram"][-1]["tlm"]) < ln_v - 2.0
    assert float(runs["unigram"][-1]["tlm"]) < unigram_first
    assert all(float(r["lr"]) == 0.0 for r in runs["unigram"])


def test_struca_logs_its_targets_diagonal_mass(tmp_path, cache_root, tiny_student, data_dir):
    rows = metrics(train(config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2,
                                struca={"temperature": 0.1}), progress=False))
    flat = metrics(train(config(tmp_path / "hot", cache_root, tiny_student, data_dir, max_steps=2,
                                struca={"temperature": 100.0}), progress=False))
    for r, f in zip(rows, flat):
        assert 1 / 8 <= float(r["struca_target_diag"]) <= 1.0
        assert float(f["struca_target_diag"]) == pytest.approx(1 / 8, rel=0.02)     # τ → ∞: every sentence alike
        assert float(r["struca_target_diag"]) > float(f["struca_target_diag"])


def test_sentence_objectives_can_use_mean_pooling(tiny_student):
    """student_vector mean: SentA/StrucA's heads are fed the mean of the student's last hidden states
    over the sentence's tokens (what retrieval measures), not its [CLS]."""
    from mmkd.objectives.sentence import sentence_vector

    batch = tiny_batch(tiny_student)
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert sentence_vector(hidden, mask, "cls").tolist() == [[0, 1], [6, 7]]
    assert sentence_vector(hidden, mask, "mean").tolist() == [[1, 2], [8, 9]]
    torch.manual_seed(0)
    cls_model = tiny_model(tiny_student)
    torch.manual_seed(0)
    mean_model = tiny_model(tiny_student, senta={"student_vector": "mean"})
    cls_model.eval(), mean_model.eval()
    a, b = cls_model(batch, ("senta", "struca")), mean_model(batch, ("senta", "struca"))
    assert torch.equal(a["struca"]["student"], b["struca"]["student"])          # StrucA kept its [CLS]
    assert not torch.allclose(a["senta"]["student"], b["senta"]["student"])
    with torch.no_grad():
        mine = batch.inputs["sentence"]
        h = mean_model.encoder(input_ids=mine.input_ids, attention_mask=mine.attention_mask,
                               token_type_ids=mine.token_type_ids).last_hidden_state
        m = mine.attention_mask[..., None].float()
        want = mean_model.senta_predictor(mean_model.senta_projector((h * m).sum(1) / m.sum(1)))
    assert torch.allclose(b["senta"]["student"], want, atol=1e-6)


# ------------------------------------------------------------------ settings
def test_resume_and_config_reuse_a_runs_settings(tmp_path, cache_root, tiny_student, data_dir):
    from click.testing import CliRunner

    from mmkd.cli import main

    run = tmp_path / "run"
    first = ["train", "--cache", str(cache_root), "--student", tiny_student, "--out", str(run), "--batch-size", "8",
             "--lr", "1e-3", "--alpha", "0.5", "--head-hidden", "32", "--head-out", "16", "--max-steps", "2",
             "--checkpoint-every", "1", "--num-workers", "0", "--log-with", "none", "--quiet"]
    assert CliRunner().invoke(main, first).exit_code == 0
    r = CliRunner().invoke(main, ["train", "--resume", "--out", str(run), "--quiet"])      # no flags retyped
    assert r.exit_code == 0, r.output
    again = tmp_path / "again"
    r = CliRunner().invoke(main, ["train", "--config", str(run / "config.json"), "--out", str(again), "--quiet"])
    assert r.exit_code == 0, r.output
    keys = ("loss", "tlm", "xwcl", "senta", "struca", "lr")
    assert [[m[k] for k in keys] for m in metrics(again)] == [[m[k] for k in keys] for m in metrics(run)]
    other = tmp_path / "other"
    r = CliRunner().invoke(main, ["train", "--config", str(run / "config.json"), "--out", str(other), "--alpha", "2",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    import json
    saved = json.loads((other / "config.json").read_text())["config"]
    assert saved["struca"]["alpha"] == 2.0 and saved["lr"] == 1e-3 and saved["out"] == str(other)


def test_a_fifth_objective_needs_only_its_module_and_its_place_in_the_list(tmp_path, cache_root, tiny_student,
                                                                          data_dir, monkeypatch):
    """A toy objective (a small penalty on the student's sentence [CLS]) defined here and added to
    mmkd.objectives.OBJECTIVES, nowhere else: it trains, is weighted, has its metrics column, can be
    removed with --without, and gets its own run in the ablation sweep."""
    from mmkd import ablate
    from mmkd.objectives.inputs import SENTENCE

    class ClsNorm(objs.Objective):
        name, title, equation, input, averages_over, table5_row = "clsnorm", "CLS-norm", "-", SENTENCE, "sentences", 5
        weight = 0.25

        def forward(self, encoded, batch):
            return {"cls": encoded.hidden("sentence")[:, 0]}

        def count(self, batch):
            return len(batch.keys["sentence"]) if "sentence" in batch.inputs else 0

        def loss(self, out, gather):
            return out[self.name]["cls"].float().pow(2).mean()

    monkeypatch.setattr(objs, "OBJECTIVES", objs.OBJECTIVES + (ClsNorm,))
    rows = metrics(train(config(tmp_path / "all", cache_root, tiny_student, data_dir, max_steps=2, alpha=0.5),
                         progress=False))
    for row in rows:
        assert float(row["clsnorm"]) > 0
        expected = sum(float(row[o]) * w for o, w in (("tlm", 1), ("xwcl", 1), ("senta", 1), ("struca", 0.5),
                                                       ("clsnorm", 0.25)))
        expected += float(row["teacher_heads"] or 0.0)
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-9)
    only = metrics(train(config(tmp_path / "only", cache_root, tiny_student, data_dir, max_steps=1,
                                without=["tlm", "xwcl", "senta", "struca"]), progress=False))
    assert float(only[0]["loss"]) == pytest.approx(0.25 * float(only[0]["clsnorm"]), rel=1e-9)
    assert only[0]["tlm"] == "" and only[0]["struca"] == ""
    without = metrics(train(config(tmp_path / "without", cache_root, tiny_student, data_dir, max_steps=1,
                                   without=["clsnorm"]), progress=False))
    assert without[0]["clsnorm"] == ""
    assert [name for name, _ in ablate.runs()] == ["mmkd", "-xwcl", "-tlm", "-senta", "-struca", "-clsnorm"]


def test_a_new_objectives_settings_join_the_run_settings_from_the_registry(monkeypatch):
    """An objective's `Settings` dataclass becomes `TrainConfig.<name>` with nothing else written:
    a settings file and KEY=VALUE reach it, its checks hold, and build_objectives hands it over."""
    from dataclasses import dataclass

    from mmkd.config import with_objectives
    from mmkd.objectives.inputs import SENTENCE
    from mmkd.settings import setting

    @dataclass
    class ClsNormSettings:
        weight: float = setting(0.25, "Its weight in L.", min=0)

    class ClsNorm(objs.Objective):
        name, title, equation, input, averages_over = "clsnorm", "CLS-norm", "-", SENTENCE, "sentences"
        Settings = ClsNormSettings

        @property
        def weight(self):
            return self.settings.weight

    cls = with_objectives(objs.OBJECTIVES + (ClsNorm,))
    cfg = st.from_mapping(cls, {"clsnorm": {"weight": 0.5}, "struca.alpha": 2.0}, "test")
    assert cfg.clsnorm.weight == 0.5 and cfg.struca.alpha == 2.0 and cls().clsnorm.weight == 0.25
    assert st.load(cls, None, st.assignments(cls, ["clsnorm.weight=3"], "train")).clsnorm.weight == 3.0
    with pytest.raises(st.SettingsError, match="clsnorm.weight=-1.0: must be at least 0"):
        st.assignments(cls, ["clsnorm.weight=-1"], "train")
    assert "clsnorm.weight" in [f.key for f in st.fields(cls)]
    monkeypatch.setattr(objs, "OBJECTIVES", objs.OBJECTIVES + (ClsNorm,))
    made = {o.name: o for o in objs.build_objectives(cfg).terms}
    assert made["clsnorm"].settings is cfg.clsnorm and made["clsnorm"].weight == 0.5 and made["struca"].weight == 2.0
