"""SentA, sentence alignment (paper 3.3, eq. 2): the student's predicted projection of t's [CLS]
matches the teacher's projection of s's [CLS], both L2-normalised.

Setting: `center` (not the paper): subtract each side's batch mean first, over the micro-batch
gathered from every process, so that one output for every input cannot lower the loss."""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.losses import senta_loss
from mmkd.objectives.sentence import SentenceObjective
from mmkd.settings import setting


@dataclass
class SentASettings:
    student_vector: str = setting("cls", "The student's sentence vector: its [CLS] state (the paper) or the mean of "
                                         "its last hidden states (mean; what retrieval measures).",
                                  choices=("cls", "mean"))
    teacher_vector: str = setting("cls", "The teacher's sentence vector: its [CLS] state (the paper) or its mean "
                                         "pooling over every token (mean; a sentence-transformers teacher's own "
                                         "sentence embedding; needs a format-3 cache, `mmkd cache upgrade`).",
                                  choices=("cls", "mean"))
    center: bool = setting(False, "SentA on batch-centred vectors (not the paper): one output for every input can "
                                  "no longer lower the loss (docs/method.md).")


class SentA(SentenceObjective):
    name, title, equation = "senta", "SentA", "(2)"
    Settings = SentASettings
    indicator_names = ("std_student_senta", "std_teacher_senta")
    table5_row = 3

    @property
    def spans_batch(self):
        return self.settings.center

    def loss(self, out, gather):
        student, teacher = out[self.name]["student"], self.teacher_side(out)
        if self.settings.center:   # the batch mean must be the global batch's: over the gathered micro-batch
            return senta_loss(gather(student), gather(teacher), center=True)
        return senta_loss(student, teacher)
