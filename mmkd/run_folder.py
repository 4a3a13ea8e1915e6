"""The run folder of `mmkd train`: what may be written into it, deleted from it, resumed from it.

- A folder that holds anything but an mmkd run is never trained into, with or without
  `--overwrite`: a user's own folder is not a run folder.
- `--overwrite` deletes only what a run writes (RUN_ENTRIES), and only after everything that can
  be checked was checked (the settings, the caches open); never the current directory, the cache
  being trained on, or a folder holding it.
- One writer: the folder's lock (mmkd/lock.py) is held for the whole run; a second `train` on the
  same `--out` is refused naming the first.
- `--resume` refuses a checkpoint made with other settings, naming each setting that differs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmkd.config import TrainConfig, TrainingError, differences, from_saved
from mmkd.paths import check_deletable

# What `mmkd train` writes into its run folder (accelerate's tracker writes `mmkd/`).
RUN_ENTRIES = {"config.json", "metrics.csv", "checkpoints", "student", "student.tmp", "student.old",
               "heads.safetensors", "lock", "verified-cache", "mmkd"}


def is_run(folder: Path) -> bool:
    """A folder `mmkd train` made: its config.json is a run's, or it holds checkpoints."""
    config = folder / "config.json"
    if (folder / "checkpoints").is_dir():
        return True
    try:
        data = json.loads(config.read_text())
        return isinstance(data, dict) and "mmkd_version" in data and isinstance(data.get("config"), dict)
    except (OSError, ValueError):
        return False


class RunFolder:
    def __init__(self, out: Path, accelerator):
        self.out, self.accelerator = Path(out), accelerator
        self.lock = None

    def open(self, cfg: TrainConfig, resume: bool, overwrite: bool, open_features):
        """Check the folder, open the run's data (`open_features()`), then clear it if asked and take
        its lock. Returns the features."""
        from fsspec.implementations.local import LocalFileSystem

        from mmkd.checkpoint import latest_checkpoint
        from mmkd.lock import Lock

        out, acc = self.out, self.accelerator
        if out.exists() and not out.is_dir():
            raise TrainingError(f"{out} is a file, not a folder; choose another --out")
        entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
        run = is_run(out)
        if entries - {"lock"} and not run:
            raise TrainingError(f"{out} exists and is not an mmkd run folder ({', '.join(sorted(entries)[:3])} ...); "
                                "mmkd trains only into a new or empty folder or a run of its own: choose another --out")
        existing = latest_checkpoint(out) if run else None
        if existing and not resume and not overwrite:
            raise TrainingError(f"{out} already holds a run (checkpoint {existing.name}); pass --resume to "
                                "continue it or --overwrite to start again")
        if overwrite and entries:
            check_deletable(out, entries, "run folder", [*cfg.cache, *cfg.corpora], RUN_ENTRIES)
        features = open_features()                # a missing or corrupt cache stops here, before any deletion
        if acc.is_main_process:
            if overwrite and entries:
                for name in sorted(entries - {"lock"}):
                    path = out / name
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            out.mkdir(parents=True, exist_ok=True)
            self.lock = Lock(LocalFileSystem(), str(out), str(out), "mmkd train", TrainingError)
            self.lock.acquire()
        acc.wait_for_everyone()
        return features

    def check_resume(self, checkpoint: Path, cfg: TrainConfig, identities: list[dict]) -> None:
        """Refuse to resume a checkpoint made with other settings or data, naming what differs."""
        from mmkd.checkpoint import CheckpointError

        try:
            meta = json.loads((checkpoint / "meta.json").read_text())
            saved = from_saved(meta["config"], str(checkpoint / "meta.json"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{checkpoint / 'meta.json'}: unreadable ({str(e).splitlines()[0][:120]}); move "
                                  f"{checkpoint.name} away and write the previous step's name into "
                                  f"{checkpoint.parent / 'latest'}, or start again with --overwrite") from None
        diffs = differences(saved, cfg)
        if diffs:
            raise TrainingError(f"cannot resume {checkpoint}: the run was made with other settings:\n  "
                                + "\n  ".join(diffs) + "\n(resume without them, or start a new run: another --out, or "
                                "--overwrite)")
        if meta.get("caches") != identities:
            raise TrainingError(f"cannot resume {checkpoint}: the run was trained on other caches/corpora "
                                f"({meta.get('caches')} vs {identities})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
            self.lock = None


__all__ = ["RunFolder", "RUN_ENTRIES", "is_run"]
