"""`mmkd train`: the student against the teacher cache with L = TLM + XWCL + SentA + α·StrucA (eq. 6).

Distribution (accelerate/DDP) is exact: every term is the mean over the *global* batch. Before a
step each process counts what its micro-batches average over (masked tokens, anchors,
sentences); one all-reduce gives the global counts; micro-batch m's term is weighted by
n_m / N_global × world (DDP divides by world when it averages gradients). StrucA's similarity
matrices span the whole global micro-batch: the heads' outputs are all-gathered with gradient.
So 2 processes × 128 pairs give the gradient of 1 process × 256 pairs, up to float rounding.

A run's life: `setup(cfg) -> Run` in named phases (mmkd/run_setup.py), then `loop(run)`, then
`finish(run)`. What a step reads is
mmkd/step_data.py; what it computes is each objective's (mmkd/objectives/); the run folder's guards
are mmkd/run_folder.py.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmkd import objectives as objs
from mmkd.atomic import write_text
from mmkd.batching import StudentBatch
from mmkd.checkpoint import latest_checkpoint, save_checkpoint
from mmkd.config import TrainConfig, TrainingError, differences, from_saved
from mmkd.dist import any_process, gather_with_grad
from mmkd.monitor import CollapseWatch, append_metrics
from mmkd.objectives import Objective
from mmkd.run_setup import Run, setup
from mmkd.step_data import raise_failure
from mmkd.student import save_student


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
    gather = lambda t: gather_with_grad(t, accelerator)   # noqa: E731
    batch = part.to(accelerator.device)
    indicators: dict = {}
    sync = m == counts.local.shape[0] - 1
    with (contextlib.nullcontext() if sync else accelerator.no_sync(model)):
        out = model(batch, tuple(o.name for o in chosen), step < run.cfg.head_warmup_steps)
        loss = 0.0
        for j, o in enumerate(chosen):
            value = o.loss(out, gather)
            back = counts.weight(m, j, o, world)
            if any_process(not torch.isfinite(value.detach()).item(), accelerator):
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
    overflow = any_process(not torch.isfinite(grad_norm).item(), accelerator)
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
