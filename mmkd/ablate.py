"""`mmkd ablate`: MMKD and its four ablations (paper Table 5) from one teacher cache.

Five runs (`mmkd`, `-xwcl`, `-tlm`, `-senta`, `-struca`) share every setting but the removed
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

from mmkd.batching import OBJECTIVES
from mmkd.eval.finetune import EvalConfig
from mmkd.train import TrainConfig, latest_checkpoint, train

RUNS = [("mmkd", None)] + [(f"-{o}", o) for o in ("xwcl", "tlm", "senta", "struca")]


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


def _score(task: str, result: dict) -> float:
    if task == "retrieval":
        return result["average"]["cls"]
    return result["summary"]["avg"]["mean"]


def run_ablation(cfg: AblationConfig, progress: bool = True, log=print) -> dict:
    from mmkd import teacher

    if cfg.base.online_teacher or not cfg.base.cache:
        raise ValueError("the ablation sweep reads one teacher cache: give --cache")
    if cfg.base.without:
        raise ValueError("the sweep removes each objective itself; do not pass --without")
    if "retrieval" in cfg.evals and not cfg.retrieval_pairs:
        raise ValueError("retrieval needs held-out pairs: --pairs NAME=EN_FILE,X_FILE (repeatable)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    forwards_before = teacher.FORWARD_PASSES
    log(f"ablation sweep: 5 runs from the cache {', '.join(cfg.base.cache)}; the teacher encoder is not loaded")
    table = {"runs": {}, "evals": cfg.evals}
    if cfg.include_baseline:
        log(f"baseline (initial student {cfg.base.student})")
        base = _evaluate(cfg.base.student, out / "baseline" / "eval", cfg, log)
        table["runs"]["baseline"] = {task: _score(task, r) for task, r in base.items()}
    for name, removed in RUNS:
        run_cfg = _run_config(cfg, name, removed)
        run_dir = Path(run_cfg.out)
        if (run_dir / "student" / "config.json").is_file():
            log(f"{name}: trained already ({run_dir}/student), skipping training")
        else:
            resume = latest_checkpoint(run_dir) is not None
            log(f"{name}: {'resuming' if resume else 'training'} without {removed or 'nothing'} -> {run_dir}")
            train(run_cfg, resume=resume, progress=progress)
        config = json.loads((run_dir / "config.json").read_text())["config"]
        assert config["without"] == ([removed] if removed else []), f"{run_dir}: config.json has without={config['without']}"
        results = _evaluate(str(run_dir / "student"), run_dir / "student" / "eval", cfg, log)
        table["runs"][name] = {task: _score(task, r) for task, r in results.items()}
    forwards = teacher.FORWARD_PASSES - forwards_before
    log(f"teacher forward passes during the sweep: {forwards}")
    table["teacher_forward_passes"] = forwards
    table["cache"] = cfg.base.cache
    (out / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / "ablation.md").write_text(ablation_markdown(table) + "\n")
    return table


def ablation_markdown(table: dict) -> str:
    names = {"retrieval": "retrieval acc. ([CLS], mean of both directions)", "xnli": "XNLI acc.",
             "pawsx": "PAWS-X acc.", "xquad": "XQuAD F1"}
    evals = table["evals"]
    lines = ["| model | " + " | ".join(names.get(e, e) for e in evals) + " |", "|" + "---|" * (len(evals) + 1)]
    for name, scores in table["runs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[e]:.1f}" for e in evals) + " |")
    return "\n".join(lines)


__all__ = ["AblationConfig", "run_ablation", "RUNS", "OBJECTIVES"]
