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

from mmkd.words import first_subtoken_positions, require_fast


def load_teacher(name_or_path: str, device: torch.device | str = "cpu",
                 trust_remote_code: bool = False):
    """Teacher encoder (frozen, eval mode) and its fast tokenizer, from a hub name or a local path."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    require_fast(tokenizer)
    model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
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


# Teacher forward passes run by this process: the ablation sweep logs it to show that a cached run
# never runs the teacher.
FORWARD_PASSES = 0


@dataclass
class EncodedSentence:
    word_states: np.ndarray   # [n_kept, H] float32: chosen layer at the first sub-token of each kept word
    cls: np.ndarray           # [H] float32: chosen layer at position 0 ([CLS])
    kept: np.ndarray          # [n_kept] int64: indices (into the input word list) of the kept words
    truncated: bool           # the teacher's max_length cut words off the end


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; exact fp32 elsewhere (the CPU path must reproduce bit-for-bit)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def encode_words(model, tokenizer, words: list[list[str]], layer: int = -1,
                 max_length: int = 128) -> list[EncodedSentence]:
    """Run the teacher on `[CLS] s [SEP]` for each word list and gather word and [CLS] states.

    A word is kept when the teacher saw its first sub-token: words cut off by `max_length` are
    dropped (and the sentence marked truncated), as are words the tokenizer maps to nothing.
    `layer` indexes `hidden_states` (-1 = last layer, 0 = embeddings).
    """
    global FORWARD_PASSES
    FORWARD_PASSES += 1
    device = next(model.parameters()).device
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                    padding=True, return_tensors="pt", return_token_type_ids=True)
    inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with autocast_for(device):
        out = model(**inputs, output_hidden_states=layer != -1)
    hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    hidden = hidden.float().cpu().numpy()
    results = []
    for b, ws in enumerate(words):
        pos = first_subtoken_positions(enc.word_ids(b), len(ws), enc.sequence_ids(b), 0)
        kept = np.flatnonzero(pos >= 0)
        # Truncated = some word after the last kept one exists but was not seen.
        truncated = bool(len(kept) < len(ws) and (len(kept) == 0 or kept[-1] < len(ws) - 1)
                         and int(enc["attention_mask"][b].sum()) >= max_length)
        results.append(EncodedSentence(word_states=hidden[b, pos[kept]], cls=hidden[b, 0].copy(),
                                       kept=kept, truncated=truncated))
    return results


def length_grouped_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped by length (longest first) so that batches carry little padding.
    Deterministic: ties keep their input order."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
