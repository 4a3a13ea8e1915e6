"""A micro-batch: the student inputs its objectives read (mmkd/objectives/inputs.py), built from the
pairs' text and teacher features.

`PairKey` names a pair everywhere from the schedule to the losses: (corpus index, position in its
language's stream, pair id). The masks of a pair are drawn from its (corpus, stream) position, so
they do not depend on which process or micro-batch it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from mmkd.cache.reader import Sentences
from mmkd.objectives.inputs import MaskingConfig, Pairs, Tokens, random_token_ids


class PairKey(NamedTuple):
    corpus: int       # index of the corpus (caches sorted by corpus name)
    stream: int       # position in its language's endless stream of permutations (seeds the masks)
    pair: int         # pair id in the corpus / cache


@dataclass
class StudentBatch:
    """One micro-batch: {input name: its input (mmkd.objectives.inputs.Tokens and subclasses)} and the
    keys of each input's pairs (the sentence input may hold other pairs than the pair inputs:
    `assign=length`)."""
    inputs: dict[str, Tokens] = field(default_factory=dict)
    keys: dict[str, list[PairKey]] = field(default_factory=dict)

    def to(self, device) -> "StudentBatch":
        return StudentBatch({name: mine.to(device) for name, mine in self.inputs.items()}, self.keys)

    def first_keys(self, name: str, n: int = 8) -> list[tuple[int, int]]:
        """(corpus, pair id) of the first pairs of an input, for error messages."""
        return [(k.corpus, k.pair) for k in self.keys.get(name, [])[:n]]


@dataclass
class Part:
    """What one micro-batch is made of: the keys of the pairs of its pair inputs and of its sentence
    input (the same pairs unless `assign=length`), and, once read, those pairs' text and teacher
    features (`mmkd.cache.reader.Sentences`)."""
    pair_keys: list[PairKey]
    sent_keys: list[PairKey]
    pairs: Sentences | None = None
    sentences: Sentences | None = None


def build_student_batch(tokenizer, part: Part, specs, cfg: MaskingConfig,
                        random_ids: np.ndarray | None = None) -> StudentBatch:
    """The inputs `specs` (mmkd.objectives.inputs.InputSpec) of one micro-batch."""
    if random_ids is None:
        random_ids = random_token_ids(tokenizer)
    def source(keys, read: Sentences) -> Pairs:
        return Pairs(tokenizer, keys, read.words, read.english, read.targets, read.batch(), cfg, random_ids)

    sources = {"pairs": source(part.pair_keys, part.pairs)}
    sources["sentences"] = (sources["pairs"] if part.sent_keys == part.pair_keys
                            else source(part.sent_keys, part.sentences))
    batch = StudentBatch()
    for spec in specs:
        source = sources[spec.source]
        batch.inputs[spec.name] = spec.build(source)
        batch.keys[spec.name] = list(source.keys)
    return batch
