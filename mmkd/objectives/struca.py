"""StrucA, structure alignment (paper 3.4, eqs. 3–5): the row-softmax of the student's batch
similarity matrix matches the teacher's, by KL divergence, over the micro-batch gathered from every
process.

Settings: τ of eq. (4), and α, StrucA's weight in L (eq. 6; `--alpha`)."""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.objectives.sentence import SentenceObjective
from mmkd.settings import setting


@dataclass
class StrucASettings:
    temperature: float = setting(0.1, "τ of eq. (4).", above=0)
    alpha: float = setting(1.0, "α, the weight of StrucA in L (eq. 6).", min=0, flag="--alpha")


class _StrucA(SentenceObjective):
    name, title, equation = "struca", "StrucA", "(3)-(5)"
    averages_over = "sentences (rows of the gathered similarity matrix)"
    table5_row = 4

    def weight(self, cfg):
        return cfg.struca.alpha

    def spans_batch(self, cfg):
        return True

    def loss(self, out, cfg, gather):
        from mmkd.losses import struca_loss
        return struca_loss(gather(out[self.name]["student"]), gather(self.teacher_side(out, cfg)),
                           cfg.struca.temperature)


STRUCA = _StrucA()
