"""The settings of a training run (`mmkd train`, each run of `mmkd ablate`, the demo's training).

Every default is written here once, as a field with its meaning and range (mmkd/settings.py
derives the command-line options, the checks and `mmkd settings` from these declarations). The
defaults are the paper's settings (section 4.1) where the paper gives them; where it does not, the
reason for each is in docs/method.md ("Defaults the paper leaves open"). Named presets in
mmkd/presets/ hold whole scenarios (`--config paper`, `--config demo`). Each objective's own
settings are declared in its module and sit here under its name (`cfg.xwcl.temperature`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from mmkd import objectives as objs, settings as st
from mmkd.errors import TrainingError
from mmkd.objectives import names as objective_names
from mmkd.paths import default_data_dir
from mmkd.settings import SEED_MAX, setting
from mmkd.trackers import CHOICES


@dataclass
class _RunSettings:
    """The settings of a run that are not one objective's own (TrainConfig adds those)."""
    # ------------------------------------------------------------------ what is read and written
    cache: list[str] = setting(help="Teacher caches or URLs, or folders holding several (`--cache`).",
                               factory=list, cli=False)
    corpora: list[str] = setting(help="Prepared corpora, with an online teacher only (`--corpus`).",
                                 factory=list, cli=False)
    online_teacher: str | None = setting(None, "Run this teacher on the fly instead of reading a cache.", cli=False)
    student: str = setting("bert-base-multilingual-cased", "Student with an MLM head (AutoModelForMaskedLM): "
                           "hub id or folder.", cli=False)
    out: str = setting("runs/mmkd", "Run folder (checkpoints, logs, student/).", cli=False)
    data_dir: str = setting(help="Where prepared corpora are (online teacher).", factory=default_data_dir, cli=False)
    # ------------------------------------------------------------------ optimisation (paper 4.1)
    epochs: float = setting(15.0, "Epochs (paper 4.1: 15).", above=0)
    max_steps: int | None = setting(None, "Stop after this many steps (overrides epochs).", min=1)
    batch_size: int = setting(256, "Global batch (all processes and accumulation steps), language-balanced "
                                   "(paper 4.1: 256).", min=1)
    grad_accum: int = setting(1, "Micro-batches per step and process, for when the batch does not fit.", min=1)
    lr: float = setting(2e-5, "Peak learning rate of AdamW (paper 4.1: 2e-5).", above=0, max=1.0)
    weight_decay: float = setting(0.01, "AdamW weight decay (paper 4.1: 0.01).", min=0, max=1.0)
    warmup_ratio: float = setting(0.1, "Fraction of the steps of linear warm-up (paper 4.1: 10%).", min=0, max=1.0)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm (0 = off; BERT's practice, the paper does not say).",
                                   min=0)
    head_lr: float | None = setting(None, "Peak learning rate of the fresh heads (projectors, predictors, XWCL's map, "
                                          "the MLM head's transform and output bias); none = lr (the paper). AdamW "
                                          "moves a weight about lr per step, so heads initialised at scale ~0.04 need "
                                          "a far larger lr than the encoder to be fitted in a short run.",
                                    above=0, max=1.0)
    head_warmup_steps: int = setting(0, "The head phase: the first N steps fit only the fresh heads, at head_lr "
                                        "with no warm-up, while the encoder is frozen and run without gradients "
                                        "(forward only, so a step costs about a third); each head's loss is "
                                        "reported at its end (head_phase.json). 0 = the paper.", min=0)
    # ------------------------------------------------------------------ the objectives (paper 3, eq. 6)
    without: list[str] = setting(help="Remove an objective (repeatable); its forward pass is skipped.",
                                 factory=list, choices=objective_names)
    max_length: int = setting(128, "Student input length in tokens (paper 4.1: 128).", min=8)
    mlm_probability: float = setting(0.15, "Fraction of tokens (TLM) and of English words (XWCL) masked.",
                                     above=0, max=1.0)
    heads: objs.HeadSettings = setting(help="The sentence objectives' heads (mmkd/objectives/sentence.py).",
                                       factory=objs.HeadSettings)
    # ------------------------------------------------------------------ an online teacher (no cache)
    teacher_layer: int = setting(-1, "Online teacher: hidden_states index (-1 = last layer).")
    teacher_max_length: int = setting(128, "Online teacher: input length in tokens.", min=3)
    # ------------------------------------------------------------------ running
    seed: int = setting(0, "Seed of the data order, the masks and the heads.", min=0, max=SEED_MAX)
    mixed_precision: str = setting("auto", "auto = what `accelerate launch`/`accelerate config` says; "
                                   "else bf16 on GPUs that have it, fp16 (loss-scaled) on others, fp32 on CPU.", choices=("auto", "no", "bf16", "fp16"))
    checkpoint_every: int = setting(500, "Steps between checkpoints.", min=1)
    keep_checkpoints: int = setting(3, "Checkpoints kept.", min=1)
    num_workers: int = setting(2, "Data-loader workers per process (they read the cache and build inputs).",
                               min=0, max=64)
    log_with: str = setting("auto", "Trackers besides metrics.csv: auto (tensorboard when installed), none, all (every "
                                    "installed one), or names, comma-separated: aim, clearml, comet_ml, dvclive, "
                                    "mlflow, swanlab, tensorboard, trackio, wandb.")
    run_name: str | None = setting(None, "The tracker run's name (default: the run folder's); kept in RUN/tracker.json "
                                         "with each tracker's run id, so --resume continues the same run.")
    trust_remote_code: bool = setting(False, "Allow custom model code from the hub (off by default).", cli=False)
    cache_local: str | None = setting(None, "A node-local folder (e.g. /nvme/mmkd) that each shard of a cache in object "
                                            "storage (--cache s3://...) or on a slow shared filesystem is fetched into "
                                            "once per node, checked against the manifest's sha256, then memory-mapped; "
                                            "docs/gpu.md.")
    cache_local_limit_gb: float = setting(0.0, "Size limit of cache_local in GB (0 = none): the least recently used "
                                               "shards are removed to make room. Give it room for the whole cache: a "
                                               "shuffled step reads from most shards.", min=0)
    verify_cache: bool = setting(True, "Check every cache shard's checksums before its first use (remembered in "
                                       "CACHE/verified/).", flag="--verify")
    assign: str = setting("length", "How a global batch's pairs go to processes: by length (little padding) or by "
                                    "position; the losses are the same.", choices=("length", "stride"))

    @property
    def objectives(self) -> tuple[str, ...]:
        """The names of the objectives trained, in the fixed order of mmkd.objectives.OBJECTIVES."""
        return tuple(o.name for o in objs.chosen(self.without))


# Each objective's own settings (its `Settings` dataclass, declared in its module), under its name
# (`cfg.struca.alpha`, `struca.temperature`, `"struca": {...}` in a settings file): collected from
# the registry, so a new objective with settings touches its module and mmkd.objectives only.
def with_objectives(objectives) -> type:
    """The settings class of runs that may train `objectives`: the run's own settings and each
    objective's `Settings` under its name."""
    return dataclasses.make_dataclass(
        "TrainConfig",
        [(o.name, o.Settings, dataclasses.field(default_factory=o.Settings)) for o in objectives
         if getattr(o, "Settings", None) is not None],
        bases=(_RunSettings,),
        namespace={"__doc__": "The settings of a training run: the run's own and each objective's, under its name.",
                   "__module__": __name__})


TrainConfig = with_objectives(objs.OBJECTIVES)


# The settings that do not change a run's results: a resumed run may change them, and `mmkd ablate`
# and `mmkd demo` leave them out when they compare runs. `out` too: a run folder identifies itself by
# its checkpoints, so a moved folder or another spelling of its path resumes; `cache` and `corpora`
# are where the data is, which a run identifies by the caches' fingerprints.
RESUMABLE = {"num_workers", "log_with", "run_name", "keep_checkpoints", "checkpoint_every", "data_dir", "cache", "corpora",
             "out", "verify_cache", "cache_local", "cache_local_limit_gb"}


def validate(cfg: TrainConfig) -> None:
    """Every setting within its range (one line naming the key), and the combinations that make a run."""
    st.validate(cfg)
    if len(set(cfg.without)) == len(objective_names()):
        raise TrainingError("every objective was removed (without=...); nothing to train")
    if cfg.batch_size % cfg.grad_accum:
        raise TrainingError(f"batch_size={cfg.batch_size} is not a multiple of grad_accum={cfg.grad_accum}")
    if bool(cfg.cache) == bool(cfg.online_teacher):
        raise TrainingError("give either --cache (the teacher cache) or --online-teacher NAME (with --corpus)")
    for name in (n.strip() for n in cfg.log_with.split(",")):
        if name not in CHOICES or ("," in cfg.log_with and name in ("auto", "none", "all")):
            raise TrainingError(f"log_with={cfg.log_with!r}: {name!r} is not one of {', '.join(CHOICES)} "
                                "(names may be comma-separated)")


# The layout of the settings a run records (config.json, each checkpoint's meta.json, mmkd_run.json):
# 1 (no "config_version"): flat keys for the heads (`head_hidden`, `teacher_heads`, ...) and, before
# that, for each objective's settings (`xwcl_temperature`); 2: the heads under `heads`. Every older
# key is still read (settings.from_mapping: a nested setting's option name is its older key).
CONFIG_VERSION = 2


def from_saved(saved: dict, where: str, version: int | None = None) -> TrainConfig:
    """The TrainConfig a run folder recorded (its "config"; `version`: its "config_version", None for
    the runs before it was recorded), older keys included."""
    if version is not None and (not isinstance(version, int) or version > CONFIG_VERSION):
        raise TrainingError(f"{where}: config_version {version!r} was written by a newer mmkd (this one reads "
                            f"versions up to {CONFIG_VERSION}); upgrade mmkd to use this run")
    return st.from_mapping(TrainConfig, saved, where)


def differences(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """The settings (other than those a resume may change) in which `cfg` differs from a run's,
    by key (a flag's name for the flags): `heads.out: run has 16, now 32`."""
    now = st.flat(cfg)
    out = []
    for f in st.fields(TrainConfig):
        if f.path[0] in RESUMABLE:
            continue
        a, b = st.get(saved, f.path), now[f.key]
        if a != b and not _same_folder(a, b):
            label = f.key if f.meta.get("cli", True) else {"student": "--student", "online_teacher": "--online-teacher",
                                                            "trust_remote_code": "--trust-remote-code"}.get(f.key, f.key)
            out.append(f"{label}: run has {a!r}, now {b!r}")
    return out


def _same_folder(a, b) -> bool:
    """One local folder spelled two ways (relative and absolute, a trailing slash)."""
    return (isinstance(a, str) and isinstance(b, str) and os.path.exists(a) and os.path.exists(b)
            and os.path.realpath(a) == os.path.realpath(b))
