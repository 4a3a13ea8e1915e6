"""XWCL, cross-lingual word-aware contrastive learning (paper 3.2, eq. 1): the student's state of
each whole-word-masked English word (its first sub-token in `[CLS] s' [SEP] t [SEP]`) must pick out
the teacher's state of the same word among the teacher states of the sentence's other words.

Settings: τ and sim() of eq. (1), and how a teacher of another width is compared (`map`: a learned
linear map W of the student's word states into the teacher's space, docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmkd.errors import TrainingError
from mmkd.losses import xwcl_loss
from mmkd.objectives.base import Objective
from mmkd.objectives.inputs import WORD_MASKED_PAIR
from mmkd.settings import setting


@dataclass
class XWCLSettings:
    temperature: float = setting(1.0, "τ of eq. (1).", above=0)
    similarity: str = setting("dot", "sim() of eq. (1): dot product (the paper) or cosine.", choices=("dot", "cosine"))
    map: str = setting("auto", "A teacher of another width: the student's word states go through a learned linear "
                               "map into the teacher's space. auto = only when the widths differ (the paper's dot "
                               "product otherwise); linear = always; none = refuse other widths.",
                       choices=("auto", "linear", "none"))


class XWCL(Objective):
    name, title, equation = "xwcl", "XWCL", "(1)"
    Settings = XWCLSettings
    input = WORD_MASKED_PAIR
    averages_over = "masked English words (anchors)"
    table5_row = 1

    def uses_map(self, student_width: int, teacher_width: int) -> bool:
        """Removed with `without`, XWCL builds no map (so none is drawn from the generator)."""
        return self.trained and (self.settings.map == "linear" or
                                 (self.settings.map == "auto" and student_width != teacher_width))

    def check(self, student, teacher_width):
        hidden = student.config.hidden_size
        if hidden != teacher_width and self.settings.map == "none":
            raise TrainingError(f"XWCL compares student and teacher states directly (eq. (1)), so their sizes must match: "
                                f"student {hidden}, teacher {teacher_width}. Use xwcl.map=linear (or auto), a matching "
                                "teacher, or without=xwcl.")

    def student_heads(self, student_width, teacher_width):
        # Across widths: W maps student word states into the teacher's space; none = the paper's direct comparison.
        if self.uses_map(student_width, teacher_width):
            return {"word_map": nn.Linear(student_width, teacher_width, bias=False)}
        return {}

    def forward(self, encoded, batch):
        mine = batch.inputs["word_masked_pair"]
        hidden = encoded.hidden("word_masked_pair")
        index = mine.word_pos[..., None].expand(-1, -1, hidden.shape[-1])
        words = torch.gather(hidden, 1, index)                                  # [B, W, H]: first sub-tokens
        word_map = self.heads.get("word_map")
        return {"student_words": word_map(words) if word_map is not None else words,   # [B, W, Ht]
                "teacher_words": mine.teacher_words, "word_mask": mine.word_mask, "masked": mine.masked}

    def count(self, batch):
        mine = batch.inputs.get("word_masked_pair")
        return 0 if mine is None else int((mine.masked & mine.word_mask).sum())

    def loss(self, out, gather):
        o = out[self.name]
        return xwcl_loss(o["student_words"], o["teacher_words"], o["word_mask"], o["masked"],
                         self.settings.temperature, self.settings.similarity)
