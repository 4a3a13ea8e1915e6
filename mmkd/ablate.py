"""`mmkd ablate`: MMKD and its ablations (paper Table 5) from one teacher cache.

One run with every objective, then one without each (in the order of mmkd.objectives), all with
the same settings and reading the same cache: the teacher ran once, when the cache was written.
Each run is `<out>/<name>/`. The sweep records its settings in `<out>/sweep.json`; rerunning with
the same settings continues an interrupted sweep (a finished run is reused, an interrupted one
resumes from its checkpoint, evaluations whose results.json exists are reused), and rerunning with
other settings is refused, naming them, so one table never mixes runs made differently. The
table goes to `<out>/ablation.md` and `<out>/ablation.json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from mmkd import objectives as objs
from mmkd.atomic import write_text
from mmkd.checkpoint import latest_checkpoint
from mmkd.config import RESUMABLE, TrainConfig, validate
from mmkd.dist import process_state
from mmkd.errors import MMKDError
from mmkd.eval.retrieval import read_parallel
from mmkd.eval.runner import run_task, write_result
from mmkd.eval.settings import EvalConfig
from mmkd.eval.tasks import task
from mmkd.features import open_cached
from mmkd.settings import dotted, setting
from mmkd.teacher import count_forwards
from mmkd.trainer import train_to_end

SWEEP_FILE = "sweep.json"


def runs() -> list[tuple[str, str | None]]:
    """MMKD, then one run without each objective, in the order of the paper's Table 5."""
    return [("mmkd", None)] + [(f"-{o.name}", o.name) for o in sorted(objs.OBJECTIVES, key=lambda o: o.table5_row)]


@dataclass
class AblationConfig:
    base: TrainConfig = setting(help="The MMKD run's settings; `without` must be empty.", factory=TrainConfig,
                                cli=False)
    out: str = setting("runs/ablate", "Sweep folder: one run folder per model.", cli=False)
    evals: list[str] = setting(help="Evaluations of every model.", factory=lambda: ["retrieval"], cli=False,
                               choices=("retrieval", "xnli", "pawsx", "xquad"))
    retrieval_pairs: list[str] = setting(help="Held-out parallel sentences for retrieval.", factory=list, cli=False)
    eval: EvalConfig = setting(help="Settings of xnli/pawsx/xquad (task and model filled in per run).",
                               factory=EvalConfig, cli=False)
    include_baseline: bool = setting(True, "Also evaluate the initial student.", cli=False)


def _run_config(cfg: AblationConfig, name: str, removed: str | None) -> TrainConfig:
    return dataclasses.replace(cfg.base, out=str(Path(cfg.out) / name), without=[removed] if removed else [])


def _evaluate(model: str, out: Path, cfg: AblationConfig, log) -> dict[str, dict]:
    """Evaluations run on the main process only (under `accelerate launch` the others wait)."""
    state = process_state()
    # Evaluations follow the runs' precision unless --eval-mixed-precision says otherwise.
    precision = cfg.base.mixed_precision if cfg.eval.mixed_precision == "auto" else cfg.eval.mixed_precision
    results = {}
    for name in cfg.evals:
        dest = out / name
        if state.is_main_process and not (dest / "results.json").is_file():
            result = run_task(dataclasses.replace(cfg.eval, task=name, model=model, mixed_precision=precision,
                                                  pairs=cfg.retrieval_pairs, out=str(dest)))   # seeds kept there
            write_result(result, dest)
        elif (dest / "results.json").is_file():
            log(f"  {name}: reusing {dest}/results.json")
        state.wait_for_everyone()
        results[name] = json.loads((dest / "results.json").read_text())
    return results


def _row(results: dict[str, dict]) -> dict[str, float]:
    return {col: v for name, r in results.items() for col, v in task(name).columns(r).items()}


def recorded(cfg: AblationConfig) -> dict:
    """What makes two sweeps comparable: every training setting that changes results
    (config.RESUMABLE are those that do not) and the cache the table is of, the evaluations and
    their settings."""
    base = {k: v for k, v in dataclasses.asdict(cfg.base).items() if k not in RESUMABLE or k == "cache"}
    return {"train": base, "evals": cfg.evals, "retrieval_pairs": cfg.retrieval_pairs,
            "eval": {k: v for k, v in dataclasses.asdict(cfg.eval).items() if k not in ("task", "model", "out")},
            "include_baseline": cfg.include_baseline}


def _check_same_sweep(cfg: AblationConfig, out: Path) -> None:
    """OUT holds this sweep (its sweep.json records the same settings), or nothing yet. Every process
    of a multi-process sweep checks; the folder is listed before sweep.json is looked for, so another
    process's sweep.json (or its temporary file, while being written) is never taken for a stranger's."""
    path = out / SWEEP_FILE
    want = recorded(cfg)
    foreign = ([p for p in out.iterdir() if p.name != SWEEP_FILE and not p.name.startswith(f".{SWEEP_FILE}.tmp-")]
               if out.is_dir() else [])
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError):
            raise MMKDError(f"{path}: unreadable; it records this sweep's settings: move the folder away") from None
        old = dotted(have) if isinstance(have, dict) else {}
        diffs = [f"{k}: sweep has {old.get(k)!r}, now {v!r}" for k, v in dotted(want).items() if old.get(k) != v]
        if diffs:
            raise MMKDError(f"{out} holds a sweep made with other settings; one table does not mix them: give "
                            "another --out, or repeat the sweep's settings:\n  " + "\n  ".join(diffs[:12]))
        return
    if foreign or (out.exists() and not out.is_dir()):
        raise MMKDError(f"{out} exists and holds no {SWEEP_FILE} (not a sweep of this mmkd): give another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(want, indent=2, sort_keys=True) + "\n")


def run_ablation(cfg: AblationConfig, progress: bool = True, log=print) -> dict:
    with count_forwards() as teacher_forwards:
        table = _sweep(cfg, progress, log)
    log(f"teacher forward passes during the sweep: {teacher_forwards.passes}")
    table["teacher_forward_passes"] = teacher_forwards.passes
    write_text(Path(cfg.out) / "ablation.json", json.dumps(table, indent=2) + "\n")
    write_text(Path(cfg.out) / "ablation.md", ablation_markdown(table) + "\n")
    return table


def _sweep(cfg: AblationConfig, progress: bool, log) -> dict:
    if cfg.base.online_teacher or not cfg.base.cache:
        raise MMKDError("the ablation sweep reads one teacher cache: give --cache")
    if cfg.base.without:
        raise MMKDError("the sweep removes each objective itself; do not give train.without")
    if "retrieval" in cfg.evals and not cfg.retrieval_pairs:
        raise MMKDError("retrieval needs held-out pairs: --pairs NAME=EN_FILE,X_FILE (repeatable)")
    validate(cfg.base)

    open_cached(cfg.base.cache)                     # a missing or foreign cache stops the sweep before any work
    for spec in cfg.retrieval_pairs:
        read_parallel(spec, 1)
    out = Path(cfg.out)
    _check_same_sweep(cfg, out)
    planned = runs()
    log(f"ablation sweep: {len(planned)} runs ({', '.join(n for n, _ in planned)}) from the cache "
        f"{', '.join(cfg.base.cache)}; the teacher encoder is not loaded")
    table = {"runs": {}, "evals": cfg.evals}
    if cfg.include_baseline:
        log(f"baseline (initial student {cfg.base.student})")
        table["runs"]["baseline"] = _row(_evaluate(cfg.base.student, out / "baseline" / "eval", cfg, log))
    for name, removed in planned:
        run_cfg = _run_config(cfg, name, removed)
        run_dir = Path(run_cfg.out)
        if (run_dir / "student" / "config.json").is_file():
            log(f"{name}: trained already ({run_dir}/student), skipping training")
        else:
            what = f"without {removed}" if removed else "with every objective"
            log(f"{name}: {'resuming' if latest_checkpoint(run_dir) else 'training'} {what} -> {run_dir}")
        train_to_end(run_cfg, progress)
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
