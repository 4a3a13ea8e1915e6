"""Fine-tuning seeds run one after another, or at once in worker processes, one device each.

Each seed's run is a function of (settings, seed) alone (it seeds everything itself), so where it
runs changes nothing but the time: with several GPUs visible, `--seed-processes 0` (auto) puts one
seed on each; on one GPU or a CPU the seeds run in turn. N > 1 on a CPU shares its cores between N
processes (each gets cores ÷ N threads) — useful only to test the parallel path.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

_slot: dict = {}


def processes(asked: int, n_seeds: int) -> int:
    """How many worker processes: `asked`, or (0) one per visible GPU when there are several."""
    if asked == 0:
        import torch

        asked = torch.cuda.device_count() if torch.cuda.device_count() > 1 else 1
    return max(1, min(asked, n_seeds))


def _init(slots, threads: int) -> None:
    import torch

    index = slots.get()
    _slot["index"] = index
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())    # "cuda" now means this worker's GPU


def _run(run_seed: Callable, cfg, seed: int) -> dict:
    return run_seed(cfg, seed)


def run_seeds(run_seed: Callable, cfg, seeds: list[int], asked: int = 0) -> list[dict]:
    """`run_seed(cfg, seed)` for every seed, in the order given."""
    n = processes(asked, len(seeds))
    if n == 1:
        return [run_seed(cfg, seed) for seed in seeds]
    import torch

    context = mp.get_context("spawn")         # CUDA cannot be forked; spawn is also what every platform has
    slots = context.Queue()
    for i in range(n):
        slots.put(i)
    threads = max(1, (torch.get_num_threads() if not torch.cuda.is_available() else os.cpu_count() or 1) // n)
    with ProcessPoolExecutor(n, mp_context=context, initializer=_init, initargs=(slots, threads)) as pool:
        futures = [pool.submit(_run, run_seed, cfg, seed) for seed in seeds]
        return [f.result() for f in futures]


__all__ = ["run_seeds", "processes"]
