"""Experiment trackers beside metrics.csv: any tracker accelerate supports, by name, one run per
run folder that a resume continues.

`log_with` is `auto` (TensorBoard when installed, else none), `none`, `all` (every supported
tracker that is installed) or a comma-separated list of names (`tensorboard,mlflow`); a named
tracker that is not installed is refused in one line before anything is written. `run_name`
names the run (default: the run folder's name). `RUN/tracker.json` keeps the name and each
tracker's run id (W&B's id, MLflow's run id, ...), so `--resume` logs into the same tracker run
rather than starting a new one. TensorBoard writes RUN/mmkd/ and appends there.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path

from mmkd.errors import TrainingError

# accelerate's LoggerType values (tests/test_trainer.py checks the list against accelerate's own).
TRACKERS = ("aim", "clearml", "comet_ml", "dvclive", "mlflow", "swanlab", "tensorboard", "trackio", "wandb")
CHOICES = ("auto", "none", "all", *TRACKERS)
_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "comet_ml": ("comet_ml",), "aim": ("aim",),
            "clearml": ("clearml",), "dvclive": ("dvclive",), "mlflow": ("mlflow",), "swanlab": ("swanlab",),
            "trackio": ("trackio",), "wandb": ("wandb",)}
RECORD = "tracker.json"
PROJECT = "mmkd"
# What trackers write inside the run folder (`--overwrite` may delete them with the run).
FOLDERS = {RECORD, PROJECT, "wandb", "mlruns", ".aim", "dvclive", "swanlog", "trackio"}


def installed(name: str) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in _MODULES[name])


def check(setting: str) -> None:
    """Refuse a log_with value that names no tracker or one not installed (before any work)."""
    resolve(setting)


def resolve(setting: str) -> list[str]:
    """log_with as the list of tracker names to start."""
    if setting in ("none", ""):
        return []
    if setting == "auto":
        return ["tensorboard"] if installed("tensorboard") else []
    if setting == "all":
        return [t for t in TRACKERS if installed(t)]
    names = [n.strip() for n in setting.split(",") if n.strip()]
    for name in names:
        if name not in TRACKERS:
            raise TrainingError(f"log_with={name!r}: not a tracker accelerate knows; choose from "
                                f"{', '.join(CHOICES)} (or several, comma-separated)")
        if not installed(name):
            raise TrainingError(f"log_with={name}: {name} is not installed (pip install {name.replace('_', '-')}); "
                                "metrics.csv is written in any case")
    return names


def start(accelerator, names: list[str], out: Path, run_name: str | None, config: dict, resume: bool) -> dict:
    """Start the trackers for this run folder; on resume, the same tracker runs. Returns the record."""
    saved = {}
    if resume and (out / RECORD).is_file():
        try:
            saved = json.loads((out / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
    name = run_name or saved.get("run_name") or out.resolve().name
    ids = dict(saved.get("ids") or {})
    ids.setdefault("wandb", uuid.uuid4().hex[:12])           # W&B takes the id we give it: known before start
    kwargs = {"wandb": {"name": name, "id": ids["wandb"], "resume": "allow"},
              "mlflow": {"run_name": name, **({"run_id": ids["mlflow"]} if ids.get("mlflow") else {})},
              "comet_ml": {"experiment_name": name}, "aim": {"run_hash": ids.get("aim")} if ids.get("aim") else {},
              "clearml": {"task_name": name}, "dvclive": {"resume": bool(saved)}, "swanlab": {"experiment_name": name},
              "trackio": {"name": name, "resume": "allow"}}
    accelerator.init_trackers(PROJECT, config=config, init_kwargs={k: v for k, v in kwargs.items() if k in names})
    for tracker in accelerator.trackers:
        run_id = _run_id(tracker)
        if run_id:
            ids[tracker.name] = run_id
    return {"run_name": name, "trackers": names, "ids": {k: v for k, v in ids.items() if k in names}}


def _run_id(tracker) -> str | None:
    """The tracker's own id of its run, where it has one we can resume by."""
    try:
        if tracker.name == "mlflow":
            import mlflow   # lazy: optional: only an mlflow run has it
            run = mlflow.active_run()
            return run.info.run_id if run else None
        if tracker.name == "aim":
            return tracker.writer.hash
        if tracker.name == "wandb":
            return tracker.run.id
    except Exception:       # a tracker's internals: an id we cannot read means a new run on resume, no failure
        return None
    return None
