"""How the teacher projectors ḡ_t of the sentence objectives learn (`--teacher-heads`; docs/method.md,
"Teacher heads"). The modes `structure` and `guard` are mmkd's own, not the paper's: the paper trains
ḡ_t with SentA/StrucA alone (`train`), which lets both sides agree on a constant.

A mode whose heads learn by a loss of their own adds the `teacher_heads` term below to the
objectives a run trains (`objectives.chosen(without, cfg)`). It is not an objective of eq. (6):
`--without` does not name it and the ablation sweep never removes it."""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.objectives.base import Objective
from mmkd.objectives.inputs import SENTENCE


@dataclass(frozen=True)
class TeacherHeadMode:
    name: str
    trained: bool               # the teacher projectors are updated at all
    stop_gradient: bool         # SentA/StrucA gradients stop at the teacher projections
    loss: str | None            # the teacher heads' own loss (mmkd.losses), if any
    summary: str


TEACHER_HEAD_MODES: dict[str, TeacherHeadMode] = {m.name: m for m in (
    TeacherHeadMode("frozen", False, False, None, "random, never trained"),
    TeacherHeadMode("train", True, False, None, "trained by SentA/StrucA only (both sides can agree on a constant)"),
    TeacherHeadMode("structure", True, True, "structure_loss",
                    "mmkd's own: trained only to keep the batch similarity structure of the teacher's centred [CLS] "
                    "(losses.structure_loss); SentA/StrucA gradients stopped"),
    TeacherHeadMode("guard", True, False, "variance_covariance",
                    "mmkd's own: trained by SentA/StrucA plus a variance/covariance guard on their outputs "
                    "(losses.variance_covariance)"),
)}


class _TeacherHeadsLoss(Objective):
    name, title, equation = "teacher_heads", "teacher heads", "mmkd's own (docs/method.md)"
    input = SENTENCE
    averages_over = "sentences (of the gathered micro-batch)"

    def settings(self, cfg):
        return None

    def forward(self, model, encoded, batch):
        return {}     # it reads the sentence objectives' teacher projections

    def count(self, batch):
        return len(batch.keys["sentence"]) if "sentence" in batch.inputs else 0

    def weight(self, cfg):
        return cfg.teacher_head_weight

    def spans_batch(self, cfg):
        return True

    def loss(self, out, cfg, gather):
        """The teacher heads' own loss, summed over the teacher projections of the sentence objectives
        trained, over the micro-batch gathered from every process (a spread is a property of the whole
        batch). The guard of a head is weighted like the objective whose gradient it must hold off (α for
        StrucA's head): with α = 50 an unweighted guard is 50 times weaker than what pulls the head."""
        from mmkd import losses
        from mmkd.objectives import OBJECTIVES

        total = 0.0
        for o in OBJECTIVES:
            if not o.has_teacher_heads or o.name not in out:
                continue
            mine = out[o.name]
            if TEACHER_HEAD_MODES[cfg.teacher_heads].loss == "structure_loss":
                total = total + losses.structure_loss(gather(mine["teacher"]), gather(mine["teacher_vector"]),
                                                      cfg.struca.temperature)
            else:
                total = total + o.weight(cfg) * losses.variance_covariance(gather(mine["teacher"]))
        return total


TEACHER_HEADS_LOSS = _TeacherHeadsLoss()
