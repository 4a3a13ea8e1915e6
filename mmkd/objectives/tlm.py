"""TLM, translation language modelling (paper 3.1): the student's own masked-LM head predicts the
tokens masked on both sides of `[CLS] s [SEP] t [SEP]`. No settings of its own (the masking rate,
`--mlm-probability`, is shared with XWCL's word masking); no heads of its own (the student's MLM
head, found through `get_output_embeddings()`, whatever the family)."""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.errors import TrainingError
from mmkd.objectives.base import Objective
from mmkd.objectives.inputs import MASKED_PAIR


@dataclass
class TLMSettings:
    pass


class _TLM(Objective):
    name, title, equation = "tlm", "TLM", "3.1"
    input = MASKED_PAIR
    averages_over = "masked tokens"
    table5_row = 2

    def settings(self, cfg):
        return None

    def check(self, student, teacher_hidden, cfg):
        if student.get_output_embeddings() is None:
            raise TrainingError(f"student {cfg.student!r} has no MLM head (no output embeddings): TLM needs a masked-LM "
                            "checkpoint (e.g. bert-base-multilingual-cased, xlm-roberta-base); or train --without tlm")

    def forward(self, model, encoded, batch):
        mine = batch.inputs["masked_pair"]
        selected = mine["labels"] != -100
        return {"logits": encoded.masked_logits("masked_pair", selected)[None],
                "labels": mine["labels"][selected][None]}

    def count(self, batch):
        mine = batch.inputs.get("masked_pair")
        return 0 if mine is None else int((mine["labels"] != -100).sum())

    def loss(self, out, cfg, gather):
        from mmkd.losses import tlm_loss
        return tlm_loss(out[self.name]["logits"], out[self.name]["labels"])


TLM = _TLM()
