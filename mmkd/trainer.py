"""`mmkd train`: the student against the teacher cache with L = TLM + XWCL + SentA + α·StrucA (eq. 6).

Distribution (accelerate/DDP) is exact: every term is the mean over the *global* batch. Before a
step each process counts what its micro-batches average over (masked tokens, anchors,
sentences); one all-reduce gives the global counts; micro-batch m's term is weighted by
n_m / N_global × world (DDP divides by world when it averages gradients). StrucA's similarity
matrices span the whole global micro-batch: the heads' outputs are all-gathered with gradient.
So 2 processes × 128 pairs give the gradient of 1 process × 256 pairs, up to float rounding.

This module is the loop. What a step reads is mmkd/step_data.py; what it computes is each
objective's (mmkd/objectives/); the run folder's guards are mmkd/run_folder.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from mmkd import __version__
from mmkd import objectives as objs
from mmkd.atomic import write_text
from mmkd.batching import StudentBatch
from mmkd.config import TrainConfig, TrainingError, validate
from mmkd.errors import CacheError
from mmkd.monitor import CollapseWatch, append_metrics, trim_metrics
from mmkd.objectives import Objective
from mmkd.precision import resolve as resolve_precision
from mmkd import trackers as track


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train; returns the run folder. The trained student is in `<run>/student/`."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from tqdm.auto import tqdm
    from transformers import AutoModelForMaskedLM

    from mmkd.cache.integrity import verify_before_training
    from mmkd.checkpoint import agreed_checkpoint, load_checkpoint, save_checkpoint
    from mmkd.dist import use_cpu
    from mmkd.features import open_features
    from mmkd.hf import load, load_tokenizer, missing_parts
    from mmkd.model import build_model
    from mmkd.optim import adamw, lr_schedule, param_groups
    from mmkd.run_folder import RunFolder
    from mmkd.schedule import BalancedSchedule
    from mmkd.step_data import StepData, raise_failure
    from mmkd.student import save_student
    from mmkd.words import require_fast
    from mmkd.writers import gather

    validate(cfg)
    refuse_sharded_engines()
    out = Path(cfg.out)
    cpu = use_cpu()
    mixed = resolve_precision(cfg.mixed_precision, cpu)
    trackers = track.resolve(cfg.log_with)      # a tracker not installed: refused before any work
    chosen = objs.chosen(cfg.without, cfg)
    # Unused parameters: removed objectives leave heads (or the MLM head) without gradients.
    # The head phase leaves the encoder without gradients.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=len(cfg.objectives) < len(objs.OBJECTIVES)
                                        or cfg.head_warmup_steps > 0)
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, project_dir=str(out),
                              log_with=trackers or None, kwargs_handlers=[ddp])
    main = accelerator.is_main_process

    def opened():
        features = open_features(cfg, device=accelerator.device)
        _check_capacity(cfg, accelerator)       # before any work; a refusal leaves the folder as it was
        return features

    run = RunFolder(out, accelerator)
    features = run.open(cfg, resume, overwrite, opened)
    with run:
        if cfg.verify_cache and not cfg.online_teacher:
            try:
                verify_before_training(features.caches, accelerator.process_index,
                                       lambda value: gather(value, accelerator), lambda flag: _any(flag, accelerator),
                                       lambda name: str(out / "verified-cache" / name), progress and main)
            except CacheError as e:
                raise TrainingError(f"{e}; training did not start") from None
        tokenizer = load_tokenizer(cfg.student, cfg.trust_remote_code)
        require_fast(tokenizer)
        torch.manual_seed(cfg.seed)
        loaded: dict = {}
        student = load(AutoModelForMaskedLM, cfg.student, "student", cfg.trust_remote_code, tokenizer=tokenizer,
                       head_trained="tlm" in cfg.objectives, info_out=loaded)
        if "tlm" in cfg.objectives and missing_parts(student, loaded)[2] and cfg.tlm.fresh_head == "unigram":
            _start_fresh_head(student, tokenizer, features, cfg.tlm.unigram_pairs, main)
        for o in chosen:
            o.check(student, features.hidden_size, cfg)
            o.check_features(features, cfg)
        model = build_model(student, features.hidden_size, cfg)
        if not objs.TEACHER_HEAD_MODES[cfg.teacher_heads].trained:
            for head in model.teacher_projectors():
                head.requires_grad_(False)
        schedule = BalancedSchedule(features.sizes, cfg.batch_size, cfg.seed)
        total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * schedule.steps_per_epoch))
        if cfg.head_warmup_steps and tuple(o.name for o in chosen) == ("xwcl",) and not hasattr(model, "word_map"):
            raise TrainingError("--head-warmup-steps: XWCL alone on a teacher of the student's width has no fresh head "
                                "to fit (it compares the states directly); set --head-warmup-steps 0")
        optimizer = adamw(param_groups(model, cfg.weight_decay, cfg.lr, cfg.head_lr), cfg.lr)
        # Stepped by us once per optimiser step (not prepared: accelerate would step it per process).
        scheduler = lr_schedule(optimizer, total_steps, round(cfg.warmup_ratio * total_steps), cfg.head_warmup_steps)
        model, optimizer = accelerator.prepare(model, optimizer)

        run_meta = {"config": dataclasses.asdict(cfg), "caches": features.identities, "mmkd_version": __version__,
                    "total_steps": total_steps, "steps_per_epoch": schedule.steps_per_epoch,
                    "processes": accelerator.num_processes}
        start = 0
        existing = agreed_checkpoint(out, accelerator) if resume else None
        if existing:
            run.check_resume(existing, cfg, features.identities)
            start = load_checkpoint(existing, model, optimizer, scheduler, accelerator)["step"]
        if run.writes:           # every copy of a node-local run folder is a run folder
            write_text(out / "config.json", json.dumps(run_meta, indent=2, sort_keys=True) + "\n")
        if main:
            if start and not (out / "metrics.csv").is_file():
                from mmkd.console import say
                say(f"warning: {out / 'metrics.csv'} is missing (the run was moved without it?): the rows of steps "
                    f"1-{start} are lost; it starts again at step {start + 1}")
            trim_metrics(out / "metrics.csv", start)
        if trackers:
            from mmkd.settings import dotted
            record = track.start(accelerator, trackers, out, cfg.run_name,
                                 {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                                  for k, v in dotted(dataclasses.asdict(cfg)).items()}, resume)
            if run.writes:
                write_text(out / track.RECORD, json.dumps(record, indent=2) + "\n")

        # Segment ids only for students that have more than one (BERT); XLM-R, DistilBERT, DeBERTa-v3 none.
        segments = getattr(accelerator.unwrap_model(model).student.config, "type_vocab_size", 0) > 1
        data = StepData(features, schedule, accelerator.process_index, accelerator.num_processes, cfg, tokenizer,
                        segments)
        loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start, total_steps),
                                             num_workers=cfg.num_workers, collate_fn=_identity,
                                             prefetch_factor=2 if cfg.num_workers else None,
                                             persistent_workers=False,
                                             # Its own generator: creating the iterator must not draw from
                                             # the global RNG (dropout), or a resumed run would diverge.
                                             generator=torch.Generator().manual_seed(cfg.seed))
        bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not (progress and main),
                   dynamic_ncols=True)
        model.train()
        watch = CollapseWatch(cfg.head_out, cfg.teacher_heads, cfg.senta.center)
        tick = time.perf_counter()
        for step, parts in zip(range(start, total_steps), loader):
            got_data = time.perf_counter()
            raise_failure(parts)
            if not features.runs_in_workers:
                parts = [data.build(part) for part in parts]
            logs = train_step(step, parts, model, optimizer, scheduler, accelerator, cfg, chosen)
            now = time.perf_counter()
            logs.update(step=step + 1, epoch=round((step + 1) / schedule.steps_per_epoch, 4),
                        data_wait=round(got_data - tick, 4), step_seconds=round(now - tick, 4))
            tick = now
            if main:
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
            if trackers:
                accelerator.log({k: v for k, v in logs.items() if k != "step" and v is not None}, step=step + 1)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total_steps:
                save_checkpoint(out, step + 1, model, optimizer, scheduler, run_meta, accelerator,
                                cfg.keep_checkpoints, writes=run.writes)
        bar.close()
        if main:
            save_student(out, accelerator.unwrap_model(model), tokenizer, run_meta, features.manifests,
                         features.teacher_source, cfg.student, cfg.trust_remote_code)
        accelerator.wait_for_everyone()
    # Not accelerator.end_training(): it also destroys the process group, and a process may train
    # again (the ablation sweep runs five trainings in one `accelerate launch`).
    for tracker in accelerator.trackers:
        tracker.finish()
    return out


def train_step(step: int, parts: list[StudentBatch], model, optimizer, scheduler, accelerator, cfg: TrainConfig,
               chosen: tuple[Objective, ...]) -> dict:
    """One optimiser step over this process's micro-batches, with the exact global weighting above."""
    world = accelerator.num_processes
    device = accelerator.device
    names = tuple(o.name for o in chosen)
    gather = lambda t: _gather_with_grad(t, accelerator)   # noqa: E731
    # What each term averages over (masked tokens, anchors, sentences), per micro-batch, here and
    # summed over processes: one all-reduce a step gives the weights of an exact global mean.
    local = torch.tensor([[o.count(p) for o in chosen] for p in parts], dtype=torch.float64)
    across = accelerator.reduce(local.to(device), reduction="sum").cpu()       # [micro, objective]
    totals = across.sum(0)
    logged = {o.name: torch.zeros((), dtype=torch.float64, device=device) for o in chosen}
    stds = {}
    for m, part in enumerate(parts):
        batch = part.to(device)
        sync = m == len(parts) - 1
        with (contextlib.nullcontext() if sync else accelerator.no_sync(model)):
            out = model(batch, names, step < cfg.head_warmup_steps)
            loss = 0.0
            for j, o in enumerate(chosen):
                value = o.loss(out, cfg, gather)
                if not totals[j]:
                    back = 0.0
                elif o.spans_batch(cfg):
                    # Every process computes the same loss over the gathered micro-batch; all_gather's
                    # backward sums the processes' gradients and DDP divides by world: net weight 1.
                    back = float(across[m, j] / totals[j])
                else:
                    back = float(local[m, j] * world / totals[j])
                if _any(not torch.isfinite(value.detach()).item(), accelerator):
                    raise TrainingError(_nan_message(step, m, o, value, part))
                loss = loss + o.weight(cfg) * back * value
                logged[o.name] += value.detach().double() * (back / world)
            for o in chosen:
                stds.update(o.indicators(out.get(o.name, {}), cfg, gather))
            accelerator.backward(loss)
    if step < cfg.head_warmup_steps:
        # The head phase: the MLM decoder is tied to the word embeddings, so they got a gradient through
        # it; dropped, so that AdamW keeps no moments for the encoder from a phase in which it is frozen.
        for p in accelerator.unwrap_model(model).encoder.parameters():
            p.grad = None
    # Finite or nothing: a finite loss can still give an inf/NaN gradient (a huge cached value), and
    # clipping would turn it into a NaN or a zero update. The norm (clip at inf = measure only) must be
    # finite on every process before the optimiser may step.
    # With fp16 the norm is of the unscaled gradients; an inf there is the loss scale overflowing, not
    # bad data: the scaler skips that step and lowers the scale (a NaN *loss* stopped the run above).
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
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
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    reduced = {o: accelerator.reduce(v, reduction="sum").item() for o, v in logged.items()}
    logs = {name: reduced.get(name) for name in (*objs.names(), objs.TEACHER_HEADS_LOSS.name)}
    logs["loss"] = sum(o.weight(cfg) * reduced[o.name] for o in chosen)
    logs["lr"], logs["lr_heads"] = used.get("encoder", 0.0), used.get("heads", 0.0)
    logs["grad_norm"] = float(grad_norm) if grad_norm is not None else None
    logs["skipped"] = int(skipped)
    logs.update(stds)
    return logs


def refuse_sharded_engines() -> None:
    """FSDP and DeepSpeed shard the optimiser state, which mmkd's checkpoints (one optimizer.pt from the
    writer) and its gathered StrucA would not survive: refused before any model loads."""
    import os

    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
                      ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")):
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise TrainingError(f"{name} is not supported by mmkd train (its checkpoints hold whole optimiser "
                                "states): use plain DDP (`accelerate launch --multi_gpu`, one or several machines), "
                                "with --mixed-precision bf16 or fp16 and --grad-accum for memory")


def _start_fresh_head(student, tokenizer, features, pairs: int, main: bool) -> None:
    """A fresh MLM head's output bias from the unigram counts of the first `pairs` pairs of every corpus
    (both sides; the same on every process)."""
    from mmkd.console import say
    from mmkd.objectives.tlm import start_fresh_head

    keys = [(c, 0, i) for c, n in enumerate(features.sizes) for i in range(min(n, pairs))]
    _, english, targets = features.text(keys)
    texts = list(english) + list(targets)
    if start_fresh_head(student, tokenizer, texts):
        if main:
            say(f"TLM: the fresh MLM head's output bias starts at the log unigram frequencies of {len(keys)} pairs "
                "(--tlm-fresh-head unigram)", once=True)
    elif main:
        say("warning: TLM: the fresh MLM head has no output bias to start from unigram counts; it starts random",
            once=True)


def _check_capacity(cfg: TrainConfig, accelerator) -> None:
    """--max-length against the student's positions, --batch-size against memory: before any work."""
    from mmkd.capacity import check_batch, check_length
    from mmkd.hf import load_config

    config = load_config(cfg.student, cfg.trust_remote_code, "student")
    check_length("--max-length", cfg.max_length, config, f"student {cfg.student}")
    if cfg.online_teacher:
        check_length("--teacher-max-length", cfg.teacher_max_length,
                     load_config(cfg.online_teacher, cfg.trust_remote_code, "teacher"), f"teacher {cfg.online_teacher}")
    micro = -(-cfg.batch_size // (accelerator.num_processes * cfg.grad_accum))
    check_batch(cfg.batch_size, micro, cfg.max_length, config, accelerator.device)


def report_head_phase(out: Path, steps: int) -> str:
    """At the end of the head phase: each objective's loss (what its fresh heads were fitted to) at the
    phase's first and last step, from metrics.csv, written to `head_phase.json`; one line for the log."""
    import csv

    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    first, last = rows.get(1, {}), rows.get(steps, {})
    report = {name: {"first": float(first[name]), "last": float(last[name])}
              for name in (*objs.names(), objs.TEACHER_HEADS_LOSS.name)
              if first.get(name) not in (None, "") and last.get(name) not in (None, "")}
    write_text(out / "head_phase.json", json.dumps({"steps": steps, "losses": report}, indent=2) + "\n")
    shown = ", ".join(f"{n} {v['first']:.3f} -> {v['last']:.3f}" for n, v in report.items())
    return f"head phase done ({steps} steps, encoder frozen): {shown}"


def _identity(x):
    return x


def _gather_with_grad(t: torch.Tensor, accelerator) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return t
    import torch.distributed.nn.functional as dist_fn
    return torch.cat(dist_fn.all_gather(t.contiguous()), dim=0)


def _any(flag: bool, accelerator) -> bool:
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor(1.0 if flag else 0.0, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


def _grad_message(step, norm, logged, parts: list[StudentBatch], accelerator) -> str:
    from mmkd.checkpoint import latest_checkpoint

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
