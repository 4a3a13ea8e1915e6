"""The fine-tuning loop shared by the zero-shot tasks: AdamW, linear schedule, evaluation on the
English dev set after every epoch, and the best epoch's weights kept (in memory) for testing.
Optionally also the per-language best epoch on the target dev sets (the "oracle" selection)."""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from mmkd import precision as prec
from mmkd.eval.data import EvalDataError
from mmkd.optim import adamw


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(setting: str) -> str:
    """mixed_precision of an evaluation, by training's rule (mmkd/precision.py) on this device."""
    return prec.resolve(setting, cpu=device().type != "cuda")


def autocast(dev: torch.device, precision: str):
    return prec.autocast(dev, precision)


def fine_tune(model, train_batches: Callable[[int], list[dict]], n_steps_per_epoch: int, epochs: float, lr: float,
              weight_decay: float, warmup_ratio: float, evaluate: Callable[[], dict[str, float]],
              keep: list[str], desc: str, precision: str = "no") -> tuple[dict, dict]:
    """Train; after each epoch `evaluate()` returns {name: score}. For every name in `keep`
    ("dev-en", and each "dev-xx" for the oracle) the weights of its best epoch are kept.
    `precision` is resolved (no, bf16, fp16: autocast, and a loss scaler for fp16 whose overflowing
    steps are skipped). Returns ({name: state_dict}, {"history": [...], "best": {name: score}})."""
    from transformers import get_linear_schedule_with_warmup   # lazy: transformers, see mmkd/__init__.py
    dev = device()
    model.to(dev)
    total = max(1, int(round(n_steps_per_epoch * epochs)))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "LayerNorm" not in n)]
    opt = adamw([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr)
    sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * total), total)
    scaler = prec.grad_scaler(dev, precision)
    best: dict[str, tuple[float, dict]] = {}
    history = []
    step = 0
    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)
    for epoch in range(max(1, int(-(-epochs // 1)))):
        model.train()
        for batch in train_batches(epoch):
            if step >= total:
                break
            with autocast(dev, precision):
                loss = model(**{k: v.to(dev) for k, v in batch.items()}).loss
            _update(model, loss, opt, sched, scaler)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        scores = evaluate()
        history.append({"epoch": epoch + 1, **scores})
        for key, score in scores.items():
            if key in keep and (key not in best or score > best[key][0]):
                best[key] = (score, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
    bar.close()
    return {k: v[1] for k, v in best.items()}, {"history": history,
                                                "best": {k: v[0] for k, v in best.items()}}


def _update(model, loss, opt, sched, scaler) -> None:
    """One optimiser step, gradients clipped at norm 1; with fp16's scaler a step whose gradient
    overflowed is skipped, and so is its schedule step."""
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    else:
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)                # skipped when a gradient overflowed
        scaler.update()
        if scaler.get_scale() >= scale:  # the scale drops only after a skipped step
            sched.step()
    opt.zero_grad(set_to_none=True)


def seed_everything(seed: int) -> None:
    from transformers import set_seed   # lazy: transformers, see mmkd/__init__.py
    set_seed(seed)


def check_max_length(model, max_length: int) -> None:
    """A window longer than the model's position table would crash deep inside the model."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise EvalDataError(f"max_length={max_length} exceeds the model's {limit} positions; "
                            f"give max_length={limit} or less")
