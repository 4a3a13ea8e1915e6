"""Masking for TLM (tokens, both sides) and XWCL (whole English words, source side only).

BERT's recipe (Devlin et al. 2018), as the paper says: choose 15% of the candidates
(max(1, round(0.15 n)), as in BERT's create_pretraining_data), then replace each choice by
[MASK] 80% of the time, by a random token 10%, and keep it 10%. Each example draws from its own
generator, seeded by (run seed, language, position in its language's stream), so the masks do not
depend on how examples are split between processes or micro-batches, and a resumed run draws
exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import numpy as np


def example_rng(seed: int, corpus_index: int, stream_index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, corpus_index, stream_index, purpose])


def _n_to_mask(n: int, probability: float) -> int:
    return min(n, max(1, int(round(probability * n)))) if n else 0


def _replacements(rng, k: int) -> np.ndarray:
    """0 = [MASK], 1 = random token, 2 = keep; in 80/10/10 proportion."""
    r = rng.random(k)
    return np.where(r < 0.8, 0, np.where(r < 0.9, 1, 2))


def mask_tokens(input_ids: np.ndarray, candidates: np.ndarray, rng: np.random.Generator, mask_id: int,
                random_ids: np.ndarray, probability: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """TLM masking of one sequence. candidates: bool [L], the maskable (non-special) positions.
    Returns (new input ids, labels with -100 at unmasked positions)."""
    ids = input_ids.copy()
    labels = np.full_like(ids, -100)
    pos = np.flatnonzero(candidates)
    chosen = np.sort(rng.choice(pos, size=_n_to_mask(len(pos), probability), replace=False))
    labels[chosen] = ids[chosen]
    how = _replacements(rng, len(chosen))
    ids[chosen[how == 0]] = mask_id
    n_random = int((how == 1).sum())
    ids[chosen[how == 1]] = random_ids[rng.integers(0, len(random_ids), size=n_random)]
    return ids, labels


def mask_words(input_ids: np.ndarray, token_word: np.ndarray, n_words: int, rng: np.random.Generator,
               mask_id: int, random_ids: np.ndarray, probability: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """XWCL whole-word masking of one sequence. token_word: int [L], the English word index of
    each token (-1 for special tokens and the other-language side). Every sub-token of a chosen
    word gets the same treatment (all [MASK], all random, or all kept).
    Returns (new input ids, masked: bool [n_words])."""
    ids = input_ids.copy()
    masked = np.zeros(n_words, dtype=bool)
    present = np.unique(token_word[token_word >= 0])
    chosen = np.sort(rng.choice(present, size=_n_to_mask(len(present), probability), replace=False))
    masked[chosen] = True
    for w, how in zip(chosen, _replacements(rng, len(chosen))):
        positions = np.flatnonzero(token_word == w)
        if how == 0:
            ids[positions] = mask_id
        elif how == 1:
            ids[positions] = random_ids[rng.integers(0, len(random_ids), size=len(positions))]
    return ids, masked
