"""Fine-tuning seeds run one after another, or at once in worker processes, one device each.

Each seed's run is a function of (settings, seed) alone (it seeds everything itself), so where it
runs changes nothing but the time: with several GPUs visible, `seed_processes=0` (auto) puts one
seed on each; on one GPU or a CPU the seeds run in turn. N > 1 on a CPU shares its cores between N
processes (each gets cores ÷ N threads) — useful only to test the parallel path.

A long evaluation keeps each finished seed (`keep`: OUT/seeds/seed-N.json, with what it was run
from), so an interrupted one run again with the same settings runs only the seeds it had not
finished. A kept seed is reused only when every setting but `seeds`, `seed_processes` and `out` is
the same and the model folder's files are the same (name, size, modification time); otherwise it
is run again and its file replaced.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import torch

from mmkd.atomic import write_text
from mmkd.console import say

_slot: dict = {}


def processes(asked: int, n_seeds: int) -> int:
    """How many worker processes: `asked`, or (0) one per visible GPU when there are several."""
    if asked == 0:
        asked = torch.cuda.device_count() if torch.cuda.device_count() > 1 else 1
    return max(1, min(asked, n_seeds))


def _init(slots, threads: int) -> None:
    index = slots.get()
    _slot["index"] = index
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())    # "cuda" now means this worker's GPU


def _run(run_seed: Callable, cfg, seed: int) -> dict:
    return run_seed(cfg, seed)


_NOT_IDENTITY = ("seeds", "seed_processes", "out")    # settings a seed's run does not depend on
_CARD = ("eval", "README.md", "eval_summary.json")      # what an evaluation writes into a student's folder


def identity(cfg) -> dict:
    """What one seed's run is a function of, besides its seed: the settings and the model's files
    (but for what evaluations write there: its eval/ folder and its model card)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IDENTITY}
    model = Path(cfg.model)
    files = None
    if model.is_dir():
        files = {str(f.relative_to(model)): [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(model.rglob("*"))
                 if f.is_file() and f.relative_to(model).parts[0] not in _CARD}
    return json.loads(json.dumps({"settings": settings, "model_files": files}))


class Kept:
    """The finished seeds of one evaluation, one JSON file each under `folder`."""

    def __init__(self, folder: Path, cfg):
        self.folder, self.identity = Path(folder), identity(cfg)

    def path(self, seed: int) -> Path:
        return self.folder / f"seed-{seed}.json"

    def load(self, seed: int) -> dict | None:
        try:
            saved = json.loads(self.path(seed).read_text())
        except (OSError, ValueError):
            return None                      # not finished (files are written whole, by rename)
        return saved.get("run") if saved.get("identity") == self.identity else None

    def save(self, seed: int, run: dict) -> str:
        """Keep `run`; returns it as JSON text."""
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(run, ensure_ascii=False)
        write_text(self.path(seed), f'{{"identity": {json.dumps(self.identity)}, "run": {text}}}\n')
        return text


def run_seeds(run_seed: Callable, cfg, seeds: list[int], asked: int = 0, keep: Path | None = None) -> list[dict]:
    """`run_seed(cfg, seed)` for every seed, in the order given. With `keep`, each seed is kept there
    as it finishes, and a seed an earlier run of the same evaluation kept is not run again."""
    kept = Kept(keep, cfg) if keep is not None else None
    done: dict[int, dict] = {}
    if kept is not None:
        done = {seed: run for seed in seeds if (run := kept.load(seed)) is not None}
        if done:
            say(f"eval: seed(s) {', '.join(map(str, done))} finished earlier with these settings and this model; "
                f"kept in {keep}, not run again")

    def finished(seed: int, run: dict) -> None:
        if kept is not None:
            run = json.loads(kept.save(seed, run))     # as a resumed evaluation reads it, so both agree
        done[seed] = run

    todo = [seed for seed in seeds if seed not in done]
    n = processes(asked, len(todo)) if todo else 1
    if n == 1:
        for seed in todo:
            finished(seed, run_seed(cfg, seed))
        return [done[seed] for seed in seeds]
    context = mp.get_context("spawn")         # CUDA cannot be forked; spawn is also what every platform has
    slots = context.Queue()
    for i in range(n):
        slots.put(i)
    threads = max(1, (torch.get_num_threads() if not torch.cuda.is_available() else os.cpu_count() or 1) // n)
    with ProcessPoolExecutor(n, mp_context=context, initializer=_init, initargs=(slots, threads)) as pool:
        futures = {pool.submit(_run, run_seed, cfg, seed): seed for seed in todo}
        for future in as_completed(futures):
            finished(futures[future], future.result())
    return [done[seed] for seed in seeds]


__all__ = ["run_seeds", "processes", "Kept", "identity"]
