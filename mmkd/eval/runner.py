"""Run a zero-shot task over several seeds and write `results.json` + `results.md`; compare runs.

Zero-shot scores move with the fine-tuning seed and with English-dev selection, so `--seeds 1,2,3`
reports mean ± std per language and of the average, as in Tables 2–5 of the paper.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from mmkd import __version__
from mmkd.atomic import write_text
from mmkd.eval.metrics import ALIGNMENT_TEMPERATURE
from mmkd.eval.settings import EvalConfig


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def default_out(model: str, task: str) -> Path:
    path = Path(model)
    base = path / "eval" if path.is_dir() else Path("runs") / "eval" / model.replace("/", "--")
    return base / task


def run_task(cfg: EvalConfig) -> dict:
    from mmkd import settings

    settings.validate(cfg)
    if cfg.task in ("xnli", "pawsx"):
        from mmkd.eval.classify import check, run_seed
        metric = "accuracy"
    elif cfg.task == "xquad":
        from mmkd.eval.qa import check, run_seed
        metric = "f1"
    else:
        raise ValueError(f"unknown task {cfg.task!r}")
    from mmkd.eval.data import hub_sources
    from mmkd.eval.seeds import run_seeds

    check(cfg)                      # before the hub is asked anything
    hub = hub_sources(cfg.task, cfg.data_dir, cfg.train_file, cfg.dev_file, cfg.hub_revision, cfg.train_hub_revision)
    pinned = dataclasses.replace(cfg, **{field: hub[role]["commit"] for role, field in
                                        (("test", "hub_revision"), ("train", "train_hub_revision"))
                                        if role in hub and hub[role]["commit"]})
    runs = run_seeds(run_seed, pinned, cfg.seeds, cfg.seed_processes)
    languages = list(runs[0]["test"])
    summary = {lang: _mean_std([r["test"][lang] for r in runs]) for lang in languages}
    summary["avg"] = _mean_std([statistics.fmean(r["test"].values()) for r in runs])
    result = {"task": cfg.task, "metric": metric, "model": cfg.model, "selection": "English dev",
              "languages": languages, "seeds": cfg.seeds, "summary": summary, "runs": runs,
              "data": _data_record(cfg, hub), "config": dataclasses.asdict(cfg), "mmkd_version": __version__}
    if cfg.task == "xquad":
        result["scoring"] = cfg.qa_scoring
        result["summary_exact_match"] = {lang: _mean_std([r["test_exact_match"][lang] for r in runs]) for lang in languages}
    if cfg.oracle:
        result["summary_oracle"] = {lang: _mean_std([r["oracle_test"][lang] for r in runs]) for lang in languages}
    return result


def _data_record(cfg: EvalConfig, hub: dict) -> dict:
    """Where the evaluation's data came from: the hub datasets at their commits, the local files."""
    local = {k: v for k, v in (("data_dir", cfg.data_dir), ("train_file", cfg.train_file), ("dev_file", cfg.dev_file)) if v}
    return {"hub": hub, "local": local}


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
    from mmkd.model_card import record_eval

    record_eval(result["model"], result)   # a student saved by `mmkd train`: its card shows the result
    return out


def _fmt(ms: dict) -> str:
    return f"{ms['mean']:.1f} ± {ms['std']:.1f}" if ms["std"] else f"{ms['mean']:.1f}"


def markdown_table(result: dict) -> str:
    if result["task"] == "retrieval":
        rows = ["| set | n | cls x→en | cls en→x | mean x→en | mean en→x | InfoNCE cls | InfoNCE mean |",
                "|---|---|---|---|---|---|---|---|"]
        for name, s in result["sets"].items():
            loss = " | ".join(f"{s[k]:.3f}" if k in s else "–" for k in ("cls_infonce", "mean_infonce"))
            rows.append(f"| {name} | {s['n']} | {s['cls_x2en']:.1f} | {s['cls_en2x']:.1f} | "
                        f"{s['mean_x2en']:.1f} | {s['mean_en2x']:.1f} | {loss} |")
        return (f"Translation retrieval accuracy (%), model `{result['model']}`; InfoNCE: the held-out alignment "
                f"loss at τ {ALIGNMENT_TEMPERATURE} (lower is better)\n\n" + "\n".join(rows))
    langs = result["languages"] + ["avg"]
    head = "| selection | " + " | ".join(langs) + " |"
    lines = [head, "|" + "---|" * (len(langs) + 1)]
    lines.append("| English dev | " + " | ".join(_fmt(result["summary"][lang]) for lang in langs) + " |")
    if "summary_oracle" in result:
        oracle = result["summary_oracle"]
        lines.append("| target dev (oracle) | " + " | ".join(_fmt(oracle[lang]) for lang in result["languages"]) + " | |")
    title = (f"{result['task']} zero-shot {result['metric']} (%), model `{result['model']}`, "
             f"seeds {','.join(map(str, result['seeds']))}")
    if "summary_exact_match" in result:
        em = result["summary_exact_match"]
        lines.append("| exact match | " + " | ".join(_fmt(em[lang]) for lang in result["languages"]) + " | |")
    return title + "\n\n" + "\n".join(lines)


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
        if r["task"] == "retrieval":
            cell = f"{r['average']['cls']:.1f} / {r['average']['mean']:.1f}"
        else:
            cell = _fmt(r["summary"]["avg"])
        rows.setdefault(r["model"], {})[r["task"]] = cell
    header = "| model | " + " | ".join(t + (" (cls / mean)" if t == "retrieval" else "") for t in tasks) + " |"
    lines = [header, "|" + "---|" * (len(tasks) + 1)]
    for model, cells in rows.items():
        lines.append(f"| {model} | " + " | ".join(cells.get(t, "–") for t in tasks) + " |")
    return "\n".join(lines)
