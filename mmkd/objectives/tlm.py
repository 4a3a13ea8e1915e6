"""TLM, translation language modelling (paper 3.1): the student's own masked-LM head predicts the
tokens masked on both sides of `[CLS] s [SEP] t [SEP]`. The masking rate, `mlm_probability`, is
shared with XWCL's word masking; the head is the student's MLM head, found through
`get_output_embeddings()`, whatever the family.

Setting: how a student shipped without an MLM head (multilingual-e5-small, any sentence encoder)
starts its fresh one. Random (transformers' initialisation) gives logits near zero, a loss of about
ln V (12.4 on a 250k vocabulary), and a gradient that is mostly the head's noise; `unigram` sets
the output bias to the log unigram frequencies of the training text first (docs/method.md, "TLM on a
student without an MLM head"), so TLM starts at the unigram entropy and the head phase
(`head_warmup_steps`, `head_lr`) fits the transform from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmkd.errors import TrainingError
from mmkd.losses import tlm_loss
from mmkd.objectives.base import Objective
from mmkd.objectives.inputs import MASKED_PAIR
from mmkd.settings import setting

UNIGRAM_SMOOTHING = 0.1     # added to every token's count: a token never seen in the sample stays possible


@dataclass
class TLMSettings:
    fresh_head: str = setting("unigram", "A student without an MLM head: its fresh head's output bias starts at the "
                                         "log unigram frequencies of the training text (unigram), or as transformers "
                                         "initialises it (random: zero).", choices=("unigram", "random"))
    unigram_pairs: int = setting(2000, "fresh_head unigram: pairs per corpus counted (its first ones).", min=1)


def unigram_log_probs(tokenizer, texts: list[str], rows: int, smoothing: float = UNIGRAM_SMOOTHING) -> np.ndarray:
    """log p(token) over `rows` vocabulary rows from the sub-token counts of `texts` (no special tokens),
    each count plus `smoothing`; special tokens and rows past the tokenizer get only the smoothing."""
    counts = np.zeros(rows, dtype=np.float64)
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1.0)
    special = [i for i in tokenizer.all_special_ids if i < rows]
    counts[special] = 0.0
    counts += smoothing
    return np.log(counts / counts.sum())


def start_fresh_head(student, tokenizer, texts: list[str]) -> bool:
    """Set the MLM output bias of `student` to `unigram_log_probs` of `texts`; False when the head has
    no bias to set (the caller says so)."""
    bias = getattr(student.get_output_embeddings(), "bias", None)
    if bias is None:
        return False
    values = unigram_log_probs(tokenizer, texts, bias.shape[0])
    with torch.no_grad():
        bias.copy_(torch.from_numpy(values).to(bias.dtype))
    return True


class TLM(Objective):
    name, title, equation = "tlm", "TLM", "3.1"
    Settings = TLMSettings
    input = MASKED_PAIR
    averages_over = "masked tokens"
    table5_row = 2

    def check(self, student, teacher_width):
        if student.get_output_embeddings() is None:
            raise TrainingError(f"student {student.config._name_or_path!r} has no MLM head (no output embeddings): TLM "
                                "needs a masked-LM checkpoint (e.g. bert-base-multilingual-cased, xlm-roberta-base); "
                                "or train without=tlm")

    def forward(self, encoded, batch):
        mine = batch.inputs["masked_pair"]
        selected = mine.labels != -100
        return {"logits": encoded.masked_logits("masked_pair", selected)[None],
                "labels": mine.labels[selected][None]}

    def count(self, batch):
        mine = batch.inputs.get("masked_pair")
        return 0 if mine is None else int((mine.labels != -100).sum())

    def loss(self, out, gather):
        return tlm_loss(out[self.name]["logits"], out[self.name]["labels"])
