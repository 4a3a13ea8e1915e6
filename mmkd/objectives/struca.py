"""StrucA, structure alignment (paper 3.4, eqs. 3–5): the row-softmax of the student's batch
similarity matrix matches the teacher's, by KL divergence, over the micro-batch gathered from every
process.

Settings: τ of eq. (4), and α, StrucA's weight in L (eq. 6; `struca.alpha`)."""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.losses import struca_loss, target_diagonal_mass
from mmkd.objectives.sentence import SentenceObjective
from mmkd.settings import setting


@dataclass
class StrucASettings:
    student_vector: str = setting("cls", "The student's sentence vector: its [CLS] state (the paper) or the mean of "
                                         "its last hidden states (mean; what retrieval measures).",
                                  choices=("cls", "mean"))
    teacher_vector: str = setting("cls", "The teacher's sentence vector: its [CLS] state (the paper) or its mean "
                                         "pooling over every token (mean; a sentence-transformers teacher's own "
                                         "sentence embedding; needs a format-3 cache, `mmkd cache upgrade`).",
                                  choices=("cls", "mean"))
    temperature: float = setting(0.1, "τ of eq. (4).", above=0)
    alpha: float = setting(1.0, "α, the weight of StrucA in L (eq. 6).", min=0, flag="--alpha")
    exclude_diagonal: bool = setting(False, "Each row's softmax over the other sentences only (not the paper): the "
                                            "diagonal A_ii = 1 otherwise takes most of a row's mass at a small τ "
                                            "(metrics.csv: struca_target_diag).")


class StrucA(SentenceObjective):
    name, title, equation = "struca", "StrucA", "(3)-(5)"
    Settings = StrucASettings
    averages_over = "sentences (rows of the gathered similarity matrix)"
    indicator_names = ("std_student_struca", "std_teacher_struca", "struca_target_diag")
    table5_row = 4
    spans_batch = True

    @property
    def weight(self):
        return self.settings.alpha

    def loss(self, out, gather):
        return struca_loss(gather(out[self.name]["student"]), gather(self.teacher_side(out)),
                           self.settings.temperature, self.settings.exclude_diagonal)

    def indicators(self, mine, gather=None):
        """Besides the spreads: the teacher target's diagonal mass over the gathered micro-batch (what
        the loss sees), with the full softmax whether or not the loss leaves the diagonal out."""
        out = super().indicators(mine, gather)
        if "teacher" in mine:
            teacher = mine["teacher"].detach()
            out["struca_target_diag"] = target_diagonal_mass(gather(teacher) if gather else teacher,
                                                             self.settings.temperature).item()
        return out
