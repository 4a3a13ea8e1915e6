"""The run folder of `mmkd train`: what may be written into it, deleted from it, resumed from it.

- A folder that holds anything but an mmkd run is never trained into, with or without
  `--overwrite`: a user's own folder is not a run folder.
- `--overwrite` deletes only what a run writes (RUN_ENTRIES), and only after everything that can
  be checked was checked (the settings, the caches open); never the current directory, the cache
  being trained on, or a folder holding it.
- One writer: the folder's lock (mmkd/lock.py) is held for the whole run; a second `train` on the
  same `--out` is refused naming the first.
- Shared or node-local: `--out` may be one folder every machine sees or one per machine. Each
  distinct folder gets one writer process (mmkd/writers.py), which locks it and writes its
  config.json and checkpoints (every rank adds its RNG state); metrics.csv and student/ are
  written by process 0 only, so on node-local disks they are on machine 0.
- `--resume` refuses a checkpoint made with other settings, naming each setting that differs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from mmkd.checkpoint import CheckpointError, latest_checkpoint
from mmkd.config import TrainConfig, TrainingError, differences, from_saved
from mmkd.lock import LOCK_FILES, Lock
from mmkd.model_card import EVAL_FILE, RUN_FILE
from mmkd.paths import check_deletable
from mmkd.trackers import FOLDERS as TRACKER_FOLDERS
from mmkd.writers import CLAIM, elect

# What `mmkd train` writes into its run folder (accelerate's tracker writes `mmkd/`).
RUN_ENTRIES = {"config.json", "metrics.csv", "metrics.png", "checkpoints", "student", "student.tmp", "student.old",
               "heads.safetensors", "heads.safetensors.tmp", "head_phase.json", "lock", "lock.held", "verified-cache",
               *TRACKER_FOLDERS}
_ASIDE = re.compile(r"\.(config\.json|head_phase\.json|tracker\.json|latest)\.tmp-\d+")       # mmkd/atomic.py's, left by a crash
_STEP = re.compile(r"step-\d{7}(\.tmp)?")
_STEP_FILES = re.compile(r"model\.safetensors|optimizer\.pt|scheduler\.pt|scaler\.pt|meta\.json|"
                         r"rng-rank\d+\.safetensors")
_MARKER = re.compile(r"\.?\d{5}\.json(\.tmp-?\d+)?|\.probe-\d+")
_TRACKER = re.compile(r"events\.out\.tfevents\..+")


def is_run(folder: Path) -> bool:
    """A folder `mmkd train` made: its config.json is a run's (written before the first step), or (a
    run that lost it, a copy of its checkpoints/) `checkpoints/latest` names a checkpoint whose
    meta.json is one. Another tool's `checkpoints/` or `config.json` is neither."""
    if _is_run_record(folder / "config.json"):
        return True
    try:
        name = (folder / "checkpoints" / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(_STEP.fullmatch(name)) and _is_run_record(folder / "checkpoints" / name / "meta.json")


def _is_run_record(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(data, dict) and "mmkd_version" in data and isinstance(data.get("config"), dict)
    except (OSError, ValueError, RecursionError):
        return False


def foreign_files(out: Path) -> list[str]:
    """Every file (or link) under the run folder `out` that `mmkd train` did not write, as a path
    relative to it: `--overwrite` deletes nothing while there is one."""
    out = Path(out)
    found = []
    for top, dirs, files in os.walk(out):
        here = Path(top)
        for name in dirs:
            if (here / name).is_symlink():
                found.append(str((here / name).relative_to(out)))
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for name in files:
            rel = (here / name).relative_to(out)
            if not _ours(out, rel.parts):
                found.append(str(rel))
    return sorted(found)


def _ours(out: Path, parts: tuple[str, ...]) -> bool:
    top = parts[0]
    if len(parts) == 1:
        return (top in RUN_ENTRIES and top not in ("checkpoints", "student", "student.tmp", "student.old",
                                                   "verified-cache", *TRACKER_FOLDERS - {"tracker.json"})) or bool(_ASIDE.fullmatch(top)
                                                                                      or CLAIM.fullmatch(top))
    if top == "checkpoints":
        if len(parts) == 2:
            return parts[1] in ("latest", "latest.tmp") or bool(_ASIDE.fullmatch(parts[1]))
        return len(parts) == 3 and bool(_STEP.fullmatch(parts[1])) and bool(_STEP_FILES.fullmatch(parts[2]))
    if top in ("student", "student.old"):
        return "/".join(parts[1:]) in _student_files(out / top)
    if top == "student.tmp":             # a save interrupted before it listed its files
        return True
    if top == "verified-cache":
        return len(parts) == 3 and bool(_MARKER.fullmatch(parts[2]))
    if top == "mmkd":
        return bool(_TRACKER.fullmatch(parts[-1]))
    if top in TRACKER_FOLDERS:          # another tracker's own folder (wandb/, mlruns/, ...): written for this run
        return True
    return False


def _student_files(folder: Path) -> set[str]:
    """The files a saved student lists in its mmkd_run.json (`model_card.RUN_FILE`), plus the
    evaluation summary `mmkd eval` adds."""
    try:
        listed = json.loads((folder / RUN_FILE).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if not isinstance(listed, list):     # a student saved before the list existed: what save_pretrained writes
        listed = [p.name for p in folder.iterdir() if _LEGACY_STUDENT.fullmatch(p.name)] if folder.is_dir() else []
    return {str(x) for x in listed} | {EVAL_FILE, RUN_FILE}


_LEGACY_STUDENT = re.compile(r"config\.json|model\.safetensors|tokenizer(_config)?\.json|special_tokens_map\.json|"
                             r"vocab\.(txt|json)|merges\.txt|added_tokens\.json|sentencepiece\.bpe\.model|spm\.model|"
                             r"spiece\.model|README\.md|cache-manifest-[^/]+\.json|generation_config\.json")


class RunFolder:
    def __init__(self, out: Path, accelerator):
        self.out, self.accelerator = Path(out), accelerator
        self.lock = None
        self.writes = False       # this process is the writer of its copy of the folder (set by open)

    def open(self, cfg: TrainConfig, resume: bool, overwrite: bool, open_features):
        """Check the folder, take its lock, open the run's data (`open_features()`), then clear it if
        asked. Returns the features. Refused at any point means nothing in the folder changed: the lock
        is taken before anything is deleted (a second `train` never touches a running one's files),
        and a folder made here only to hold the lock is removed again."""
        out, acc = self.out, self.accelerator
        self._check(cfg, resume, overwrite)
        self.writes, existed = elect(out, acc)
        made = self.writes and not existed
        if self.writes:
            self.lock = Lock(LocalFileSystem(), str(out), str(out), "mmkd train", TrainingError)
            try:
                self.lock.acquire()
                entries = self._check(cfg, resume, overwrite)    # again, now that no other writer can change it
            except BaseException:
                self._undo(made)
                raise
        try:
            features = open_features()            # a missing or corrupt cache stops here, before any deletion
        except BaseException:
            self._undo(made)
            raise
        if self.writes and overwrite:
            for name in sorted(entries - LOCK_FILES):
                path = out / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        acc.wait_for_everyone()
        return features

    def _check(self, cfg: TrainConfig, resume: bool, overwrite: bool) -> set[str]:
        out = self.out
        if out.exists() and not out.is_dir():
            raise TrainingError(f"{out} is a file, not a folder; choose another --out")
        # A writer's claim left by a kill during the election is the run's, like an empty lock.
        entries = {p.name for p in out.iterdir() if not CLAIM.fullmatch(p.name)} if out.is_dir() else set()
        run = is_run(out)
        if entries - LOCK_FILES and not run:
            raise TrainingError(f"{out} exists and is not an mmkd run folder ({', '.join(sorted(entries)[:3])} ...); "
                                "mmkd trains only into a new or empty folder or a run of its own: choose another --out")
        existing = latest_checkpoint(out) if run else None
        if existing and not resume and not overwrite:
            raise TrainingError(f"{out} already holds a run (checkpoint {existing.name}); pass --resume to "
                                "continue it or --overwrite to start again")
        if overwrite and entries:
            check_deletable(out, entries, "run folder", [*cfg.cache, *cfg.corpora], RUN_ENTRIES)
            foreign = foreign_files(out)
            if foreign:
                raise TrainingError(f"{out} holds files mmkd did not write ({', '.join(foreign[:5])}"
                                    f"{' ...' if len(foreign) > 5 else ''}), so --overwrite deletes nothing there: "
                                    "move them away or choose another --out")
        return entries

    def _undo(self, made: bool) -> None:
        """Release the lock; remove the folder if this call made it (it holds only the lock file)."""
        if self.lock is not None:
            held = self.lock.held
            self.lock.release()
            self.lock = None
            if made and held:
                shutil.rmtree(self.out, ignore_errors=True)
        elif made:
            shutil.rmtree(self.out, ignore_errors=True)

    def check_resume(self, checkpoint: Path, cfg: TrainConfig, identities: list[dict]) -> None:
        """Refuse to resume a checkpoint made with other settings or data, naming what differs."""
        try:
            meta = json.loads((checkpoint / "meta.json").read_text())
            saved = from_saved(meta["config"], str(checkpoint / "meta.json"), meta.get("config_version"))
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
