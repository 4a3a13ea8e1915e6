"""`mmkd train`: the student against the teacher cache with L = TLM + XWCL + SentA + α·StrucA (eq. 6).

Distribution (accelerate/DDP) is exact: every term is the mean over the *global* batch. Before a
step each process counts what its micro-batches average over (masked tokens, anchors,
sentences); one all-reduce gives the global counts; micro-batch m's term is weighted by
n_m / N_global × world (DDP divides by world when it averages gradients). StrucA's similarity
matrices span the whole global micro-batch: the heads' outputs are all-gathered with gradient.
So 2 processes × 128 pairs give the gradient of 1 process × 256 pairs, up to float rounding.

A run's life: `setup(cfg) -> Run` in named phases (accelerator, features, model, schedule,
optimiser, resume, loader), then `loop(run)`, then `finish(run)`. What a step reads is
mmkd/step_data.py; what it computes is each objective's (mmkd/objectives/); the run folder's guards
are mmkd/run_folder.py.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.nn.functional as dist_fn
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm
from transformers import AutoModelForMaskedLM

from mmkd import __version__
from mmkd import objectives as objs
from mmkd import trackers as track
from mmkd.atomic import write_text
from mmkd.batching import StudentBatch
from mmkd.cache.integrity import verify_before_training
from mmkd.capacity import check_batch, check_length
from mmkd.checkpoint import agreed_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from mmkd.config import CONFIG_VERSION, TrainConfig, TrainingError, differences, from_saved, validate
from mmkd.console import say
from mmkd.dist import use_cpu
from mmkd.errors import CacheError
from mmkd.features import open_features
from mmkd.hf import load, load_config, load_tokenizer, missing_parts
from mmkd.model import build_model
from mmkd.monitor import CollapseWatch, append_metrics, trim_metrics
from mmkd.objectives import Built, Objective
from mmkd.objectives.tlm import start_fresh_head
from mmkd.optim import adamw, lr_schedule, param_groups
from mmkd.precision import resolve as resolve_precision
from mmkd.run_folder import RunFolder
from mmkd.schedule import BalancedSchedule
from mmkd.settings import dotted
from mmkd.step_data import StepData, raise_failure
from mmkd.student import save_student
from mmkd.words import require_fast
from mmkd.writers import gather


@dataclass
class Run:
    """Everything one training run holds, made by `setup` phase by phase."""
    cfg: TrainConfig
    out: Path
    accelerator: Accelerator
    trackers: list[str]
    progress: bool
    folder: RunFolder | None = None
    features: Any = None                  # mmkd.features: the cache(s) or the online teacher
    tokenizer: Any = None
    model: Any = None                     # the MMKDModel, prepared (DDP) by the optimiser phase
    terms: Built | None = None            # the run's objectives, with their heads (mmkd.objectives)
    schedule: BalancedSchedule | None = None
    total_steps: int = 0
    optimizer: Any = None
    scheduler: Any = None
    meta: dict = dataclasses.field(default_factory=dict)       # config.json: settings, caches, steps
    start: int = 0                        # steps done before this process started (a resumed run)
    data: StepData | None = None
    loader: Any = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def head_phase(self) -> int:
        return self.cfg.head_warmup_steps


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train; returns the run folder. The trained student is in `<run>/student/`."""
    run = setup(cfg, resume, overwrite, progress)
    with run.folder:
        loop(run)
        finish(run)
    # Not accelerator.end_training(): it also destroys the process group, and a process may train
    # again (the ablation sweep runs five trainings in one `accelerate launch`).
    for tracker in run.accelerator.trackers:
        tracker.finish()
    return run.out


def train_to_end(cfg: TrainConfig, progress: bool = True, advice: str = "give another --out or move it away") -> str:
    """The run `cfg` describes, trained to its end once: "done" when its student is already saved,
    else "resumed" from its last checkpoint or "trained" from the start. A folder holding a run made
    with other settings is refused, naming each (what `mmkd ablate` and `mmkd demo` run)."""
    out = Path(cfg.out)
    if (out / "config.json").is_file():
        try:
            recorded = json.loads((out / "config.json").read_text())
            saved = from_saved(recorded["config"], str(out / "config.json"), recorded.get("config_version"))
        except (OSError, ValueError, KeyError):
            saved = None
        diffs = differences(saved, cfg) if saved is not None else []
        if diffs:
            raise TrainingError(f"{out} was trained with other settings; {advice}:\n  " + "\n  ".join(diffs))
    if (out / "student" / "config.json").is_file():
        return "done"
    resume = latest_checkpoint(out) is not None
    train(cfg, resume=resume, progress=progress)
    return "resumed" if resume else "trained"


def setup(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Run:
    """A run ready to loop: its folder locked (released again if a later phase refuses), its data,
    model, optimiser and schedule made, a checkpoint loaded when resuming."""
    run = _accelerator(cfg, progress)
    _features(run, resume, overwrite)
    with contextlib.ExitStack() as undo:
        undo.callback(run.folder.__exit__, None, None, None)     # a refusal from here on releases the lock
        _verify(run)
        _model(run)
        _schedule(run)
        _optimiser(run)
        _resume(run, resume)
        _loader(run)
        undo.pop_all()               # ready: the lock stays until `train` leaves the folder
    return run


def _accelerator(cfg: TrainConfig, progress: bool) -> Run:
    """The settings checked, the trackers resolved (one not installed is refused before any work), and
    the Accelerator for this process."""
    validate(cfg)
    refuse_sharded_engines()
    out = Path(cfg.out)
    cpu = use_cpu()
    trackers = track.resolve(cfg.log_with)
    # Unused parameters: removed objectives leave heads (or the MLM head) without gradients.
    # The head phase leaves the encoder without gradients.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=len(cfg.objectives) < len(objs.OBJECTIVES)
                                        or cfg.head_warmup_steps > 0)
    accelerator = Accelerator(cpu=cpu, mixed_precision=resolve_precision(cfg.mixed_precision, cpu),
                              project_dir=str(out), log_with=trackers or None, kwargs_handlers=[ddp])
    return Run(cfg, out, accelerator, trackers, progress)


def _features(run: Run, resume: bool, overwrite: bool) -> None:
    """The folder checked and locked, the teacher features opened, and the batch and length checked
    against the student and the device (a refusal leaves the folder as it was)."""
    cfg, accelerator = run.cfg, run.accelerator

    def opened():
        features = open_features(cfg, device=accelerator.device)
        _check_capacity(cfg, accelerator)       # before any work; a refusal leaves the folder as it was
        return features

    run.folder = RunFolder(run.out, accelerator)
    run.features = run.folder.open(cfg, resume, overwrite, opened)


def _verify(run: Run) -> None:
    """Every cache's shards checked against their checksums, shared out between the processes (once
    per copy of a cache: remembered in RUN/verified-cache/)."""
    cfg, accelerator = run.cfg, run.accelerator
    if not cfg.verify_cache or cfg.online_teacher:
        return
    try:
        verify_before_training(run.features.caches, accelerator.process_index,
                               lambda value: gather(value, accelerator), lambda flag: _any(flag, accelerator),
                               lambda name: str(run.out / "verified-cache" / name), run.progress and run.main)
    except CacheError as e:
        raise TrainingError(f"{e}; training did not start") from None


def _model(run: Run) -> None:
    """The tokenizer, the student (a fresh MLM head started from unigram counts when TLM trains one),
    and the objectives with their heads, drawn from the seeded generator in a fixed order."""
    cfg = run.cfg
    run.tokenizer = load_tokenizer(cfg.student, cfg.trust_remote_code)
    require_fast(run.tokenizer)
    torch.manual_seed(cfg.seed)
    loaded: dict = {}
    student = load(AutoModelForMaskedLM, cfg.student, "student", cfg.trust_remote_code, tokenizer=run.tokenizer,
                   head_trained="tlm" in cfg.objectives, info_out=loaded)
    if "tlm" in cfg.objectives and missing_parts(student, loaded)[2] and cfg.tlm.fresh_head == "unigram":
        _start_fresh_head(student, run.tokenizer, run.features, cfg.tlm.unigram_pairs, run.main)
    run.model, run.terms = build_model(student, run.features.hidden_size, cfg)
    for o in run.terms:
        o.check(student, run.features.hidden_size)
        o.check_features(run.features)


def _schedule(run: Run) -> None:
    """The language-balanced batches of every step, and how many steps."""
    cfg = run.cfg
    run.schedule = BalancedSchedule(run.features.sizes, cfg.batch_size, cfg.seed)
    run.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * run.schedule.steps_per_epoch))
    if cfg.head_warmup_steps and run.terms.names == ("xwcl",) and not hasattr(run.model, "word_map"):
        raise TrainingError("head_warmup_steps: XWCL alone on a teacher of the student's width has no fresh head "
                            "to fit (it compares the states directly); set head_warmup_steps=0")


def _optimiser(run: Run) -> None:
    """AdamW over the encoder's and the heads' parameter groups, the lr schedule (stepped by us once per
    optimiser step: accelerate would step it per process), and the model and optimiser prepared."""
    cfg = run.cfg
    optimizer = adamw(param_groups(run.model, cfg.weight_decay, cfg.lr, cfg.head_lr), cfg.lr)
    run.scheduler = lr_schedule(optimizer, run.total_steps, round(cfg.warmup_ratio * run.total_steps),
                                cfg.head_warmup_steps)
    run.model, run.optimizer = run.accelerator.prepare(run.model, optimizer)


def _resume(run: Run, resume: bool) -> None:
    """The run's record (config.json), a checkpoint loaded when resuming (after checking the run is
    the same), metrics.csv trimmed to the steps done, and the trackers started (a resumed run
    continues its tracker runs)."""
    cfg, accelerator, out = run.cfg, run.accelerator, run.out
    run.meta = {"config": dataclasses.asdict(cfg), "config_version": CONFIG_VERSION, "caches": run.features.identities,
                "mmkd_version": __version__,
                "total_steps": run.total_steps, "steps_per_epoch": run.schedule.steps_per_epoch,
                "processes": accelerator.num_processes}
    existing = agreed_checkpoint(out, accelerator) if resume else None
    if existing:
        run.folder.check_resume(existing, cfg, run.features.identities)
        run.start = load_checkpoint(existing, run.model, run.optimizer, run.scheduler, accelerator)["step"]
    if run.folder.writes:           # every copy of a node-local run folder is a run folder
        write_text(out / "config.json", json.dumps(run.meta, indent=2, sort_keys=True) + "\n")
    if run.main:
        if run.start and not (out / "metrics.csv").is_file():
            say(f"warning: {out / 'metrics.csv'} is missing (the run was moved without it?): the rows of steps "
                f"1-{run.start} are lost; it starts again at step {run.start + 1}")
        trim_metrics(out / "metrics.csv", run.start)
    if run.trackers:
        record = track.start(accelerator, run.trackers, out, cfg.run_name,
                             {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                              for k, v in dotted(dataclasses.asdict(cfg)).items()}, resume)
        if run.folder.writes:
            write_text(out / track.RECORD, json.dumps(record, indent=2) + "\n")


def _loader(run: Run) -> None:
    """This process's share of every remaining step, built in `num_workers` loader workers."""
    cfg, accelerator = run.cfg, run.accelerator
    # Segment ids only for students that have more than one (BERT); XLM-R, DistilBERT, DeBERTa-v3 none.
    segments = getattr(accelerator.unwrap_model(run.model).student.config, "type_vocab_size", 0) > 1
    run.data = StepData(run.features, run.schedule, accelerator.process_index, accelerator.num_processes, cfg,
                        run.tokenizer, segments)
    run.loader = torch.utils.data.DataLoader(run.data, batch_size=None, sampler=range(run.start, run.total_steps),
                                             num_workers=cfg.num_workers, collate_fn=_identity,
                                             prefetch_factor=2 if cfg.num_workers else None,
                                             persistent_workers=False,
                                             # Its own generator: creating the iterator must not draw from
                                             # the global RNG (dropout), or a resumed run would diverge.
                                             generator=torch.Generator().manual_seed(cfg.seed))


def loop(run: Run) -> None:
    """Every remaining step: train it, log it, checkpoint on schedule."""
    cfg, out = run.cfg, run.out
    bar = tqdm(total=run.total_steps, initial=run.start, desc="train", unit="step",
               disable=not (run.progress and run.main), dynamic_ncols=True)
    run.model.train()
    watch = CollapseWatch(cfg.heads.out, cfg.heads.teacher, cfg.senta.center)
    tick = time.perf_counter()
    for step, parts in zip(range(run.start, run.total_steps), run.loader):
        got_data = time.perf_counter()
        raise_failure(parts)
        if not run.features.runs_in_workers:
            parts = [run.data.build(part) for part in parts]
        logs = train_step(run, step, parts)
        now = time.perf_counter()
        logs.update(step=step + 1, epoch=round((step + 1) / run.schedule.steps_per_epoch, 4),
                    data_wait=round(got_data - tick, 4), step_seconds=round(now - tick, 4))
        tick = now
        if run.main:
            append_metrics(out / "metrics.csv", logs)
            shown = {"loss": f"{logs['loss']:.4f}", "lr": f"{logs['lr']:.2e}"}
            if cfg.head_warmup_steps:   # the encoder's lr is 0 during the warm-up; show the heads' too
                shown["lr_heads"] = f"{logs['lr_heads']:.2e}"
            bar.set_postfix(shown)
            bar.update(1)
            for message in watch(logs):
                bar.write(message, file=sys.stderr)
            if step + 1 == cfg.head_warmup_steps:
                bar.write(report_head_phase(out, cfg.head_warmup_steps), file=sys.stderr)
        if run.trackers:
            run.accelerator.log({k: v for k, v in logs.items() if k != "step" and v is not None}, step=step + 1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == run.total_steps:
            save_checkpoint(out, step + 1, run.model, run.optimizer, run.scheduler, run.meta, run.accelerator,
                            cfg.keep_checkpoints, writes=run.folder.writes)
    bar.close()


def finish(run: Run) -> None:
    """The whole student saved (by the main process), every process waiting for it."""
    if run.main:
        save_student(run.out, run.accelerator.unwrap_model(run.model), run.tokenizer, run.meta, run.features.manifests,
                     run.features.teacher_source, run.cfg.student, run.cfg.trust_remote_code)
    run.accelerator.wait_for_everyone()


def train_step(run: Run, step: int, parts: list[StudentBatch]) -> dict:
    """One optimiser step over this process's micro-batches, with the exact global weighting above."""
    counts = _counts(run, parts)
    logged = {o.name: torch.zeros((), dtype=torch.float64, device=run.accelerator.device) for o in run.terms.terms}
    indicators: dict = {}
    for m, part in enumerate(parts):
        indicators.update(_micro_batch(run, step, m, part, counts, logged))
    grad_norm, skipped, used = _optimiser_step(run, step, logged, parts)
    return _step_logs(run, logged, grad_norm, skipped, used, indicators)


@dataclass
class _Counts:
    """What each term averages over (masked tokens, anchors, sentences), per micro-batch [micro, term]:
    this process's (`local`) and summed over processes (`across`, `totals` per term)."""
    local: torch.Tensor
    across: torch.Tensor
    totals: torch.Tensor

    def weight(self, m: int, j: int, term, world: int) -> float:
        """The backward weight of term j on micro-batch m that makes the step's loss the exact global mean."""
        if not self.totals[j]:
            return 0.0
        if term.spans_batch:
            # Every process computes the same loss over the gathered micro-batch; all_gather's
            # backward sums the processes' gradients and DDP divides by world: net weight 1.
            return float(self.across[m, j] / self.totals[j])
        return float(self.local[m, j] * world / self.totals[j])


def _counts(run: Run, parts: list[StudentBatch]) -> _Counts:
    """One all-reduce a step gives the weights of an exact global mean."""
    local = torch.tensor([[o.count(p) for o in run.terms.terms] for p in parts], dtype=torch.float64)
    across = run.accelerator.reduce(local.to(run.accelerator.device), reduction="sum").cpu()
    return _Counts(local, across, across.sum(0))


def _micro_batch(run: Run, step: int, m: int, part: StudentBatch, counts: _Counts, logged: dict) -> dict:
    """Forward and backward of micro-batch m (DDP syncs gradients on the last one); each term's
    weighted value is added to `logged`; returns the terms' indicators."""
    accelerator, model, chosen = run.accelerator, run.model, run.terms.terms
    world = accelerator.num_processes
    gather = lambda t: _gather_with_grad(t, accelerator)   # noqa: E731
    batch = part.to(accelerator.device)
    indicators: dict = {}
    sync = m == counts.local.shape[0] - 1
    with (contextlib.nullcontext() if sync else accelerator.no_sync(model)):
        out = model(batch, tuple(o.name for o in chosen), step < run.cfg.head_warmup_steps)
        loss = 0.0
        for j, o in enumerate(chosen):
            value = o.loss(out, gather)
            back = counts.weight(m, j, o, world)
            if _any(not torch.isfinite(value.detach()).item(), accelerator):
                raise TrainingError(_nan_message(step, m, o, value, part))
            loss = loss + o.weight * back * value
            logged[o.name] += value.detach().double() * (back / world)
        for o in chosen:
            indicators.update(o.indicators(out.get(o.name, {}), gather))
        accelerator.backward(loss)
    return indicators


def _optimiser_step(run: Run, step: int, logged: dict, parts: list[StudentBatch]):
    """Clip, check and step; returns (grad norm, whether fp16's scaler skipped the step, the lr of each group)."""
    accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
    if step < run.cfg.head_warmup_steps:
        # The head phase: the MLM decoder is tied to the word embeddings, so they got a gradient through
        # it; dropped, so that AdamW keeps no moments for the encoder from a phase in which it is frozen.
        for p in accelerator.unwrap_model(model).encoder.parameters():
            p.grad = None
    # Finite or nothing: a finite loss can still give an inf/NaN gradient (a huge cached value), and
    # clipping would turn it into a NaN or a zero update. The norm (clip at inf = measure only) must be
    # finite on every process before the optimiser may step.
    # With fp16 the norm is of the unscaled gradients; an inf there is the loss scale overflowing, not
    # bad data: the scaler skips that step and lowers the scale (a NaN *loss* stopped the run above).
    clip = run.cfg.max_grad_norm if run.cfg.max_grad_norm > 0 else math.inf
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
    overflow = _any(not torch.isfinite(grad_norm).item(), accelerator)
    if overflow and accelerator.scaler is None:
        optimizer.zero_grad(set_to_none=True)
        raise TrainingError(_grad_message(step, grad_norm, logged, parts, accelerator))
    used = {g["name"]: g["lr"] for g in optimizer.param_groups}     # the lr of this step
    scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else None
    optimizer.step()                  # under fp16, accelerate's optimizer steps through the scaler
    # The scaler lowers its scale exactly when it skipped the step (it found an inf/NaN gradient).
    skipped = scale is not None and accelerator.scaler.get_scale() < scale
    if not skipped:                   # a skipped step leaves the schedule where it was (as transformers' Trainer)
        run.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, skipped, used


def _step_logs(run: Run, logged: dict, grad_norm, skipped: bool, used: dict, indicators: dict) -> dict:
    """The step's row of metrics.csv: each term's global mean, L, the lrs, the norm, the indicators."""
    reduced = {o: run.accelerator.reduce(v, reduction="sum").item() for o, v in logged.items()}
    logs = {name: reduced.get(name) for name in (*objs.names(), objs.TeacherHeadsLoss.name)}
    logs["loss"] = sum(o.weight * reduced[o.name] for o in run.terms.terms)
    logs["lr"], logs["lr_heads"] = used.get("encoder", 0.0), used.get("heads", 0.0)
    logs["grad_norm"] = float(grad_norm) if grad_norm is not None else None
    logs["skipped"] = int(skipped)
    logs.update(indicators)
    return logs


def refuse_sharded_engines() -> None:
    """FSDP and DeepSpeed shard the optimiser state, which mmkd's checkpoints (one optimizer.pt from the
    writer) and its gathered StrucA would not survive: refused before any model loads."""
    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
                      ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")):
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise TrainingError(f"{name} is not supported by mmkd train (its checkpoints hold whole optimiser "
                                "states): use plain DDP (`accelerate launch --multi_gpu`, one or several machines), "
                                "with mixed_precision=bf16 or fp16 and grad_accum for memory")


def _start_fresh_head(student, tokenizer, features, pairs: int, main: bool) -> None:
    """A fresh MLM head's output bias from the unigram counts of the first `pairs` pairs of every corpus
    (both sides; the same on every process)."""
    keys = [(c, 0, i) for c, n in enumerate(features.sizes) for i in range(min(n, pairs))]
    _, english, targets = features.text(keys)
    texts = list(english) + list(targets)
    if start_fresh_head(student, tokenizer, texts):
        if main:
            say(f"TLM: the fresh MLM head's output bias starts at the log unigram frequencies of {len(keys)} pairs "
                "(tlm.fresh_head=unigram)", once=True)
    elif main:
        say("warning: TLM: the fresh MLM head has no output bias to start from unigram counts; it starts random",
            once=True)


def _check_capacity(cfg: TrainConfig, accelerator) -> None:
    """max_length against the student's positions, batch_size against memory: before any work."""
    config = load_config(cfg.student, cfg.trust_remote_code, "student")
    check_length("max_length", cfg.max_length, config, f"student {cfg.student}")
    if cfg.online_teacher:
        check_length("teacher_max_length", cfg.teacher_max_length,
                     load_config(cfg.online_teacher, cfg.trust_remote_code, "teacher"), f"teacher {cfg.online_teacher}")
    micro = -(-cfg.batch_size // (accelerator.num_processes * cfg.grad_accum))
    check_batch(cfg.batch_size, micro, cfg.max_length, config, accelerator.device)


def report_head_phase(out: Path, steps: int) -> str:
    """At the end of the head phase: each objective's loss (what its fresh heads were fitted to) at the
    phase's first and last step, from metrics.csv, written to `head_phase.json`; one line for the log."""
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    first, last = rows.get(1, {}), rows.get(steps, {})
    report = {name: {"first": float(first[name]), "last": float(last[name])}
              for name in (*objs.names(), objs.TeacherHeadsLoss.name)
              if first.get(name) not in (None, "") and last.get(name) not in (None, "")}
    write_text(out / "head_phase.json", json.dumps({"steps": steps, "losses": report}, indent=2) + "\n")
    shown = ", ".join(f"{n} {v['first']:.3f} -> {v['last']:.3f}" for n, v in report.items())
    return f"head phase done ({steps} steps, encoder frozen): {shown}"


def _identity(x):
    return x


def _gather_with_grad(t: torch.Tensor, accelerator) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return t
    return torch.cat(dist_fn.all_gather(t.contiguous()), dim=0)


def _any(flag: bool, accelerator) -> bool:
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor(1.0 if flag else 0.0, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


def _grad_message(step, norm, logged, parts: list[StudentBatch], accelerator) -> str:
    keys = [k for part in parts for k in part.first_keys(next(iter(part.keys)))][:8]
    out = accelerator.project_dir
    latest = latest_checkpoint(out) if out else None
    kept = f"the last checkpoint, {latest.name}, is intact" if latest else "no checkpoint was written yet"
    losses = ", ".join(f"{o} {v.item():.4g}" for o, v in logged.items())
    return (f"step {step + 1}: the gradient norm is {float(norm)} (non-finite on this or another process) although "
            f"the losses were finite ({losses} on this process); first (corpus, pair_id) of this process's pairs: "
            f"{keys}. Stopped before the update; {kept}. A corrupt cache value is the usual cause: run "
            "`mmkd cache verify` on the caches")


def _nan_message(step, micro, objective: Objective, value, part: StudentBatch) -> str:
    return (f"step {step + 1}, micro-batch {micro}: the {objective.name} loss is {value.item()} "
            f"(non-finite on this or another process); first (corpus, pair_id) of the batch: "
            f"{part.first_keys(objective.input.name)}. Stopped before the update; the last checkpoint is intact.")
