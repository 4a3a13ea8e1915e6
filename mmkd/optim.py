"""The optimiser and learning-rate schedule of `mmkd train` (paper 4.1), and the AdamW both
training and fine-tuning use.

AdamW is torch's fused implementation wherever it runs (CUDA, and CPUs since torch 2.4): one
kernel over all tensors instead of a loop of small ones. On a 250k-vocabulary student the word
embeddings alone are 96M parameters; the update's cost, fused and not, is measured by
benchmarks/mlm_head.py (docs/results.md). The arithmetic is AdamW's; only float rounding differs
from the unfused loop.
"""

from __future__ import annotations

import torch


def adamw(groups, lr: float) -> torch.optim.AdamW:
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):   # a device or dtype the fused kernel does not take
        return torch.optim.AdamW(groups, lr=lr)


def param_groups(model, weight_decay: float, lr: float, head_lr: float | None = None) -> list[dict]:
    """Four groups: (encoder | heads) x (decay | no decay), each with its peak lr: `lr` for the
    encoder, `head_lr` (None = `lr`, the paper) for the heads. BERT practice: no weight decay on
    biases and LayerNorm weights. The heads are everything outside the student's encoder: the
    objectives' projectors, predictors and width map, and the MLM head's transform and output bias;
    the MLM decoder's weight is tied to the encoder's word embeddings and so belongs to the encoder."""
    encoder = {id(p) for p in model.encoder.parameters()}
    groups = {(e, d): [] for e in ("encoder", "heads") for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name)
        groups[("encoder" if id(p) in encoder else "heads", decay)].append(p)
    peak = {"encoder": lr, "heads": lr if head_lr is None else head_lr}
    return [{"params": ps, "weight_decay": weight_decay if d else 0.0, "name": e, "lr": peak[e]}
            for (e, d), ps in groups.items() if ps]


def lr_schedule(optimizer, total: int, warmup: int, head_phase: int):
    """Linear warm-up then linear decay (paper 4.1), for every group, each from its own peak lr.

    With `head_phase` > 0 the first `head_phase` steps fit the fresh heads alone: the encoder
    groups keep lr 0 (the trainer also runs the encoder without gradients then) and the heads
    learn at their full peak lr, with no warm-up: they start from a random initialisation and
    the phase is short. After it the usual schedule, from where it stands, applies to all."""
    def base(step: int) -> float:
        if step < warmup:   # the formula of transformers' get_linear_schedule_with_warmup
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    def encoder(step: int) -> float:
        return 0.0 if step < head_phase else base(step)

    def heads(step: int) -> float:
        return 1.0 if step < head_phase else base(step)

    lambdas = [encoder if g["name"] == "encoder" else heads for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
