"""What the command modules share: one-line errors and the `--data-dir` option."""

from __future__ import annotations

import errno
import functools
import os
import sys

import click

from mmkd.console import is_verbose
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
            if e.errno == errno.EPIPE:      # `mmkd ... | head`: the reader has what it wanted
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
