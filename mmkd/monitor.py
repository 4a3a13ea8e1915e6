"""What a run reports while it trains: `metrics.csv` (one row a step: each objective's loss and
collapse indicators, learning rates, gradient norm, `skipped` = 1 when fp16's loss scaler skipped the
step after an overflow, time waiting for data) and the console warning
when a head collapses."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from mmkd import objectives as objs
from mmkd.atomic import write_text


def metric_columns() -> list[str]:
    """metrics.csv's columns, from mmkd.objectives."""
    return (["step", "epoch", "loss", *objs.names(), objs.TeacherHeadsLoss.name, "lr", "lr_heads", "grad_norm",
             "skipped"]
            + objs.indicator_names() + ["data_wait", "step_seconds"])


def trim_metrics(path: Path, start: int) -> None:
    """On resume, drop rows logged after the checkpoint: they are about to be recomputed."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if (r.get("step") or "").isdigit() and int(r["step"]) <= start]
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=metric_columns(), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(path, text.getvalue())        # atomically: a kill here must not empty the log


def append_metrics(path: Path, logs: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=metric_columns(), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if logs.get(k) is None else logs.get(k)) for k in metric_columns()})


def collapse_hint(name: str, teacher_heads: str | None = None, senta_center: bool | None = None) -> str:
    """What stops the collapse `name` reports, given the run's settings (None: not known)."""
    if name == "std_student_senta" and not senta_center:
        return ("plain SentA can be met by one output for every input; senta.center=true removes that "
                "(docs/method.md, \"Defaults the paper leaves open\")")
    if teacher_heads == "train" or (name.startswith("std_teacher") and teacher_heads not in ("structure", "guard")):
        # `train` lets SentA/StrucA pull both sides onto one answer; frozen random heads can start narrow
        return "heads.teacher=structure or guard keeps the teacher heads spread (docs/method.md, \"Teacher heads\")"
    return "see docs/method.md, \"Teacher heads\", and docs/results.md for runs where this happened"


class CollapseWatch:
    """One warning per collapse indicator (the batch spread of the L2-normalised head outputs, ≈ 1/√D
    for well-spread vectors, 0 for one vector for every input) when it is below a quarter of 1/√D
    and stays there: then the head gives nearly one vector for every sentence and its objective
    compares constants. A head that is not trained (`heads.teacher=frozen`) is warned about the
    first time; a trained head only once it has fallen to half the highest value it had in this run,
    so a head that starts narrow (a student whose [CLS] vectors all point one way, as
    multilingual-e5-small's do) and widens as it learns is not reported as collapsing."""

    def __init__(self, head_out: int, teacher_heads: str | None = None, senta_center: bool | None = None):
        self.floor = 0.25 / math.sqrt(head_out)
        self.spread = 1 / math.sqrt(head_out)
        self.teacher_heads, self.senta_center = teacher_heads, senta_center
        self.peak: dict[str, float] = {}
        self.warned: set[str] = set()

    def __call__(self, logs: dict) -> list[str]:
        out = []
        for name in objs.indicator_names():
            if not name.startswith("std_"):      # a diagnostic (struca_target_diag), not a spread
                continue
            value = logs.get(name)
            if value is None or name in self.warned:
                continue
            peak = self.peak[name] = max(self.peak.get(name, value), value)
            fixed = name.startswith("std_teacher") and self.teacher_heads == "frozen"
            if value < self.floor and (fixed or value < 0.5 * peak):
                self.warned.add(name)
                why = "it is not trained" if fixed else f"it fell from {peak:.4f}"
                out.append(f"warning: step {logs.get('step')}: {name} = {value:.4f} < {self.floor:.4f} and {why} "
                           f"(well-spread vectors give about {self.spread:.3f}, one vector for every input 0): the "
                           f"head is collapsing; {collapse_hint(name, self.teacher_heads, self.senta_center)}.")
        return out
