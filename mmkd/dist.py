"""Process/device state from accelerate, shared by cache-teacher and train.

On a machine without CUDA, processes started by `accelerate launch` (or torchrun) must be told to
use the CPU; then they form a gloo process group (accelerate's MULTI_CPU). With GPUs this is the
plain accelerate state (NCCL, one device per process).
"""

from __future__ import annotations

import os

import torch
import torch.distributed.nn.functional as dist_fn


def use_cpu() -> bool:
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()


def process_state():
    from accelerate import PartialState   # lazy: accelerate, see mmkd/__init__.py
    return PartialState(cpu=use_cpu())


def gather_with_grad(t: torch.Tensor, accelerator) -> torch.Tensor:
    """Every process's `t`, concatenated in rank order, with the gradient flowing back to each."""
    if accelerator.num_processes == 1:
        return t
    return torch.cat(dist_fn.all_gather(t.contiguous()), dim=0)


def any_process(flag: bool, accelerator) -> bool:
    """Whether `flag` holds on any process (every process gets the same answer)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor(1.0 if flag else 0.0, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0
