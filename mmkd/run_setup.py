"""`setup(cfg) -> Run`: a training run made ready in named phases, each short: accelerator (devices,
precision, trackers), features (the run folder locked, the cache(s) or the online teacher), verify
(the cache's checksums), model (student, objectives and their heads), schedule, optimiser (with
the head learning rate), resume (a checkpoint agreed by every process) and loader. mmkd/trainer.py
loops over what it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from transformers import AutoModelForMaskedLM

from mmkd import __version__
from mmkd import objectives as objs
from mmkd import trackers as track
from mmkd.atomic import write_text
from mmkd.cache.integrity import verify_before_training
from mmkd.capacity import check_batch, check_length
from mmkd.checkpoint import agreed_checkpoint, load_checkpoint
from mmkd.config import CONFIG_VERSION, TrainConfig, TrainingError, validate
from mmkd.console import say
from mmkd.dist import any_process, use_cpu
from mmkd.errors import CacheError
from mmkd.features import open_features
from mmkd.hf import load, load_config, load_tokenizer, missing_parts
from mmkd.model import build_model
from mmkd.monitor import trim_metrics
from mmkd.objectives import Built
from mmkd.objectives.tlm import start_fresh_head
from mmkd.optim import adamw, lr_schedule, param_groups
from mmkd.precision import resolve as resolve_precision
from mmkd.run_folder import RunFolder
from mmkd.schedule import BalancedSchedule
from mmkd.settings import dotted
from mmkd.step_data import StepData
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
                               lambda value: gather(value, accelerator), lambda flag: any_process(flag, accelerator),
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
                                             num_workers=cfg.num_workers, collate_fn=_as_given,
                                             prefetch_factor=2 if cfg.num_workers else None,
                                             persistent_workers=False,
                                             # Its own generator: creating the iterator must not draw from
                                             # the global RNG (dropout), or a resumed run would diverge.
                                             generator=torch.Generator().manual_seed(cfg.seed))


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


def _as_given(x):
    """The loader's collate: a step's micro-batches are built by StepData already."""
    return x
