"""Run an evaluation (mmkd/eval/tasks.py) and write `results.json` + `results.md` and the
predictions; compare runs (`mmkd report`).

Zero-shot scores move with the fine-tuning seed and with English-dev selection, so `seeds=1,2,3`
reports mean ± std per language and of the average, as in Tables 2–5 of the paper.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmkd.atomic import write_text
from mmkd.eval.settings import EvalConfig
from mmkd.eval.tasks import task
from mmkd.model_card import is_student_folder, record_eval


def default_out(model: str, task: str) -> Path:
    path = Path(model)
    base = path / "eval" if path.is_dir() else Path("runs") / "eval" / model.replace("/", "--")
    return base / task


def run_task(cfg: EvalConfig) -> dict:
    """The evaluation `cfg.task` of `cfg.model` (mmkd/eval/tasks.py), as results.json holds it."""
    return task(cfg.task).run(cfg)


def write_predictions(result: dict, out: Path) -> None:
    """Each seed's test predictions in XTREME's layout, under OUT/predictions/seed-N/TASK/: xnli and
    pawsx `test-LANG.tsv` (one predicted label per line, in the test file's order), xquad
    `test-LANG.json` ({question id: answer text}), so the official scripts can re-score them. They
    are taken out of the runs in results.json (which says where they are)."""
    for run in result.get("runs", []):
        predictions = run.pop("predictions", None)
        if predictions is None:
            continue
        folder = out / "predictions" / f"seed-{run['seed']}" / result["task"]
        folder.mkdir(parents=True, exist_ok=True)
        split = result.get("config", {}).get("test_split", "test")      # XNLI/PAWS-X scored on dev rows: dev-LANG
        for lang, values in predictions.items():
            if isinstance(values, dict):
                write_text(folder / f"test-{lang}.json", json.dumps(values, ensure_ascii=False, indent=1) + "\n")
            else:
                write_text(folder / f"{split}-{lang}.tsv", "".join(f"{v}\n" for v in values))
        run["predictions"] = str(folder.relative_to(out))


def write_result(result: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(result, out)
    write_text(out / "results.md", markdown_table(result) + "\n")
    write_text(out / "results.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")   # last: says complete
    shutil.rmtree(out / "seeds", ignore_errors=True)       # the finished seeds an interrupted run kept: in results.json

    if is_student_folder(result["model"]):        # a student saved by `mmkd train`: its card shows the result
        record_eval(result["model"], result["task"], task(result["task"]).card(result))
    return out


def markdown_table(result: dict) -> str:
    return task(result["task"]).markdown(result)


def collect(paths: list[str]) -> list[dict]:
    found = []
    for p in paths:
        path = Path(p)
        files = [path] if path.is_file() else sorted(path.rglob("results.json"))
        for f in files:
            found.append({**json.loads(f.read_text()), "_path": str(f)})
    return found


def report_table(paths: list[str]) -> str:
    """One row per model, one column per task (average over languages; retrieval: mean of cls and
    mean pooling), like Table 5."""
    results = collect(paths)
    if not results:
        raise FileNotFoundError(f"no results.json under {', '.join(paths)}")
    tasks = sorted({r["task"] for r in results})
    rows: dict[str, dict[str, str]] = {}
    for r in results:
        rows.setdefault(r["model"], {})[r["task"]] = task(r["task"]).cell(r)
    header = "| model | " + " | ".join(task(t).header for t in tasks) + " |"
    lines = [header, "|" + "---|" * (len(tasks) + 1)]
    for model, cells in rows.items():
        lines.append(f"| {model} | " + " | ".join(cells.get(t, "–") for t in tasks) + " |")
    return "\n".join(lines)
