"""`mmkd ablate`: MMKD and its four ablations (paper Table 5) from one teacher cache.

Five runs (`mmkd`, then `-xwcl`, `-tlm`, `-senta`, `-struca`: one per objective of mmkd.objectives) share every setting but the removed
objective and read the same cache: the teacher ran once, when the cache was written. Each run is
`<out>/<name>/`; a finished run (its student/ exists) is skipped, an interrupted one resumes from
its checkpoint, and evaluations whose results.json exists are skipped, so an interrupted sweep
continues where it stopped. The table goes to `<out>/ablation.md` and `<out>/ablation.json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from mmkd import objectives as objs
from mmkd.eval.finetune import EvalConfig
from mmkd.train import TrainConfig, latest_checkpoint, train

def runs() -> list[tuple[str, str | None]]:
    """MMKD, then one run without each objective, in the order of the paper's Table 5."""
    return [("mmkd", None)] + [(f"-{o.name}", o.name) for o in sorted(objs.OBJECTIVES, key=lambda o: o.table5_row)]


@dataclass
class AblationConfig:
    base: TrainConfig                                    # the MMKD run; `without` must be empty
    out: str = "runs/ablate"
    evals: list[str] = field(default_factory=lambda: ["retrieval"])
    retrieval_pairs: list[str] = field(default_factory=list)
    eval: EvalConfig | None = None                       # settings for xnli/pawsx/xquad (task/model filled in)
    include_baseline: bool = True                        # also evaluate the initial student


def _run_config(cfg: AblationConfig, name: str, removed: str | None) -> TrainConfig:
    return dataclasses.replace(cfg.base, out=str(Path(cfg.out) / name), without=[removed] if removed else [])


def _evaluate(model: str, out: Path, cfg: AblationConfig, log) -> dict[str, dict]:
    """Evaluations run on the main process only (under `accelerate launch` the others wait)."""
    from mmkd.dist import process_state
    from mmkd.eval.retrieval import run_retrieval
    from mmkd.eval.runner import run_task, write_result

    state = process_state()
    results = {}
    for task in cfg.evals:
        dest = out / task
        if state.is_main_process and not (dest / "results.json").is_file():
            if task == "retrieval":
                result = run_retrieval(model, cfg.retrieval_pairs)
            else:
                result = run_task(dataclasses.replace(cfg.eval or EvalConfig(task=task, model=model), task=task,
                                                      model=model))
            write_result(result, dest)
        elif (dest / "results.json").is_file():
            log(f"  {task}: reusing {dest}/results.json")
        state.wait_for_everyone()
        results[task] = json.loads((dest / "results.json").read_text())
    return results


def _scores(task: str, result: dict) -> dict[str, float]:
    """The table's columns for one evaluation: retrieval gives [CLS] and mean pooling."""
    if task == "retrieval":
        return {"retrieval": result["average"]["cls"], "retrieval_mean": result["average"]["mean"]}
    return {task: result["summary"]["avg"]["mean"]}


def _row(results: dict[str, dict]) -> dict[str, float]:
    return {col: v for task, r in results.items() for col, v in _scores(task, r).items()}


def run_ablation(cfg: AblationConfig, progress: bool = True, log=print) -> dict:
    from mmkd.teacher import count_forwards

    with count_forwards() as teacher_forwards:
        table = _sweep(cfg, progress, log)
    log(f"teacher forward passes during the sweep: {teacher_forwards.passes}")
    table["teacher_forward_passes"] = teacher_forwards.passes
    (Path(cfg.out) / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
    (Path(cfg.out) / "ablation.md").write_text(ablation_markdown(table) + "\n")
    return table


def _sweep(cfg: AblationConfig, progress: bool, log) -> dict:
    if cfg.base.online_teacher or not cfg.base.cache:
        raise ValueError("the ablation sweep reads one teacher cache: give --cache")
    if cfg.base.without:
        raise ValueError("the sweep removes each objective itself; do not pass --without")
    if "retrieval" in cfg.evals and not cfg.retrieval_pairs:
        raise ValueError("retrieval needs held-out pairs: --pairs NAME=EN_FILE,X_FILE (repeatable)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"ablation sweep: 5 runs from the cache {', '.join(cfg.base.cache)}; the teacher encoder is not loaded")
    table = {"runs": {}, "evals": cfg.evals}
    if cfg.include_baseline:
        log(f"baseline (initial student {cfg.base.student})")
        base = _evaluate(cfg.base.student, out / "baseline" / "eval", cfg, log)
        table["runs"]["baseline"] = _row(base)
    for name, removed in runs():
        run_cfg = _run_config(cfg, name, removed)
        run_dir = Path(run_cfg.out)
        if (run_dir / "student" / "config.json").is_file():
            log(f"{name}: trained already ({run_dir}/student), skipping training")
        else:
            resume = latest_checkpoint(run_dir) is not None
            what = f"without {removed}" if removed else "with all four objectives"
            log(f"{name}: {'resuming' if resume else 'training'} {what} -> {run_dir}")
            train(run_cfg, resume=resume, progress=progress)
        config = json.loads((run_dir / "config.json").read_text())["config"]
        if config["without"] != ([removed] if removed else []):
            raise ValueError(f"{run_dir}/config.json has without={config['without']}, not the {name} run's; "
                             "another sweep wrote this folder: give another --out")
        results = _evaluate(str(run_dir / "student"), run_dir / "student" / "eval", cfg, log)
        table["runs"][name] = _row(results)
    table["cache"] = cfg.base.cache
    return table


def ablation_markdown(table: dict) -> str:
    names = {"retrieval": "retrieval acc. [CLS]", "retrieval_mean": "retrieval acc. mean-pool",
             "xnli": "XNLI acc.", "pawsx": "PAWS-X acc.", "xquad": "XQuAD F1"}
    columns = list(next(iter(table["runs"].values()), {}))
    lines = ["| model | " + " | ".join(names.get(c, c) for c in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, scores in table["runs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[c]:.1f}" for c in columns) + " |")
    if "retrieval" in table["evals"]:
        lines += ["", "Retrieval: held-out translation pairs, x→en and en→x averaged over the sets."]
    return "\n".join(lines)


__all__ = ["AblationConfig", "run_ablation", "runs"]
