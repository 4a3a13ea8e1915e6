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

from mmkd.cache.reader import TeacherBatch
from mmkd.objectives.inputs import MaskingConfig, Pairs, Tokens, random_token_ids


class PairKey(NamedTuple):
    corpus: int       # index of the corpus (caches sorted by corpus name)
    stream: int       # position in its language's endless stream of permutations (seeds the masks)
    pair: int         # pair id in the corpus / cache


@dataclass
class StudentBatch:
    """One micro-batch: {input name: its input (mmkd.objectives.inputs.Tokens and subclasses)} and the
    keys of each input's pairs (the sentence input may hold other pairs than the pair inputs:
    `--assign length`)."""
    inputs: dict[str, Tokens] = field(default_factory=dict)
    keys: dict[str, list[PairKey]] = field(default_factory=dict)

    def to(self, device) -> "StudentBatch":
        return StudentBatch({name: mine.to(device) for name, mine in self.inputs.items()}, self.keys)

    def first_keys(self, name: str, n: int = 8) -> list[tuple[int, int]]:
        """(corpus, pair id) of the first pairs of an input, for error messages."""
        return [(k.corpus, k.pair) for k in self.keys.get(name, [])[:n]]


@dataclass
class Part:
    """What one micro-batch is made of: for the pair inputs and for the sentence input, the keys and
    text of their pairs (cached English word lists, English sentences, target sentences); and, once
    read, their teacher features."""
    pair_keys: list[PairKey]
    pair_text: tuple[list[list[str]], list[str], list[str]]
    sent_keys: list[PairKey]
    sent_text: tuple[list[list[str]], list[str], list[str]]
    pair_teacher: TeacherBatch | None = None
    sent_teacher: TeacherBatch | None = None


def build_student_batch(tokenizer, part: Part, specs, cfg: MaskingConfig,
                        random_ids: np.ndarray | None = None) -> StudentBatch:
    """The inputs `specs` (mmkd.objectives.inputs.InputSpec) of one micro-batch."""
    if random_ids is None:
        random_ids = random_token_ids(tokenizer)
    sources = {"pairs": Pairs(tokenizer, part.pair_keys, *part.pair_text, part.pair_teacher, cfg, random_ids)}
    if part.sent_keys == part.pair_keys:
        sources["sentences"] = sources["pairs"]
    else:
        sources["sentences"] = Pairs(tokenizer, part.sent_keys, *part.sent_text, part.sent_teacher, cfg, random_ids)
    batch = StudentBatch()
    for spec in specs:
        source = sources[spec.source]
        batch.inputs[spec.name] = spec.build(source)
        batch.keys[spec.name] = list(source.keys)
    return batch
