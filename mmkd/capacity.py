"""Settings checked against the model and the machine before any work: a `max_length` beyond the
model's position table would fail (or silently misbehave) deep inside the first forward, and a
`batch_size` no device can hold would run out of memory or, at absurd sizes, seem to hang while
the schedule materialises a step's pairs. Each is one line naming the option, the limit and why."""

from __future__ import annotations

import os

import torch

from mmkd.errors import MMKDError

# Models whose position ids start after the padding id (XLM-R, RoBERTa): positions pad+1 ... max-1.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text"}


def max_positions(config) -> int | None:
    """The longest input (in tokens) the model's position table takes; None if it has none (relative
    positions, e.g. DeBERTa-v3 without absolute ones)."""
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or n <= 0:
        return None
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        n -= (getattr(config, "pad_token_id", 1) or 1) + 1
    return n


def check_length(option: str, length: int, config, what: str) -> None:
    limit = max_positions(config)
    if limit is not None and length > limit:
        raise MMKDError(f"{option}={length}: the {what} takes at most {limit} tokens (its position table); "
                        f"give {option}={limit} or less")


def available_memory(device) -> int | None:
    """Bytes free on `device` (a CUDA device's free memory, else the machine's available RAM)."""
    try:
        if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(device)[0])
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def activation_floor(pairs: int, length: int, config) -> int:
    """A lower bound on the bytes one micro-batch's forward keeps for backward: the hidden states of
    every layer, both sides of a pair (TLM reads en+x), in 2-byte precision at least. Real use is
    several times more (attention, feed-forward, gradients), so a batch above this bound can never
    run, and one below it may still not."""
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    return pairs * 2 * length * hidden * max(1, layers) * 2


def check_batch(batch_size: int, micro: int, length: int, config, device) -> None:
    free = available_memory(device)
    need = activation_floor(micro, length, config)
    if free is not None and need > free:
        raise MMKDError(f"batch_size={batch_size}: one micro-batch of {micro} pairs × {length} tokens needs at least "
                        f"{need / 2**30:.1f} GiB for the student's activations alone, and {device} has "
                        f"{free / 2**30:.1f} GiB free: lower batch_size, raise grad_accum or use more processes")
