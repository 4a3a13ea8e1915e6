"""Process/device state from accelerate, shared by cache-teacher and train.

On a machine without CUDA, processes started by `accelerate launch` (or torchrun) must be told to
use the CPU; then they form a gloo process group (accelerate's MULTI_CPU). With GPUs this is the
plain accelerate state (NCCL, one device per process).
"""

from __future__ import annotations

import os

import torch


def use_cpu() -> bool:
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()


def process_state():
    from accelerate import PartialState   # lazy: accelerate, see mmkd/__init__.py
    return PartialState(cpu=use_cpu())
