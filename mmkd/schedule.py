"""Which pairs go into which step: language-balanced batches whose order is a pure function of
(seed, step), so a checkpoint needs only the step count to resume (no sampler state).

Paper 4.1: pairs of each language are shuffled, and every batch holds the same number of pairs
of each language. Each language is an endless stream of seeded permutations of its corpus
(cycle c of language l is permutation(seed, l, c)); step s takes the next `share` items of every
stream. An epoch is `ceil(total pairs / global batch)` steps: every pair is seen about once per
epoch, smaller corpora are oversampled to keep the balance.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


class BalancedSchedule:
    def __init__(self, sizes: list[int], global_batch: int, seed: int = 0):
        if global_batch < len(sizes):
            raise ValueError(f"batch size {global_batch} is smaller than the number of languages ({len(sizes)})")
        self.sizes, self.global_batch, self.seed = list(sizes), global_batch, seed
        self.steps_per_epoch = -(-sum(sizes) // global_batch)
        base, extra = divmod(global_batch, len(sizes))
        self.share = [base + (1 if i < extra else 0) for i in range(len(sizes))]

    @lru_cache(maxsize=32)
    def _perm(self, lang: int, cycle: int) -> np.ndarray:
        return np.random.default_rng([self.seed, lang, cycle]).permutation(self.sizes[lang])

    def batch(self, step: int) -> list[tuple[int, int, int]]:
        """The global batch of `step`: (corpus_index, stream_index, pair_id), languages interleaved
        so that any contiguous or strided split stays balanced."""
        per_lang = []
        for lang, (n, share) in enumerate(zip(self.sizes, self.share)):
            items = []
            for stream in range(step * share, (step + 1) * share):
                cycle, offset = divmod(stream, n)
                items.append((lang, stream, int(self._perm(lang, cycle)[offset])))
            per_lang.append(items)
        out = []
        for j in range(max(self.share)):
            out += [items[j] for items in per_lang if j < len(items)]
        return out


def split_for(batch: list, rank: int, world: int, accumulation: int) -> list[list]:
    """This rank's micro-batches of a global batch: rank r takes items r, r+world, ...; then
    micro-batch m of those takes every `accumulation`-th item from m."""
    mine = batch[rank::world]
    return [mine[m::accumulation] for m in range(accumulation)]


def split_by_length(batch: list, lengths, rank: int, world: int, accumulation: int) -> list[list]:
    """Like `split_for`, with each micro-batch's pairs given to processes by length.

    Micro-batch m of every process together holds exactly the pairs it holds under `split_for`
    (so StrucA and centred SentA, which span the gathered micro-batch, see the same set), and each
    process gets as many of them as there; only *which* process gets which pair changes: the
    group is sorted by `lengths` (longest first, ties by position) and cut into contiguous runs, so
    every forward pads little. The per-pair objectives are exact global means wherever a pair
    lands, and masks depend on the pair, not its place, so the losses are those of `split_for`."""
    lengths = np.asarray(lengths)
    index = np.arange(len(batch))
    out = []
    for m in range(accumulation):
        group = index[(index // world) % accumulation == m]         # micro-batch m on every process
        counts = [int(((group % world) == r).sum()) for r in range(world)]
        ordered = group[np.argsort(-lengths[group], kind="stable")]
        start = sum(counts[:rank])
        out.append([batch[i] for i in ordered[start:start + counts[rank]]])
    return out
