"""`mmkd plot metrics RUN`: one PNG of a run's metrics.csv over steps, without TensorBoard.

Panels: the total loss and each objective's (and the teacher heads' own), the learning rates
(encoder and heads), the gradient norm (with the steps an fp16 scaler skipped marked), and the
collapse indicators (the projections' spread, StrucA's target diagonal mass). A column with no
value in any row is left out; a run of one step still draws its points.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mmkd import objectives as objs
from mmkd.errors import MMKDError



def _panels(columns: list[str]) -> list[tuple[str, list[str]]]:
    losses = {"loss", *objs.names(), objs.TeacherHeadsLoss.name}
    panels = [("losses", [c for c in columns if c in losses]),
              ("learning rate", [c for c in columns if c in ("lr", "lr_heads")]),
              ("gradient norm", [c for c in columns if c == "grad_norm"]),
              ("collapse indicators", [c for c in columns if c.startswith(("std_", "struca_target"))])]
    return [(title, cols) for title, cols in panels if cols]


def read_metrics(run: Path) -> tuple[list[float], dict[str, list[float | None]]]:
    """(steps, {column: values}) of RUN/metrics.csv; an empty cell is None."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        raise MMKDError(f"{path}: no metrics.csv here; give a run folder `mmkd train --out` wrote")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "step" not in rows[0]:
        raise MMKDError(f"{path}: no steps logged yet")
    steps, columns = [], {}
    for i, row in enumerate(rows, start=2):
        try:
            steps.append(float(row["step"]))
            for key, value in row.items():
                if key != "step" and key is not None:
                    columns.setdefault(key, []).append(float(value) if value not in ("", None) else None)
        except ValueError:
            raise MMKDError(f"{path} line {i}: a value that is not a number ({row})") from None
    return steps, {k: v for k, v in columns.items() if any(x is not None for x in v)}


def plot_metrics(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw RUN/metrics.csv into `out` (default RUN/metrics.png); returns the file."""
    try:
        import matplotlib   # lazy: optional (the demo extra)
    except ImportError:
        raise MMKDError("mmkd plot metrics needs matplotlib: pip install -e '.[demo]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    steps, columns = read_metrics(run)
    panels = _panels(list(columns))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.8 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, cols) in zip(axes[:, 0], panels):
        for c in cols:
            pts = [(s, v) for s, v in zip(steps, columns[c]) if v is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None, label=c)
        if title == "gradient norm" and "skipped" in columns:
            for s, v in zip(steps, columns["skipped"]):
                if v:
                    ax.axvline(s, color="red", alpha=0.3)
        if title == "losses" and all(v is None or v > 0 for c in cols for v in columns[c]):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, ncol=4, loc="best")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"{run.resolve().name}: metrics.csv ({len(steps)} rows)", fontsize=11)
    fig.tight_layout()
    target = Path(out) if out else run / "metrics.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
