"""The teacher heads' own loss (`heads.teacher=structure|guard`; the modes are in sentence.py).

It is not an objective of eq. (6): `without` does not name it and the ablation sweep never
removes it. It is a term of a run exactly when the run's mode has a loss and a sentence objective
with teacher heads is trained; it reads those objectives' teacher projections."""

from __future__ import annotations

from mmkd import losses
from mmkd.objectives.base import Objective
from mmkd.objectives.inputs import SENTENCE
from mmkd.objectives.sentence import SentenceObjective


class TeacherHeadsLoss(Objective):
    name, title, equation = "teacher_heads", "teacher heads", "mmkd's own (docs/method.md)"
    input = SENTENCE
    averages_over = "sentences (of the gathered micro-batch)"
    spans_batch = True

    def __init__(self, sentence: tuple[SentenceObjective, ...], weight: float, temperature: float):
        super().__init__()
        self.sentence = sentence            # the sentence objectives trained, whose teacher heads it trains
        self._weight = weight               # heads.teacher_weight
        self.temperature = temperature      # τ of the structure loss: StrucA's, whether or not StrucA is trained

    @property
    def weight(self):
        return self._weight

    def forward(self, encoded, batch):
        return {}     # it reads the sentence objectives' teacher projections

    def count(self, batch):
        return len(batch.keys["sentence"]) if "sentence" in batch.inputs else 0

    def loss(self, out, gather):
        """The teacher heads' own loss, summed over the teacher projections of the sentence objectives
        trained, over the micro-batch gathered from every process (a spread is a property of the whole
        batch). The guard of a head is weighted like the objective whose gradient it must hold off (α for
        StrucA's head): with α = 50 an unweighted guard is 50 times weaker than what pulls the head."""
        total = 0.0
        for o in self.sentence:
            mine = out[o.name]
            if o.shape.mode.loss == "structure_loss":
                total = total + losses.structure_loss(gather(mine["teacher"]), gather(mine["teacher_vector"]),
                                                      self.temperature)
            else:
                total = total + o.weight * losses.variance_covariance(gather(mine["teacher"]))
        return total
