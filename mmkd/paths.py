"""Default locations, and which folders may be deleted (shared by both stages, so neither imports the
other for them)."""

from __future__ import annotations

import os
from pathlib import Path

from mmkd.errors import MMKDError


def default_data_dir() -> str:
    """Where prepared corpora live: $MMKD_DATA_DIR, else ./data."""
    return os.environ.get("MMKD_DATA_DIR", "data")


def check_deletable(folder: Path, entries: set[str], kind: str, protected: list[str], allowed: set[str]) -> None:
    """Refuse to delete `folder` unless it holds only `allowed` entries and is none of `protected`
    (nor a folder holding one of them) and not the current directory."""
    here = Path(folder).resolve()
    if here == Path.cwd().resolve() or here in Path.cwd().resolve().parents or here == Path(here.anchor) \
            or here == Path.home().resolve():
        raise MMKDError(f"{folder}: --overwrite never deletes the current directory, a folder holding it, the home "
                        "folder or the root; give the run its own folder")
    for p in protected:
        if "://" in p and not p.startswith("file://"):
            continue
        target = Path(p.removeprefix("file://")).resolve()
        if target == here or here in target.parents:
            raise MMKDError(f"{folder}: --overwrite would delete {p}, which this run reads; choose another --out")
    foreign = sorted(entries - allowed)
    if foreign:
        raise MMKDError(f"{folder} holds files mmkd did not write ({', '.join(foreign[:5])}); it is not only a {kind}, "
                        "so --overwrite deletes nothing there: move them away or choose another folder")
