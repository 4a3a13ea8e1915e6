"""What SentA and StrucA share: the sentence input `[CLS] t [SEP]`, the student's sentence vector, a
student projector and predictor each, and a teacher projector each fed by the teacher's vector of s
(paper 3.3–3.4, 4.1: 2-layer MLPs, 768 hidden units, 128 outputs), and how those teacher projectors
ḡ_t learn (docs/method.md, "Teacher heads"). Their settings, `HeadSettings`, sit in a run's settings
under `heads` (`heads.hidden=768`, `heads.teacher=structure`).

The teacher-head modes `structure` and `guard` are mmkd's own, not the paper's: the paper trains ḡ_t
with SentA/StrucA alone (`train`), which lets both sides agree on a constant. A mode whose heads learn
by a loss of their own adds the `teacher_heads` term (objectives/teacher_heads.py) to a run's terms.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.errors import TrainingError
from mmkd.heads import mlp
from mmkd.losses import projection_std
from mmkd.objectives.base import Objective
from mmkd.objectives.inputs import SENTENCE
from mmkd.settings import setting


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


@dataclass
class HeadSettings:
    """The projector/predictor MLPs' shape and how the teacher-side ones learn, shared by the sentence
    objectives (a run's `heads`; the keys of run configs before config version 2 were `head_hidden`,
    `head_out`, `head_norm`, `teacher_heads` and `teacher_head_weight`, their options' names)."""
    hidden: int = setting(768, "Hidden units of the projector/predictor MLPs (paper 4.1: 768).", min=1,
                          flag="--head-hidden")
    out: int = setting(128, "Output size of the projector/predictor MLPs (paper 4.1: 128).", min=1, flag="--head-out")
    norm: str = setting("none", "Normalisation inside the head MLPs (the paper: none).",
                        choices=("none", "batch", "layer"), flag="--head-norm")
    teacher: str = setting("structure", "How the teacher projectors learn: frozen (random, never trained); "
                           "train (by SentA/StrucA alone, the paper; both sides can agree on a constant); "
                           "structure (mmkd's own: by a loss that keeps the teacher's batch similarity "
                           "structure, SentA/StrucA gradients stopped); guard (mmkd's own: SentA/StrucA plus "
                           "a variance/covariance guard). docs/method.md, \"Teacher heads\".",
                           choices=tuple(TEACHER_HEAD_MODES), flag="--teacher-heads")
    teacher_weight: float = setting(1.0, "Weight of the teacher heads' own loss (modes structure, guard).", min=0,
                                    flag="--teacher-head-weight")

    @property
    def mode(self) -> TeacherHeadMode:
        return TEACHER_HEAD_MODES[self.teacher]


def sentence_vector(hidden, attention_mask, pooling: str):
    """The student's sentence vector: its [CLS] state (the paper) or the mean of its last hidden states
    over every token of the input, special tokens included (sentence-transformers' and e5's mean
    pooling, and what `mmkd eval retrieval` calls mean)."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask[..., None].to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class SentenceObjective(Objective):
    input = SENTENCE
    averages_over = "sentences"
    has_teacher_heads = True

    def __init__(self, settings=None, trained: bool = True, shape: HeadSettings | None = None):
        super().__init__(settings, trained, shape or HeadSettings())

    def student_heads(self, student_width, teacher_width):
        s = self.shape
        return {f"{self.name}_projector": mlp(student_width, s.hidden, s.out, s.norm),
                f"{self.name}_predictor": mlp(s.out, s.hidden, s.out, s.norm)}

    def teacher_heads(self, teacher_width):
        s = self.shape
        head = mlp(teacher_width, s.hidden, s.out, s.norm)
        if not s.mode.trained:
            head.requires_grad_(False)
        return {f"teacher_{self.name}_projector": head}

    def forward(self, encoded, batch):
        mine = batch.inputs["sentence"]
        vector = sentence_vector(encoded.hidden("sentence"), mine.attention_mask, self.settings.student_vector)
        teacher_vector = mine.teacher(self.settings.teacher_vector).to(vector.dtype)
        heads = self.heads
        return {"student": heads[f"{self.name}_predictor"](heads[f"{self.name}_projector"](vector)),
                "teacher": heads[f"teacher_{self.name}_projector"](teacher_vector),
                "teacher_vector": teacher_vector}

    def check_features(self, features):
        if self.settings.teacher_vector == "mean" and not features.has_teacher_mean:
            old = next((c.url for c in getattr(features, "caches", []) if not c.manifest.has_mean), "the cache")
            raise TrainingError(f"{self.name}.teacher_vector=mean: {old} is format 2, which holds the teacher's [CLS] but "
                                f"not its mean pooling; add it with `mmkd cache upgrade {old}` (re-runs the teacher)")

    def count(self, batch):
        return len(batch.keys["sentence"]) if "sentence" in batch.inputs else 0

    def teacher_side(self, out):
        """The teacher projection as this loss sees it: a teacher-head mode that trains the heads by a
        loss of its own stops this objective's gradient there."""
        teacher = out[self.name]["teacher"]
        return teacher.detach() if self.shape.mode.stop_gradient else teacher

    def indicators(self, mine, gather=None):
        return {f"std_student_{self.name}": projection_std(mine["student"]).item(),
                f"std_teacher_{self.name}": projection_std(mine["teacher"]).item()}
