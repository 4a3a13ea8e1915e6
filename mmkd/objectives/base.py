"""What every objective provides (mmkd/objectives/__init__.py says how they are used)."""

from __future__ import annotations

from typing import Any

# Type words used below, for the reader: `cfg` is the run's mmkd.config.TrainConfig; `batch` a
# mmkd.batching.StudentBatch; `encoded` the model's mmkd.model.Encodings of the batch; `gather` all-gathers a
# tensor with gradient over the processes (the identity on one); tensors are torch tensors.


class Objective:
    name: str = ""                  # --without NAME, the metrics column, the key of its settings in TrainConfig
    title: str = ""                 # as the paper writes it
    equation: str = ""
    input: Any                      # the student input it reads (mmkd.objectives.inputs.InputSpec)
    averages_over: str = ""         # what its loss is a mean over
    indicator_names: tuple[str, ...] = ()
    has_teacher_heads: bool = False
    table5_row: int = 99            # where its ablation stands in the sweep's table

    def settings(self, cfg) -> Any:
        return getattr(cfg, self.name, None)

    def settings_of(self, model) -> Any:
        """Its settings as the model it runs in was built with (`forward` has no config)."""
        return model.objective_settings.get(self.name)

    def check(self, student, teacher_hidden: int, cfg) -> None:
        """Refuse a student or teacher this objective cannot train (one line naming the fix)."""

    def check_features(self, features, cfg) -> None:
        """Refuse teacher features (a cache, the online teacher) that lack what this objective reads."""

    def student_heads(self, student_hidden: int, teacher_hidden: int, cfg) -> dict:
        return {}

    def teacher_heads(self, teacher_hidden: int, cfg) -> dict:
        return {}

    def forward(self, model, encoded, batch) -> dict:
        """The tensors its loss needs, from the encoded input and its own heads (`model.<head name>`)."""
        raise NotImplementedError

    def count(self, batch) -> int:
        """How many of what the loss averages over this micro-batch holds."""
        raise NotImplementedError

    def loss(self, out: dict, cfg, gather):
        raise NotImplementedError

    def weight(self, cfg) -> float:
        """Its weight in L (eq. 6)."""
        return 1.0

    def spans_batch(self, cfg) -> bool:
        """Computed over the micro-batch gathered from every process (each process computes the same value)."""
        return False

    def indicators(self, mine: dict, cfg=None, gather=None) -> dict[str, float]:
        """Collapse and diagnostic indicators of this micro-batch (`gather`: over every process; every
        process calls this for the same objectives in the same order)."""
        return {}

    def describe(self, cfg) -> str:
        """Its settings in one line, for the model card."""
        s = self.settings(cfg)
        if s is None:
            return ""
        import dataclasses
        return ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(s).items())

    def __repr__(self) -> str:
        return f"<objective {self.name}>"
