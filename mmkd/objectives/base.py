"""What every objective provides (mmkd/objectives/__init__.py says how they are used)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import Tensor, nn

    from mmkd.batching import StudentBatch
    from mmkd.config import TrainConfig
    from mmkd.model import Encodings
    from mmkd.objectives.inputs import InputSpec

Gather = Callable[["Tensor"], "Tensor"]     # all-gather with gradient over the processes (identity on one)


class Objective:
    name: str = ""                  # --without NAME, the metrics column, the key of its settings in TrainConfig
    title: str = ""                 # as the paper writes it
    equation: str = ""
    input: "InputSpec"              # the student input it reads
    averages_over: str = ""         # what its loss is a mean over
    indicator_names: tuple[str, ...] = ()
    has_teacher_heads: bool = False
    table5_row: int = 99            # where its ablation stands in the sweep's table

    def settings(self, cfg: "TrainConfig") -> Any:
        return getattr(cfg, self.name, None)

    def check(self, student: nn.Module, teacher_hidden: int, cfg: "TrainConfig") -> None:
        """Refuse a student or teacher this objective cannot train (one line naming the fix)."""

    def student_heads(self, student_hidden: int, teacher_hidden: int, cfg: "TrainConfig") -> dict[str, nn.Module]:
        return {}

    def teacher_heads(self, teacher_hidden: int, cfg: "TrainConfig") -> dict[str, nn.Module]:
        return {}

    def forward(self, model: nn.Module, encoded: "Encodings", batch: "StudentBatch") -> dict[str, Tensor]:
        """The tensors its loss needs, from the encoded input and its own heads (`model.<head name>`)."""
        raise NotImplementedError

    def count(self, batch: "StudentBatch") -> int:
        """How many of what the loss averages over this micro-batch holds."""
        raise NotImplementedError

    def loss(self, out: dict[str, dict[str, Tensor]], cfg: "TrainConfig", gather: Gather) -> Tensor:
        raise NotImplementedError

    def weight(self, cfg: "TrainConfig") -> float:
        """Its weight in L (eq. 6)."""
        return 1.0

    def spans_batch(self, cfg: "TrainConfig") -> bool:
        """Computed over the micro-batch gathered from every process (each process computes the same value)."""
        return False

    def indicators(self, mine: dict[str, Tensor]) -> dict[str, float]:
        return {}

    def describe(self, cfg: "TrainConfig") -> str:
        """Its settings in one line, for the model card."""
        s = self.settings(cfg)
        if s is None:
            return ""
        import dataclasses
        return ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(s).items())

    def __repr__(self) -> str:
        return f"<objective {self.name}>"
