"""The evaluation tasks behind one interface: zero-shot XNLI, PAWS-X and XQuAD, and translation
retrieval. Each runs from an `EvalConfig` and says how its result reads: the table it prints, its
columns in the ablation table, its cell in `mmkd report`, and its summary on the model card. Nothing
outside this module asks which task a result is of.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from mmkd import __version__
from mmkd import settings
from mmkd.eval import classify, qa
from mmkd.eval.data import hub_sources
from mmkd.eval.metrics import ALIGNMENT_TEMPERATURE
from mmkd.eval.retrieval import run_retrieval
from mmkd.eval.seeds import run_seeds
from mmkd.eval.settings import EvalConfig


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def fmt(ms: dict) -> str:
    return f"{ms['mean']:.1f} ± {ms['std']:.1f}" if ms["std"] else f"{ms['mean']:.1f}"


class Task:
    name: str = ""
    header: str = ""                # its column title in `mmkd report`

    def run(self, cfg: EvalConfig) -> dict:
        raise NotImplementedError

    def markdown(self, result: dict) -> str:
        raise NotImplementedError

    def columns(self, result: dict) -> dict[str, float]:
        """Its columns in the ablation table."""
        raise NotImplementedError

    def cell(self, result: dict) -> str:
        """Its cell in `mmkd report`."""
        raise NotImplementedError

    def card(self, result: dict) -> dict:
        """Its summary on a student's model card (eval_summary.json)."""
        raise NotImplementedError


class ZeroShot(Task):
    """Fine-tuned on English, tested on every target language, over fine-tuning seeds (paper 4.2)."""

    def __init__(self, name: str, metric: str, module):
        self.name, self.header, self.metric, self.module = name, name, metric, module

    def run(self, cfg):
        settings.validate(cfg)
        self.module.check(cfg)                      # before the hub is asked anything
        hub = hub_sources(cfg.task, cfg.data_dir, cfg.train_file, cfg.dev_file, cfg.hub_revision,
                          cfg.train_hub_revision)
        pinned = dataclasses.replace(cfg, **{field: hub[role]["commit"] for role, field in
                                            (("test", "hub_revision"), ("train", "train_hub_revision"))
                                            if role in hub and hub[role]["commit"]})
        keep = Path(cfg.out) / "seeds" if cfg.out else None      # resumable: finished seeds are kept
        runs = run_seeds(self.module.run_seed, pinned, cfg.seeds, cfg.seed_processes, keep)
        languages = list(runs[0]["test"])
        summary = {lang: mean_std([r["test"][lang] for r in runs]) for lang in languages}
        summary["avg"] = mean_std([statistics.fmean(r["test"].values()) for r in runs])
        result = {"task": cfg.task, "metric": self.metric, "model": cfg.model, "selection": "English dev",
                  "languages": languages, "seeds": cfg.seeds, "summary": summary, "runs": runs,
                  "data": _data_record(cfg, hub), "config": dataclasses.asdict(cfg), "mmkd_version": __version__}
        if cfg.task == "xquad":
            result["scoring"] = cfg.qa_scoring
            result["summary_exact_match"] = {lang: mean_std([r["test_exact_match"][lang] for r in runs])
                                             for lang in languages}
        if cfg.oracle:
            result["summary_oracle"] = {lang: mean_std([r["oracle_test"][lang] for r in runs]) for lang in languages}
        return result

    def markdown(self, result):
        langs = result["languages"] + ["avg"]
        lines = ["| selection | " + " | ".join(langs) + " |", "|" + "---|" * (len(langs) + 1),
                 "| English dev | " + " | ".join(fmt(result["summary"][lang]) for lang in langs) + " |"]
        if "summary_oracle" in result:
            oracle = result["summary_oracle"]
            lines.append("| target dev (oracle) | " + " | ".join(fmt(oracle[lang]) for lang in result["languages"])
                         + " | |")
        title = (f"{result['task']} zero-shot {result['metric']} (%), model `{result['model']}`, "
                 f"seeds {','.join(map(str, result['seeds']))}")
        if "summary_exact_match" in result:
            em = result["summary_exact_match"]
            lines.append("| exact match | " + " | ".join(fmt(em[lang]) for lang in result["languages"]) + " | |")
        return title + "\n\n" + "\n".join(lines)

    def columns(self, result):
        return {self.name: result["summary"]["avg"]["mean"]}

    def cell(self, result):
        return fmt(result["summary"]["avg"])

    def card(self, result):
        langs = result["languages"]
        config = result.get("config", {})
        return {"metric": result["metric"], "per_language": {lang: fmt(result["summary"][lang]) for lang in langs},
                "avg": fmt(result["summary"]["avg"]),
                "detail": f"zero-shot, English-dev selection, seeds {','.join(map(str, result['seeds']))}",
                # what `mmkd push` turns into the card's model-index
                "values": {lang: result["summary"][lang]["mean"] for lang in langs},
                "split": config.get("test_split", "test") if result["task"] != "xquad" else "validation",
                "hub_dataset": result.get("data", {}).get("hub", {}).get("test")}   # None: read from local files


class Retrieval(Task):
    """Translation retrieval in both directions, [CLS] and mean pooling, and the held-out alignment
    InfoNCE (no fine-tuning); `cfg.pairs` names the sets, `cfg.max_eval_examples` caps each."""
    name, header = "retrieval", "retrieval (cls / mean)"

    def run(self, cfg):
        return run_retrieval(cfg.model, list(cfg.pairs), cfg.max_eval_examples, cfg.trust_remote_code,
                             cfg.mixed_precision)

    def markdown(self, result):
        rows = ["| set | n | cls x→en | cls en→x | mean x→en | mean en→x | InfoNCE cls | InfoNCE mean |",
                "|---|---|---|---|---|---|---|---|"]
        for name, s in result["sets"].items():
            loss = " | ".join(f"{s[k]:.3f}" if k in s else "–" for k in ("cls_infonce", "mean_infonce"))
            rows.append(f"| {name} | {s['n']} | {s['cls_x2en']:.1f} | {s['cls_en2x']:.1f} | "
                        f"{s['mean_x2en']:.1f} | {s['mean_en2x']:.1f} | {loss} |")
        return (f"Translation retrieval accuracy (%), model `{result['model']}`; InfoNCE: the held-out alignment "
                f"loss at τ {ALIGNMENT_TEMPERATURE} (lower is better)\n\n" + "\n".join(rows))

    def columns(self, result):
        return {"retrieval": result["average"]["cls"], "retrieval_mean": result["average"]["mean"]}

    def cell(self, result):
        return f"{result['average']['cls']:.1f} / {result['average']['mean']:.1f}"

    def card(self, result):
        per = {name: f"{s['cls']:.1f} / {s['mean']:.1f}" for name, s in result["sets"].items()}
        return {"metric": "accuracy [CLS] / mean-pool", "per_language": per,
                "avg": f"{result['average']['cls']:.1f} / {result['average']['mean']:.1f}",
                "detail": "translation retrieval, no fine-tuning"}


def _data_record(cfg: EvalConfig, hub: dict) -> dict:
    """Where the evaluation's data came from: the hub datasets at their commits, the local files."""
    local = {k: v for k, v in (("data_dir", cfg.data_dir), ("train_file", cfg.train_file), ("dev_file", cfg.dev_file)) if v}
    return {"hub": hub, "local": local}


TASKS: dict[str, Task] = {t.name: t for t in (ZeroShot("xnli", "accuracy", classify),
                                              ZeroShot("pawsx", "accuracy", classify), ZeroShot("xquad", "f1", qa),
                                              Retrieval())}


def task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["Task", "ZeroShot", "Retrieval", "TASKS", "task", "mean_std", "fmt"]
