"""XWCL, cross-lingual word-aware contrastive learning (paper 3.2, eq. 1): the student's state of
each whole-word-masked English word (its first sub-token in `[CLS] s' [SEP] t [SEP]`) must pick out
the teacher's state of the same word among the teacher states of the sentence's other words.

Settings: τ and sim() of eq. (1), and how a teacher of another width is compared (`map`: a learned
linear map W of the student's word states into the teacher's space, docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.errors import TrainingError
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


def uses_map(student_hidden: int, teacher_hidden: int, cfg) -> bool:
    return "xwcl" not in cfg.without and (cfg.xwcl.map == "linear" or
                                          (cfg.xwcl.map == "auto" and student_hidden != teacher_hidden))


class _XWCL(Objective):
    name, title, equation = "xwcl", "XWCL", "(1)"
    input = WORD_MASKED_PAIR
    averages_over = "masked English words (anchors)"
    table5_row = 1

    def check(self, student, teacher_hidden, cfg):
        hidden = student.config.hidden_size
        if hidden != teacher_hidden and cfg.xwcl.map == "none":
            raise TrainingError(f"XWCL compares student and teacher states directly (eq. (1)), so their sizes must match: "
                            f"student {hidden}, teacher {teacher_hidden}. Use --xwcl-map linear (or auto), a matching "
                            "teacher, or --without xwcl.")

    def student_heads(self, student_hidden, teacher_hidden, cfg):
        # Across widths: W maps student word states into the teacher's space; None = the paper's direct comparison.
        if uses_map(student_hidden, teacher_hidden, cfg):
            from torch import nn
            return {"word_map": nn.Linear(student_hidden, teacher_hidden, bias=False)}
        return {}

    def forward(self, model, encoded, batch):
        import torch

        mine = batch.inputs["word_masked_pair"]
        hidden = encoded.hidden("word_masked_pair")
        index = mine["word_pos"][..., None].expand(-1, -1, hidden.shape[-1])
        words = torch.gather(hidden, 1, index)                                  # [B, W, H]: first sub-tokens
        word_map = getattr(model, "word_map", None)
        return {"student_words": word_map(words) if word_map is not None else words,   # [B, W, Ht]
                "teacher_words": mine["teacher_words"], "word_mask": mine["teacher_word_mask"],
                "masked": mine["masked_words"]}

    def count(self, batch):
        mine = batch.inputs.get("word_masked_pair")
        return 0 if mine is None else int((mine["masked_words"] & mine["teacher_word_mask"]).sum())

    def loss(self, out, cfg, gather):
        from mmkd.losses import xwcl_loss
        o = out[self.name]
        return xwcl_loss(o["student_words"], o["teacher_words"], o["word_mask"], o["masked"],
                         cfg.xwcl.temperature, cfg.xwcl.similarity)


XWCL = _XWCL()
