"""What mmkd says on the console: one line on stderr from the main process, without breaking
progress bars; `--verbose` (or MMKD_VERBOSE=1) to also see everything the libraries print."""

from __future__ import annotations

import contextlib
import os
import sys

from tqdm.auto import tqdm

_verbose = os.environ.get("MMKD_VERBOSE", "").lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    """Show transformers' own load reports and progress bars (the CLI's --verbose)."""
    global _verbose
    _verbose = on
    os.environ["MMKD_VERBOSE"] = "1" if on else "0"   # processes started by accelerate inherit it


def is_verbose() -> bool:
    return _verbose


_said: set[str] = set()


def say(message: str, once: bool = False) -> None:
    """One line on stderr, from the main process only, without breaking progress bars."""
    if os.environ.get("RANK", "0") != "0" or (once and message in _said):
        return
    _said.add(message)
    tqdm.write(f"mmkd: {message}", file=sys.stderr)


@contextlib.contextmanager
def quiet_transformers():
    """transformers' warnings and weight-loading bars off for the block (unless verbose)."""
    if _verbose:
        yield
        return
    from transformers.utils import logging as hf_logging   # lazy: 0.8 s; every module imports console, most need no model

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
