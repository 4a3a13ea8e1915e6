"""What every objective provides (mmkd/objectives/__init__.py says how they are used).

An objective is a class (its name, title, input, what its loss averages over: what a table, the CLI
or the batch builder need to know of it) and, for a run, an instance made once by
`build_objectives`: it holds its settings, its heads and its weight, and its loss is a function of
tensors and the gather alone. Nothing here reads a run's config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Type words used below, for the reader: `batch` a mmkd.batching.StudentBatch; `encoded` the model's
# mmkd.model.Encodings of the batch; `gather` all-gathers a tensor with gradient over the processes
# (the identity on one); `out` {objective name: the tensors its forward returned}; tensors are torch
# tensors.


class Objective:
    name: str = ""                  # without=NAME, the metrics column, the key of its settings in TrainConfig
    title: str = ""                 # as the paper writes it
    equation: str = ""
    input: Any                      # the student input it reads (mmkd.objectives.inputs.InputSpec)
    averages_over: str = ""         # what its loss is a mean over
    indicator_names: tuple[str, ...] = ()
    has_teacher_heads: bool = False
    table5_row: int = 99            # where its ablation stands in the sweep's table

    def __init__(self, settings: Any = None, trained: bool = True, shape: Any = None):
        self.settings = settings    # its own settings dataclass (TrainConfig holds it under `name`), or None
        self.trained = trained      # False: removed with `without` (made only for its heads' place in the draw)
        self.shape = shape          # the MLP heads' shape and the teacher-head mode (sentence.HeadSettings)
        self.heads: dict = {}       # its heads, by the names the model registers them under (build_objectives)

    # ------------------------------------------------------------------ made once, for a run
    def student_heads(self, student_width: int, teacher_width: int) -> dict:
        """The fresh heads on the student side it trains (built before any teacher-side head)."""
        return {}

    def teacher_heads(self, teacher_width: int) -> dict:
        return {}

    def check(self, student, teacher_width: int) -> None:
        """Refuse a student or teacher this objective cannot train (one line naming the fix)."""

    def check_features(self, features) -> None:
        """Refuse teacher features (a cache, the online teacher) that lack what this objective reads."""

    # ------------------------------------------------------------------ every micro-batch
    def forward(self, encoded, batch) -> dict:
        """The tensors its loss needs, from the encoded input and its own heads."""
        raise NotImplementedError

    def count(self, batch) -> int:
        """How many of what the loss averages over this micro-batch holds."""
        raise NotImplementedError

    def loss(self, out: dict, gather):
        raise NotImplementedError

    @property
    def weight(self) -> float:
        """Its weight in L (eq. 6)."""
        return 1.0

    @property
    def spans_batch(self) -> bool:
        """Computed over the micro-batch gathered from every process (each process computes the same value)."""
        return False

    def indicators(self, mine: dict, gather=None) -> dict[str, float]:
        """Collapse and diagnostic indicators of this micro-batch (`gather`: over every process; every
        process calls this for the same objectives in the same order)."""
        return {}

    def describe(self) -> str:
        """Its settings in one line, for the model card."""
        if self.settings is None:
            return ""
        return ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(self.settings).items())

    def __repr__(self) -> str:
        return f"<objective {self.name}>"
