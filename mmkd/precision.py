"""Which precision a run computes in, one rule for training and evaluation.

`resolve(setting, cpu)` turns `mixed_precision` into accelerate's names: `auto` is what an explicit
accelerate configuration says (`accelerate launch` and `accelerate config` set
ACCELERATE_MIXED_PRECISION); otherwise fp32 on CPU, bf16 on GPUs that have it and fp16 (with a loss
scaler) on those that do not (V100, T4). Evaluation's fine-tuning follows the same rule
(`autocast`, `grad_scaler`), so a run's XNLI is computed as its training was.
"""

from __future__ import annotations

import contextlib
import os

import torch

CHOICES = ("auto", "no", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(setting: str, cpu: bool) -> str:
    if setting != "auto":
        return setting
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return os.environ["ACCELERATE_MIXED_PRECISION"]
    if cpu:
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(dev: torch.device, precision: str):
    """Autocast to the resolved precision on `dev` ("no": none)."""
    if precision not in _DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=_DTYPES[precision])


def grad_scaler(dev: torch.device, precision: str):
    """fp16 needs a loss scaler (bf16 has fp32's range); None otherwise."""
    return torch.amp.GradScaler(dev.type) if precision == "fp16" else None
