"""Evaluation from Python: `evaluate(EvalConfig(...))` and `retrieval(model, pairs)`, each returning
the result dict `mmkd eval` writes (and writing it too when given a folder)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmkd.eval.runner import run_task, write_result
from mmkd.eval.settings import EvalConfig


def evaluate(cfg: EvalConfig, out: str | Path | None = None) -> dict:
    """Zero-shot XNLI, PAWS-X or XQuAD (`cfg.task`) over `cfg.seeds`; with `out` (or `cfg.out`),
    results.json, results.md and the predictions are written there, and an interrupted evaluation
    run again keeps the seeds it had finished (OUT/seeds/)."""
    if out and not cfg.out:
        cfg = dataclasses.replace(cfg, out=str(out))
    result = run_task(cfg)
    if out or cfg.out:
        write_result(result, Path(out or cfg.out))
    return result


def retrieval(model: str, pairs: list[str], out: str | Path | None = None, limit: int | None = None) -> dict:
    """Translation retrieval and held-out InfoNCE of `model` on `pairs` (`NAME=EN_FILE,X_FILE`, or a TSV)."""
    result = run_task(EvalConfig(task="retrieval", model=model, pairs=list(pairs), max_eval_examples=limit))
    if out:
        write_result(result, Path(out))
    return result
