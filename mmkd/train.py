"""`mmkd train`: the student against the teacher cache with L = TLM + XWCL + SentA + α·StrucA (eq. 6).

Distribution (accelerate/DDP) is exact: every term is the mean over the *global* batch. Before a
step each process counts what its micro-batches average over (masked tokens, anchors,
sentences); one all-reduce gives the global counts; micro-batch m's term is weighted by
n_m / N_global × world (DDP divides by world when it averages gradients). StrucA's similarity
matrices span the whole global micro-batch: the heads' outputs are all-gathered with gradient.
So 2 processes × 128 pairs give the gradient of 1 process × 256 pairs, up to float rounding.
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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmkd import __version__
from mmkd import objectives as objs
from mmkd.batching import BatchConfig, StudentBatch, build_student_batch, random_token_ids
from mmkd.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mmkd.errors import MMKDError
from mmkd.schedule import BalancedSchedule, split_by_length, split_for
from mmkd.features import TeacherFeatures, open_features
from mmkd.paths import default_data_dir


class TrainingError(MMKDError):
    pass


@dataclass
class TrainConfig:
    cache: list[str] = field(default_factory=list)      # cache folders or URLs, or roots holding several
    corpora: list[str] = field(default_factory=list)    # prepared corpora (online mode only)
    online_teacher: str | None = None                   # run this teacher on the fly instead of a cache
    student: str = "bert-base-multilingual-cased"
    out: str = "runs/mmkd"
    data_dir: str = field(default_factory=default_data_dir)
    epochs: float = 15.0                                # paper 4.1
    max_steps: int | None = None                        # overrides epochs
    batch_size: int = 256                               # global, paper 4.1
    grad_accum: int = 1                                 # micro-batches per step and process
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    mlm_probability: float = 0.15
    alpha: float = 1.0
    xwcl_temperature: float = 1.0
    xwcl_similarity: str = "dot"
    struca_temperature: float = 0.1
    senta_center: bool = False                          # SentA on batch-centred vectors (not the paper)
    without: list[str] = field(default_factory=list)
    teacher_heads: str = "structure"                    # frozen | train | structure | guard (mmkd.objectives.TEACHER_HEADS)
    teacher_head_weight: float = 1.0                    # weight of the teacher heads' own loss (structure, guard)
    head_hidden: int = 768
    head_out: int = 128
    head_norm: str = "none"
    head_warmup_steps: int = 0                          # encoder lr 0 for the first N steps (0 = the paper)
    teacher_layer: int = -1                             # online teacher only; a cache records its own
    teacher_max_length: int = 128
    seed: int = 0
    mixed_precision: str = "auto"                       # auto = bf16 on CUDA, fp32 on CPU
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    num_workers: int = 2
    log_with: str = "auto"                              # auto | tensorboard | none
    trust_remote_code: bool = False
    verify_cache: bool = True                           # checksums of every shard before first use (once per cache)
    assign: str = "length"                              # pairs to processes: length (little padding) | stride
    xwcl_map: str = "auto"                              # auto (linear iff widths differ) | linear | none

    @property
    def objectives(self) -> tuple[str, ...]:
        """The names of the objectives trained, in the fixed order of mmkd.objectives.OBJECTIVES."""
        return tuple(o.name for o in objs.chosen(self.without))


# Settings a resumed run may change without changing its results.
# `out` too: a run folder identifies itself by its checkpoints, so a moved folder or another spelling
# of its path resumes.
_RESUMABLE = {"num_workers", "log_with", "keep_checkpoints", "checkpoint_every", "data_dir", "cache", "corpora",
              "out", "verify_cache"}

def metric_columns() -> list[str]:
    """metrics.csv's columns: each objective's loss and collapse indicators, from mmkd.objectives."""
    return (["step", "epoch", "loss", *objs.names(), objs.HEADS.name, "lr", "lr_heads", "grad_norm"]
            + [n for o in objs.OBJECTIVES for n in o.indicator_names] + ["data_wait", "step_seconds"])


def validate(cfg: TrainConfig) -> None:
    bad = [w for w in cfg.without if w not in objs.names()]
    if bad:
        raise TrainingError(f"--without {bad[0]!r}: choose from {', '.join(objs.names())}")
    if not cfg.objectives:
        raise TrainingError("every objective was removed with --without; nothing to train")
    if cfg.teacher_heads not in objs.TEACHER_HEADS:
        raise TrainingError(f"--teacher-heads {cfg.teacher_heads!r}: choose {', '.join(objs.TEACHER_HEADS)}")
    if cfg.xwcl_map not in ("auto", "linear", "none"):
        raise TrainingError(f"--xwcl-map {cfg.xwcl_map!r}: choose auto, linear or none")
    if cfg.assign not in ("length", "stride"):
        raise TrainingError(f"--assign {cfg.assign!r}: choose length or stride")
    if cfg.xwcl_similarity not in ("dot", "cosine"):
        raise TrainingError(f"--xwcl-similarity {cfg.xwcl_similarity!r}: choose dot or cosine")
    for flag, value in (("--batch-size", cfg.batch_size), ("--grad-accum", cfg.grad_accum),
                        ("--max-length", cfg.max_length), ("--checkpoint-every", cfg.checkpoint_every)):
        if value < 1:
            raise TrainingError(f"{flag} {value}: must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise TrainingError(f"--max-steps {cfg.max_steps}: must be at least 1")
    if cfg.epochs <= 0 or cfg.lr <= 0:
        raise TrainingError(f"--epochs {cfg.epochs} / --lr {cfg.lr}: must be positive")
    if cfg.batch_size % cfg.grad_accum:
        raise TrainingError(f"--batch-size {cfg.batch_size} is not a multiple of --grad-accum {cfg.grad_accum}")
    if bool(cfg.cache) == bool(cfg.online_teacher):
        raise TrainingError("give either --cache (the teacher cache) or --online-teacher NAME (with --corpus)")


class StepData(torch.utils.data.Dataset):
    """Item `step` = this process's micro-batches of that step. With a cache, workers read the
    teacher features and build the student tensors; with an online teacher the main process does
    (the teacher runs on the training device)."""

    def __init__(self, features: TeacherFeatures, schedule: BalancedSchedule,
                 rank: int, world: int, cfg: TrainConfig, tokenizer, segments: bool = True):
        self.features, self.schedule, self.rank, self.world = features, schedule, rank, world
        self.cfg, self.tokenizer = cfg, tokenizer
        self.batch_cfg = BatchConfig(cfg.max_length, cfg.mlm_probability, cfg.seed, segments)
        self.random_ids = random_token_ids(tokenizer)

    def __len__(self) -> int:
        return 1 << 62

    def raw(self, step: int) -> list[tuple[list, list]]:
        """This process's micro-batches of `step`: for each, the (corpus_index, stream_index, pair_id)
        keys of its pair inputs and of its sentence input. By position (`--assign stride`, or one
        process without accumulation) they are the same pairs; by length, each input's pairs are
        the micro-batch's members of its length range, so each forward pads little."""
        batch = self.schedule.batch(step)
        if self.cfg.assign == "stride" or self.world * self.cfg.grad_accum == 1:
            return [(keys, keys) for keys in split_for(batch, self.rank, self.world, self.cfg.grad_accum)]
        pair_len, sent_len = self.lengths(batch)
        return list(zip(split_by_length(batch, pair_len, self.rank, self.world, self.cfg.grad_accum),
                        split_by_length(batch, sent_len, self.rank, self.world, self.cfg.grad_accum)))

    def lengths(self, keys) -> tuple[list[int], list[int]]:
        """Sub-tokens of each pair's `s t` and of its `t` (no special tokens): what the pair inputs
        and the sentence input pad to. Every process computes them for the whole global batch, so
        all agree on the assignment."""
        pairs = [(c, p) for c, _, p in keys]
        english = self.tokenizer(self.features.words(pairs), is_split_into_words=True, add_special_tokens=False)
        target = [len(ids) for ids in self.tokenizer(self.features.targets(pairs), add_special_tokens=False)["input_ids"]]
        return [len(a) + b for a, b in zip(english["input_ids"], target)], target

    def finish(self, part) -> StudentBatch:
        keys, sent_keys = part
        pairs = [(c, p) for c, _, p in keys]
        sentences = None
        if sent_keys != keys:
            sent_pairs = [(c, p) for c, _, p in sent_keys]
            sentences = (self.features.get(sent_pairs), self.features.targets(sent_pairs), sent_keys)
        return build_student_batch(self.tokenizer, self.features.get(pairs), self.features.targets(pairs), keys,
                                   objs.inputs(objs.chosen(self.cfg.without)), self.batch_cfg, self.random_ids,
                                   sentences)

    def __getitem__(self, step: int):
        parts = self.raw(step)
        if self.features.runs_in_workers:
            return [self.finish(part) for part in parts]
        return parts


def _identity(x):
    return x


def _gather_with_grad(t: torch.Tensor, accelerator) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return t
    import torch.distributed.nn.functional as dist_fn
    return torch.cat(dist_fn.all_gather(t.contiguous()), dim=0)


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Four groups: (encoder | heads) x (decay | no decay). BERT practice: no weight decay on biases
    and LayerNorm weights. The MLM head's transform is a head; its decoder is tied to the
    encoder's word embeddings and so belongs to the encoder."""
    encoder = {id(p) for p in model.encoder.parameters()}
    groups = {(e, d): [] for e in ("encoder", "heads") for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name)
        groups[("encoder" if id(p) in encoder else "heads", decay)].append(p)
    return [{"params": ps, "weight_decay": weight_decay if d else 0.0, "name": e}
            for (e, d), ps in groups.items() if ps]


def _lr_schedule(optimizer, total: int, warmup: int, head_warmup: int):
    """Linear warm-up then linear decay (paper 4.1), for every group; with `head_warmup` > 0 the
    encoder groups keep lr 0 for the first `head_warmup` steps, so only the freshly initialised
    heads learn (then the usual schedule, from where it stands, applies to all)."""
    def base(step: int) -> float:
        if step < warmup:   # the formula of transformers' get_linear_schedule_with_warmup
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    def encoder(step: int) -> float:
        return 0.0 if step < head_warmup else base(step)

    lambdas = [encoder if g["name"] == "encoder" else base for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def config_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """The settings (other than those a resume may change) in which `cfg` differs from a run's saved
    config. A setting added after the run was made counts as its default there."""
    now, defaults = dataclasses.asdict(cfg), dataclasses.asdict(TrainConfig())
    return [f"{k}: run has {saved.get(k, defaults[k])!r}, now {now[k]!r}" for k in sorted(now)
            if k not in _RESUMABLE and saved.get(k, defaults[k]) != now[k]]


def _check_resume_config(saved: dict, cfg: TrainConfig, where: Path) -> None:
    diffs = config_differences(saved, cfg)
    if diffs:
        raise TrainingError(f"cannot resume {where}: the configuration differs:\n  " + "\n  ".join(diffs))


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train; returns the run folder. The trained student is in `<run>/student/`."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from tqdm.auto import tqdm
    from transformers import AutoModelForMaskedLM

    from mmkd.dist import use_cpu
    from mmkd.model import MMKDModel
    from mmkd.models import load, load_tokenizer
    from mmkd.words import require_fast

    validate(cfg)
    out = Path(cfg.out)
    cpu = use_cpu()
    mixed = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("no" if cpu else "bf16")
    log_with = cfg.log_with
    if log_with == "auto":
        import importlib.util
        log_with = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    objectives = cfg.objectives
    # Unused parameters: removed objectives leave heads (or the MLM head) without gradients.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=len(objectives) < len(objs.OBJECTIVES))
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, project_dir=str(out),
                              log_with=None if log_with == "none" else log_with, kwargs_handlers=[ddp])
    main = accelerator.is_main_process

    existing = latest_checkpoint(out)
    if existing and not resume and not overwrite:
        raise TrainingError(f"{out} already holds a run (checkpoint {existing.name}); pass --resume to "
                            "continue it or --overwrite to start again")
    if overwrite and main and out.exists():
        import shutil
        shutil.rmtree(out)
    accelerator.wait_for_everyone()

    features = open_features(cfg, device=accelerator.device)
    if cfg.verify_cache and not cfg.online_teacher:
        _verify_caches(features.caches, accelerator, out, progress and main)
    tokenizer = load_tokenizer(cfg.student, cfg.trust_remote_code)
    require_fast(tokenizer)
    torch.manual_seed(cfg.seed)
    student = load(AutoModelForMaskedLM, cfg.student, "student", cfg.trust_remote_code)
    needs_mlm_head = "masked_pair" in objs.inputs(objs.chosen(cfg.without))
    if needs_mlm_head and student.get_output_embeddings() is None:
        raise TrainingError(f"student {cfg.student!r} has no MLM head (no output embeddings): TLM needs a masked-LM "
                            "checkpoint (e.g. bert-base-multilingual-cased, xlm-roberta-base); or train --without tlm")
    widths_differ = student.config.hidden_size != features.hidden_size
    word_map = cfg.xwcl_map == "linear" or (cfg.xwcl_map == "auto" and widths_differ)
    for o in objs.chosen(cfg.without):
        if o.same_width and widths_differ and not word_map:
            raise TrainingError(f"{o.title} compares student and teacher states directly (eq. {o.equation}), so "
                                f"their sizes must match: student {student.config.hidden_size}, teacher "
                                f"{features.hidden_size}. Use --xwcl-map linear (or auto), a matching teacher, "
                                f"or --without {o.name}.")
    word_map = word_map and any(o.same_width for o in objs.chosen(cfg.without))
    model = MMKDModel(student, features.hidden_size, cfg.head_hidden, cfg.head_out, cfg.head_norm, word_map=word_map)
    if not objs.TEACHER_HEADS[cfg.teacher_heads].trained:
        for head in model.teacher_heads():
            head.requires_grad_(False)
    schedule = BalancedSchedule(features.sizes, cfg.batch_size, cfg.seed)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * schedule.steps_per_epoch))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    # Stepped by us once per optimiser step (not prepared: accelerate would step it per process).
    scheduler = _lr_schedule(optimizer, total_steps, round(cfg.warmup_ratio * total_steps), cfg.head_warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    run_meta = {"config": dataclasses.asdict(cfg), "caches": features.identities, "mmkd_version": __version__,
                "total_steps": total_steps, "steps_per_epoch": schedule.steps_per_epoch,
                "processes": accelerator.num_processes}
    start = 0
    if resume and existing:
        meta = load_checkpoint(existing, model, optimizer, scheduler, accelerator)
        _check_resume_config(meta["config"], cfg, existing)
        if meta["caches"] != features.identities:
            raise TrainingError(f"cannot resume {existing}: the run was trained on other caches/corpora "
                                f"({meta['caches']} vs {features.identities})")
        start = meta["step"]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(run_meta, indent=2, sort_keys=True) + "\n")
        _trim_metrics(out / "metrics.csv", start)
    if log_with != "none":
        accelerator.init_trackers("mmkd", config=_flat(dataclasses.asdict(cfg)))

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
    warned: set[str] = set()
    tick = time.perf_counter()
    step = start
    for step, parts in zip(range(start, total_steps), loader):
        got_data = time.perf_counter()
        if not features.runs_in_workers:
            parts = [data.finish(part) for part in parts]
        logs = _train_step(step, parts, model, optimizer, scheduler, accelerator, cfg)
        now = time.perf_counter()
        logs.update(step=step + 1, epoch=round((step + 1) / schedule.steps_per_epoch, 4),
                    data_wait=round(got_data - tick, 4), step_seconds=round(now - tick, 4))
        tick = now
        if main:
            _append_metrics(out / "metrics.csv", logs)
            shown = {"loss": f"{logs['loss']:.4f}", "lr": f"{logs['lr']:.2e}"}
            if cfg.head_warmup_steps:   # the encoder's lr is 0 during the warm-up; show the heads' too
                shown["lr_heads"] = f"{logs['lr_heads']:.2e}"
            bar.set_postfix(shown)
            bar.update(1)
            for message in collapse_warnings(logs, cfg.head_out, warned, cfg.teacher_heads, cfg.senta_center):
                bar.write(message, file=sys.stderr)
        if log_with != "none":
            accelerator.log({k: v for k, v in logs.items() if k != "step" and v is not None}, step=step + 1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total_steps:
            save_checkpoint(out, step + 1, model, optimizer, scheduler, run_meta, accelerator, cfg.keep_checkpoints)
    bar.close()
    if main:
        _save_student(out, accelerator.unwrap_model(model), tokenizer, run_meta, features, cfg)
    accelerator.wait_for_everyone()
    # Not accelerator.end_training(): it also destroys the process group, and a process may train
    # again (the ablation sweep runs five trainings in one `accelerate launch`).
    for tracker in accelerator.trackers:
        tracker.finish()
    return out


def _train_step(step, parts: list[StudentBatch], model, optimizer, scheduler, accelerator, cfg) -> dict:
    world = accelerator.num_processes
    device = accelerator.device
    chosen = objs.chosen(cfg.without, cfg)
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
            out = model(batch, names)
            loss = 0.0
            for j, o in enumerate(chosen):
                value = o.loss(out, batch, cfg, gather)
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
                stds.update(o.indicators(out))
            accelerator.backward(loss)
    # Finite or nothing: a finite loss can still give an inf/NaN gradient (a huge cached value), and
    # clipping would turn it into a NaN or a zero update. The norm (clip at inf = measure only) must be
    # finite on every process before the optimiser may step.
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
    if _any(not torch.isfinite(grad_norm).item(), accelerator):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingError(_grad_message(step, grad_norm, logged, parts, accelerator))
    used = {g["name"]: g["lr"] for g in optimizer.param_groups}     # the lr of this step
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    reduced = {o: accelerator.reduce(v, reduction="sum").item() for o, v in logged.items()}
    logs = {name: reduced.get(name) for name in (*objs.names(), objs.HEADS.name)}
    logs["loss"] = sum(o.weight(cfg) * reduced[o.name] for o in chosen)
    logs["lr"], logs["lr_heads"] = used.get("encoder", 0.0), used.get("heads", 0.0)
    logs["grad_norm"] = float(grad_norm) if grad_norm is not None else None
    logs.update(stds)
    return logs


def collapse_hint(name: str, teacher_heads: str | None = None, senta_center: bool | None = None) -> str:
    """What stops the collapse `name` reports, given the run's settings (None: not known)."""
    if name == "std_student_senta" and not senta_center:
        return ("plain SentA can be met by one output for every input; --senta-center removes that "
                "(docs/method.md, \"Defaults the paper leaves open\")")
    if teacher_heads == "train" or (name.startswith("std_teacher") and teacher_heads not in ("structure", "guard")):
        # `train` lets SentA/StrucA pull both sides onto one answer; frozen random heads can start narrow
        return "--teacher-heads structure or guard keeps the teacher heads spread (docs/method.md, \"Teacher heads\")"
    return "see docs/method.md, \"Teacher heads\", and docs/results.md for runs where this happened"


def collapse_warnings(logs: dict, head_out: int, warned: set, teacher_heads: str | None = None,
                      senta_center: bool | None = None) -> list[str]:
    """One warning per collapse indicator (mmkd.objectives: the batch spread of the L2-normalised head
    outputs) the first time it falls below a quarter of the spread of well-spread vectors, 1/√D:
    then that head gives nearly one vector for every sentence and its objective compares constants.
    The message ends with the remedy for that side under the run's settings (collapse_hint)."""
    floor = 0.25 / math.sqrt(head_out)
    out = []
    for name in (n for o in objs.OBJECTIVES for n in o.indicator_names):
        value = logs.get(name)
        if value is not None and value < floor and name not in warned:
            warned.add(name)
            out.append(f"warning: step {logs.get('step')}: {name} = {value:.4f} < {floor:.4f} (well-spread "
                       f"vectors give about {1 / math.sqrt(head_out):.3f}, one vector for every input 0): the "
                       f"head is collapsing; {collapse_hint(name, teacher_heads, senta_center)}.")
    return out


def _any(flag: bool, accelerator) -> bool:
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor(1.0 if flag else 0.0, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


def _grad_message(step, norm, logged, parts: list[StudentBatch], accelerator) -> str:
    from mmkd.checkpoint import latest_checkpoint

    keys = [(c, p) for part in parts for c, _, p in part.pair_keys][:8]
    out = accelerator.project_dir
    latest = latest_checkpoint(out) if out else None
    kept = f"the last checkpoint, {latest.name}, is intact" if latest else "no checkpoint was written yet"
    losses = ", ".join(f"{o} {v.item():.4g}" for o, v in logged.items())
    return (f"step {step + 1}: the gradient norm is {float(norm)} (non-finite on this or another process) although "
            f"the losses were finite ({losses} on this process); first (corpus, pair_id) of this process's pairs: "
            f"{keys}. Stopped before the update; {kept}. A corrupt cache value is the usual cause: run "
            "`mmkd cache verify` on the caches")


def _nan_message(step, micro, objective: objs.Objective, value, part: StudentBatch) -> str:
    source = part.sent_keys if objective.input == "sentence" else part.pair_keys
    keys = [(c, p) for c, _, p in source[:8]]
    return (f"step {step + 1}, micro-batch {micro}: the {objective.name} loss is {value.item()} "
            f"(non-finite on this or another process); first (corpus, pair_id) of the batch: {keys}. "
            "Stopped before the update; the last checkpoint is intact.")


def _verify_caches(caches, accelerator, out: Path, progress: bool) -> None:
    """Every shard's checksums, checked once per cache before any step (mmkd/cache/integrity.py):
    process r hashes shards k with k % world == r that no earlier run verified."""
    from tqdm.auto import tqdm

    from mmkd.cache.integrity import ShardVerifier, writable
    from mmkd.errors import CacheError

    rank, world = accelerator.process_index, accelerator.num_processes
    todo = []
    for cache in caches:
        here = writable(cache.fs, cache.root)
        verifier = ShardVerifier(cache, None if here else str(out / "verified-cache" / cache.manifest["corpus"]["name"]))
        todo += [(verifier, k) for k in range(len(cache.manifest["shards"]))
                 if k % world == rank and not verifier.is_verified(k)]
    error, started, nbytes = None, time.perf_counter(), 0
    with tqdm(total=len(todo), desc="verify cache", unit=" shard", disable=not (progress and todo)) as bar:
        try:
            for verifier, k in todo:
                nbytes += verifier.verify(k)
                bar.update(1)
        except CacheError as e:
            error = str(e)
    if _any(error is not None, accelerator):
        raise TrainingError(error or "another process found a corrupt cache shard (its message names it); "
                                     "training did not start")
    if progress and todo:
        from mmkd.models import say
        say(f"verified {len(todo)} cache shards ({nbytes / 1e6:.1f} MB) in {time.perf_counter() - started:.1f}s "
            "(remembered: later runs re-check only changed shards; --no-verify skips this)")


def _flat(d: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in d.items()}


def _trim_metrics(path: Path, start: int) -> None:
    """On resume, drop rows logged after the checkpoint: they are about to be recomputed."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=metric_columns())
        w.writeheader()
        w.writerows(rows)


def _append_metrics(path: Path, logs: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=metric_columns(), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if logs.get(k) is None else logs.get(k)) for k in metric_columns()})


def _save_student(out: Path, model, tokenizer, run_meta: dict, features: TeacherFeatures, cfg: TrainConfig) -> Path:
    """`<run>/student/`: a Hugging Face model folder a user can publish as it is. The trained encoder
    and MLM head, plus every tensor of the starting checkpoint MMKD does not train (pooler, other
    heads) unchanged, the tokenizer, the run's config and cache manifests, and a model card. Written
    into `student.tmp/` and renamed, so a `student/` folder is always complete."""
    import shutil

    from safetensors.torch import save_model

    from mmkd.model_card import CARD, RUN_FILE, card_text
    from mmkd.models import quiet_transformers, starting_extras

    dest, tmp = out / "student", out / "student.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    student = model.student
    extras = starting_extras(cfg.student, student, cfg.trust_remote_code)
    with quiet_transformers():
        student.save_pretrained(tmp, state_dict={**student.state_dict(), **extras})
        tokenizer.save_pretrained(tmp)
    (tmp / RUN_FILE).write_text(json.dumps(run_meta, indent=2, sort_keys=True) + "\n")
    for name, manifest in features.manifests.items():
        (tmp / f"cache-manifest-{name}.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (tmp / CARD).write_text(card_text(run_meta, features.manifests), encoding="utf-8")
    heads = torch.nn.ModuleDict(model.head_modules())
    save_model(heads, str(out / "heads.safetensors"))
    if dest.exists():   # a finished run saved again (e.g. --overwrite was not needed): swap
        old = out / "student.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old)
    else:
        os.replace(tmp, dest)
    return dest
