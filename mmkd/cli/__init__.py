"""The `mmkd` command. Each command turns its options into a settings object and calls one library
function (that a test or a notebook can call too). One module a group: data.py (corpus, cache),
training.py (train, ablate, demo, settings), evaluation.py (eval, plot, report), models.py; what
they share is in common.py and options.py."""

from __future__ import annotations

import click

from mmkd import __version__
from mmkd.cli import data, evaluation, models, training
from mmkd.cli.common import data_dir_option, friendly
from mmkd.console import set_verbose


class _Main(click.Group):
    """`--verbose` is accepted anywhere on the line (`mmkd --verbose demo` or `mmkd demo --verbose`)."""

    def parse_args(self, ctx, args):
        if "--verbose" in args:
            cut = args.index("--") if "--" in args else len(args)
            args = [a for a in args[:cut] if a != "--verbose"] + args[cut:]
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


for _module in (data, training, evaluation, models):
    _module.register(main)

__all__ = ["main", "friendly", "data_dir_option"]
