"""The frozen English teacher: loading, identity hash, and the one function that turns word lists
into word states and [CLS] vectors.

`encode_words` is the single code path for the teacher's features: `mmkd cache-teacher` writes
its output to the cache, `mmkd cache verify` re-runs it to check stored states, and
`mmkd train --online-teacher` calls it on every batch. Same code, same numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from mmkd.hf import load, load_tokenizer
from mmkd.words import first_subtoken_positions, require_fast


def load_teacher(name_or_path: str, device: torch.device | str = "cpu",
                 trust_remote_code: bool = False):
    """Teacher encoder (frozen, eval mode) and its fast tokenizer, from a hub name or a local path."""
    from transformers import AutoModel   # lazy: transformers, see mmkd/__init__.py
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    require_fast(tokenizer)
    model = load(AutoModel, name_or_path, "teacher", trust_remote_code, tokenizer=tokenizer)
    model.requires_grad_(False).eval().to(device)
    return model, tokenizer


def model_hash(model: torch.nn.Module) -> str:
    """sha256 over the model config and every parameter/buffer (name, dtype, shape, bytes), so a
    cache can tell a different teacher from the same name re-downloaded with new weights."""
    h = hashlib.sha256()
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    cfg.pop("_name_or_path", None)
    cfg.pop("transformers_version", None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


class ForwardCounter:
    """Teacher forward passes run while it is active (`with count_forwards() as counter:`). The
    ablation sweep owns one, to show that cached training never runs the teacher."""

    def __init__(self):
        self.passes = 0


_counters: list[ForwardCounter] = []


@contextlib.contextmanager
def count_forwards():
    counter = ForwardCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


@dataclass
class EncodedSentence:
    word_states: np.ndarray   # [n_kept, H] float32: chosen layer at the first sub-token of each kept word
    cls: np.ndarray           # [H] float32: chosen layer at position 0 ([CLS])
    kept: np.ndarray          # [n_kept] int64: indices (into the input word list) of the kept words
    truncated: bool           # the teacher's max_length cut words off the end
    mean: np.ndarray | None = None   # [H] float32: chosen layer averaged over every token of the input,
    #                                  special tokens included (a sentence-transformers teacher's own
    #                                  sentence embedding, before any normalisation)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; exact fp32 elsewhere (the CPU path must reproduce bit-for-bit)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class PreparedBatch:
    """A tokenized batch and, per sentence, where each kept word's first sub-token is."""
    words: list[list[str]]
    enc: dict                   # input_ids, token_type_ids, attention_mask: [B, L] int64, CPU
    positions: list[np.ndarray]  # [n_kept] token position of each kept word's first sub-token
    kept: list[np.ndarray]       # [n_kept] index of each kept word in its word list
    truncated: list[bool]        # the teacher's max_length cut words off the end


def tokenize_words(tokenizer, words: list[list[str]], max_length: int = 128):
    """`[CLS] s [SEP]` for each word list, cut at `max_length`, not padded (a BatchEncoding of
    lists: lengths for grouping, `word_ids` for the first sub-tokens)."""
    return tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                     return_token_type_ids=True, return_attention_mask=False)


def collate(tokenizer, enc, idx, words: list[list[str]], max_length: int = 128) -> PreparedBatch:
    """Rows `idx` of a `tokenize_words` result as one right-padded batch (what the tokenizer's own
    `padding=True` gives a BERT-family model), and every word's first sub-token."""
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no pad token; the teacher needs one")
    idx = list(idx)
    rows = [enc["input_ids"][i] for i in idx]
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), tokenizer.pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    batch_words, positions, kept, truncated = [], [], [], []
    for b, i in enumerate(idx):
        n = len(rows[b])
        input_ids[b, :n] = rows[b]
        token_type_ids[b, :n] = enc["token_type_ids"][i]
        attention_mask[b, :n] = 1
        ws = words[i]
        pos = first_subtoken_positions(enc.word_ids(i), len(ws), enc.sequence_ids(i), 0)
        k = np.flatnonzero(pos >= 0)
        batch_words.append(ws)
        kept.append(k)
        positions.append(pos[k])
        # Truncated = some word after the last kept one exists but was not seen.
        truncated.append(bool(len(k) < len(ws) and (len(k) == 0 or k[-1] < len(ws) - 1) and n >= max_length))
    tensors = {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(token_type_ids),
               "attention_mask": torch.from_numpy(attention_mask)}
    return PreparedBatch(batch_words, tensors, positions, kept, truncated)


def prepare_batch(tokenizer, words: list[list[str]], max_length: int = 128) -> PreparedBatch:
    """Tokenize and collate one batch of word lists. CPU only, so it can run ahead of the forward."""
    return collate(tokenizer, tokenize_words(tokenizer, words, max_length), range(len(words)), words, max_length)


def token_lengths(enc) -> np.ndarray:
    """Sub-token count of each row of a `tokenize_words` result (what batching should group by)."""
    return np.array([len(r) for r in enc["input_ids"]], dtype=np.int64)


@torch.inference_mode()
def encode_prepared(model, batch: PreparedBatch, layer: int = -1) -> list[EncodedSentence]:
    """Run the teacher on a `prepare_batch` result and gather word and [CLS] states."""
    for counter in _counters:
        counter.passes += 1
    device = next(model.parameters()).device
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.enc.items()
              if k in ("input_ids", "attention_mask", "token_type_ids")}
    with autocast_for(device):
        out = model(**inputs, output_hidden_states=layer != -1)
    hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    # Only the rows we keep leave the device: [sum n_kept + B, H] instead of [B, L, H].
    length, n = hidden.shape[1], len(batch.words)
    flat = np.concatenate([b * length + p for b, p in enumerate(batch.positions)] + [np.arange(n) * length])
    rows = hidden.reshape(-1, hidden.shape[-1])[torch.from_numpy(flat).to(device)].float().cpu().numpy()
    counts = [len(p) for p in batch.positions]
    word_rows, cls_rows = rows[:sum(counts)], rows[sum(counts):]
    mask = inputs["attention_mask"][..., None].to(hidden.dtype)
    means = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy()
    return [EncodedSentence(word_states=states, cls=cls_rows[b], kept=batch.kept[b], truncated=batch.truncated[b],
                            mean=means[b])
            for b, states in enumerate(np.split(word_rows, np.cumsum(counts)[:-1]))]


def encode_words(model, tokenizer, words: list[list[str]], layer: int = -1,
                 max_length: int = 128) -> list[EncodedSentence]:
    """Run the teacher on `[CLS] s [SEP]` for each word list and gather word and [CLS] states.

    A word is kept when the teacher saw its first sub-token: words cut off by `max_length` are
    dropped (and the sentence marked truncated), as are words the tokenizer maps to nothing.
    `layer` indexes `hidden_states` (-1 = last layer, 0 = embeddings).
    """
    return encode_prepared(model, prepare_batch(tokenizer, words, max_length), layer)


def length_grouped_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped by length (longest first) so that batches carry little padding.
    Deterministic: ties keep their input order."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
