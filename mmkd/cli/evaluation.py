"""`mmkd eval ...`, `mmkd plot tsne`, `mmkd report`: zero-shot evaluation of any encoder."""

from __future__ import annotations

from pathlib import Path

import click

from mmkd import settings as st
from mmkd.cli.common import friendly
from mmkd.cli.options import assignments_argument, overrides, settings_epilog, settings_options
from mmkd.eval import runner
from mmkd.eval.runner import report_table
from mmkd.eval.settings import EvalConfig
from mmkd.eval.tsne import plot_tsne, read_multiway
from mmkd.plot_metrics import plot_metrics
from mmkd.settings import SEED_MAX

DEFAULT_STUDENT = "runs/mmkd/student"      # the student `mmkd train` writes with its default --out


@click.group("eval")
def eval_group():
    """Zero-shot evaluation of any encoder (a student from `mmkd train`, or a baseline such as mBERT).

    \b
    mmkd eval xnli --model runs/mmkd/student data_dir=XTREME_DIR train_file=train-en.tsv
    mmkd eval xquad --model bert-base-multilingual-cased      (hub datasets, needs internet)
    mmkd eval retrieval --model M --pairs fr=en.txt,fr.txt
    """


def default_model(model: str | None) -> str:
    """--model, or the student `mmkd train` writes with its default --out."""
    if model:
        return model
    if (Path(DEFAULT_STUDENT) / "config.json").is_file():
        click.echo(f"evaluating {DEFAULT_STUDENT}, the student of the default run folder (--model to choose another)",
                   err=True)
        return DEFAULT_STUDENT
    raise click.UsageError(f"no --model given and no trained student at {DEFAULT_STUDENT} (the default of "
                           "`mmkd train --out`); pass --model NAME_OR_PATH")


def _task_command(task: str, doc: str):
    @click.option("--model", default=None, metavar="NAME_OR_PATH",
                  help=f"Encoder to evaluate (hub name or folder). Default: {DEFAULT_STUDENT}, when `mmkd train` "
                       "has written it.")
    @click.option("--out", default=None, metavar="DIR",
                  help="Where results.json/results.md go (default: MODEL/eval/TASK or runs/eval/MODEL/TASK).")
    @settings_options(EvalConfig)
    @click.option("--trust-remote-code", is_flag=True, help="Allow custom model code (off by default).")
    @assignments_argument
    @friendly
    def command(model, out, trust_remote_code, assignments, **given):
        model = default_model(model)
        out = Path(out) if out else runner.default_out(model, task)
        cfg = st.load(EvalConfig, None, {**overrides(given), **st.assignments(EvalConfig, list(assignments), "eval")},
                      EvalConfig(task=task, model=model, out=str(out), trust_remote_code=trust_remote_code))
        result = runner.run_task(cfg)   # resumable: OUT/seeds/ keeps each finished seed until results.json is written
        where = runner.write_result(result, out)
        click.echo(runner.markdown_table(result))
        click.echo(f"\nwritten to {where}/results.json and results.md")

    command.__doc__ = (doc + " Zero-shot: the checkpoint is selected on English dev.\n\n\b\n"
                       f"mmkd eval {task} --model runs/mmkd/student seeds=1,2,3")
    return click.command(task, epilog=settings_epilog(EvalConfig, (), "eval"))(command)


@eval_group.command("retrieval")
@click.option("--model", default=None, metavar="NAME_OR_PATH",
              help="Encoder to evaluate (default: the student of the default run folder, if trained).")
@click.option("--pairs", "specs", multiple=True, metavar="[NAME=]EN_FILE,X_FILE | [NAME=]PAIRS.tsv",
              help="Parallel sentences (repeatable): two line-aligned files or one en<TAB>x TSV.")
@click.option("--max-eval-examples", default=None, type=click.IntRange(min=1), help="Sentences per set (first N unique).")
@click.option("--out", default=None, metavar="DIR", help="Where results.json/results.md go.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code (off by default).")
@friendly
def eval_retrieval(model, specs, max_eval_examples, out, trust_remote_code):
    """Translation retrieval accuracy, both directions, [CLS] and mean pooling (no fine-tuning)."""
    model = default_model(model)
    result = runner.run_task(EvalConfig(task="retrieval", model=model, pairs=list(specs), max_eval_examples=max_eval_examples,
                                        trust_remote_code=trust_remote_code))
    where = runner.write_result(result, Path(out) if out else runner.default_out(model, "retrieval"))
    click.echo(runner.markdown_table(result))
    click.echo(f"\nwritten to {where}/results.json")


@click.group("plot")
def plot_group():
    """Pictures: a run's metrics over steps, the representation space (t-SNE)."""


@plot_group.command("tsne")
@click.option("--model", "models", multiple=True, required=True, metavar="NAME_OR_PATH",
              help="Encoder (repeat for side-by-side panels, e.g. the baseline then the student).")
@click.option("--file", "files", multiple=True, metavar="LANG=PATH",
              help="Line-aligned multi-way parallel file for one language (repeatable).")
@click.option("--xnli-dir", default=None, metavar="DIR", help="XNLI dev files (15-way parallel; the paper's choice).")
@click.option("--languages", default=None, help="With --xnli-dir: comma-separated languages.")
@click.option("-n", "n", default=20, show_default=True, type=click.IntRange(min=2), help="Sentences (colours).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0, max=SEED_MAX), help="Which sentences, and t-SNE's seed.")
@click.option("--out", default="tsne.png", show_default=True, help="PNG file.")
@friendly
def plot_tsne_cmd(models, files, xnli_dir, languages, n, seed, out):
    """Figure 2: t-SNE of sentences and their translations (colour = sentence, marker = language)."""
    pairs = {}
    for f in files:
        lang, sep, path = f.partition("=")
        if not sep:
            raise click.BadParameter(f"--file {f!r}: write LANG=PATH")
        pairs[lang] = path
    sentences = read_multiway(pairs, n, seed, xnli_dir, languages.split(",") if languages else None)
    click.echo(f"wrote {plot_tsne(list(models), sentences, out, seed)}")


@plot_group.command("metrics")
@click.argument("run", metavar="RUN")
@click.option("--out", default=None, metavar="FILE", help="PNG file (default: RUN/metrics.png).")
@friendly
def plot_metrics_cmd(run, out):
    """Every loss, the learning rates, the gradient norm and the collapse indicators of a run
    (RUN/metrics.csv) over steps, in one PNG; no TensorBoard needed."""
    click.echo(f"wrote {plot_metrics(run, out)}")


@click.command("report")
@click.argument("paths", nargs=-1, required=True)
@friendly
def report_cmd(paths):
    """One table comparing runs: every results.json under PATHS, one row per model (like Table 5)."""
    try:
        click.echo(report_table(list(paths)))
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None


for _task, _doc in (("xnli", "XNLI: fine-tune on English NLI, test ar bg de en es fr hi zh (accuracy)."),
                    ("pawsx", "PAWS-X: fine-tune on English PAWS, test de en es fr zh (accuracy)."),
                    ("xquad", "XQuAD: fine-tune on English SQuAD, test ar de en es hi zh (F1, EM).")):
    eval_group.add_command(_task_command(_task, _doc))


def register(main) -> None:
    for command in (eval_group, plot_group, report_cmd):
        main.add_command(command)


