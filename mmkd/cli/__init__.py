"""The `mmkd` command. Each command turns its options into a settings object and calls one library
function (that a test or a notebook can call too). One module a group: data.py (corpus, cache),
training.py (train, ablate, demo, settings), evaluation.py (eval, plot, report), models.py."""

from __future__ import annotations

import errno
import functools
import sys

import click

from mmkd import __version__
from mmkd.errors import MMKDError


def friendly(fn):
    """Errors a user can fix are printed as one line (file, line, value) and exit with status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MMKDError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:   # the disk, not mmkd: say which file and what to do
            from mmkd.console import is_verbose

            if e.errno == errno.EPIPE:      # `mmkd ... | head`: the reader has what it wanted
                import os
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(0)
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

data_dir_option = click.option(
    "--data-dir", default=None, metavar="DIR",
    help="Folder holding prepared corpora in corpora/<name>/ (default: $MMKD_DATA_DIR or ./data).")


class _Main(click.Group):
    """`--verbose` is accepted anywhere on the line (`mmkd --verbose demo` or `mmkd demo --verbose`)."""

    def parse_args(self, ctx, args):
        if "--verbose" in args:
            cut = args.index("--") if "--" in args else len(args)
            args = [a for a in args[:cut] if a != "--verbose"] + args[cut:]
            from mmkd.console import set_verbose
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
    Stage two:  mmkd train --cache cache/       (--config paper | demo | FILE for whole settings)
    Evaluate:   mmkd eval xnli --model runs/mmkd/student
    The demo:   mmkd demo
    """


def _register() -> None:
    from mmkd.cli import data, evaluation, models, training

    for module in (data, training, evaluation, models):
        module.register(main)


_register()

__all__ = ["main", "friendly", "data_dir_option"]
