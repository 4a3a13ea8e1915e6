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


def param_groups(model, weight_decay: float) -> list[dict]:
    """Four groups: (encoder | heads) x (decay | no decay). BERT practice: no weight decay on biases
    and LayerNorm weights. The MLM head's transform is a head; its decoder is tied to the
    encoder's word embeddings and so belongs to the encoder."""
    encoder = {id(p) for p in model.encoder.parameters()}
    groups = {(e, d): [] for e in ("encoder", "heads") for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name)
        groups[("encoder" if id(p) in encoder else "heads", decay)].append(p)
    return [{"params": ps, "weight_decay": weight_decay if d else 0.0, "name": e}
            for (e, d), ps in groups.items() if ps]


def lr_schedule(optimizer, total: int, warmup: int, head_warmup: int):
    """Linear warm-up then linear decay (paper 4.1), for every group; with `head_warmup` > 0 the
    encoder groups keep lr 0 for the first `head_warmup` steps, so only the freshly initialised
    heads learn (then the usual schedule, from where it stands, applies to all)."""
    def base(step: int) -> float:
        if step < warmup:   # the formula of transformers' get_linear_schedule_with_warmup
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    def encoder(step: int) -> float:
        return 0.0 if step < head_warmup else base(step)

    lambdas = [encoder if g["name"] == "encoder" else base for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
