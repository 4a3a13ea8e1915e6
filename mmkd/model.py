"""The MMKD network (paper Figure 1): the student encoder with its MLM head, two student
projector/predictor pairs, and two teacher projectors fed by the teacher's [CLS] vectors (cached
or online). The teacher encoder is not part of it.

`forward` returns the tensors the losses need; the losses themselves live in `mmkd.losses`.
Everything trainable sits in this one module so that DDP wraps it once and sees one forward.
"""

from __future__ import annotations

import torch
from torch import nn

from mmkd.batching import StudentBatch
from mmkd.heads import mlp


class MMKDModel(nn.Module):
    def __init__(self, student: nn.Module, teacher_hidden: int, head_hidden: int = 768, head_out: int = 128,
                 head_norm: str = "none", word_map: bool = False):
        super().__init__()
        self.student = student                       # *ForMaskedLM
        hidden = student.config.hidden_size
        # XWCL across widths: student word states mapped into the teacher's space by a learned W
        # (docs/method.md, "A teacher of another width"); None = the paper's direct comparison.
        self.word_map = nn.Linear(hidden, teacher_hidden, bias=False) if word_map else None
        self.senta_projector = mlp(hidden, head_hidden, head_out, head_norm)
        self.senta_predictor = mlp(head_out, head_hidden, head_out, head_norm)
        self.struca_projector = mlp(hidden, head_hidden, head_out, head_norm)
        self.struca_predictor = mlp(head_out, head_hidden, head_out, head_norm)
        self.teacher_senta_projector = mlp(teacher_hidden, head_hidden, head_out, head_norm)
        self.teacher_struca_projector = mlp(teacher_hidden, head_hidden, head_out, head_norm)

    @property
    def encoder(self) -> nn.Module:
        return self.student.base_model

    def head_modules(self) -> dict[str, nn.Module]:
        """Everything trained besides the student (saved as heads.safetensors)."""
        names = ("senta_projector", "senta_predictor", "struca_projector", "struca_predictor",
                 "teacher_senta_projector", "teacher_struca_projector", "word_map")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def teacher_heads(self) -> list[nn.Module]:
        return [self.teacher_senta_projector, self.teacher_struca_projector]

    def _masked_logits(self, ids, attention, types, selected: torch.Tensor) -> torch.Tensor:
        """The student's own masked-LM forward, whatever its family, with the vocabulary projection
        (`get_output_embeddings()`) applied to the masked positions only: [N, V] instead of [B, L, V]
        (mBERT's 119k vocabulary makes the full tensor ~2 GB at batch 32 x 128). The head's other
        layers are per position, so the selected rows are exactly those of the full forward."""
        projection = self.student.get_output_embeddings()
        if projection is None:
            raise ValueError(f"{type(self.student).__name__} has no output embeddings (no MLM head): TLM needs one; "
                             "use a *ForMaskedLM checkpoint or --without tlm")
        rows = selected.reshape(-1)

        def masked_only(module, args):
            hidden = args[0]
            return (hidden.reshape(-1, hidden.shape[-1])[rows], *args[1:])

        handle = projection.register_forward_pre_hook(masked_only)
        try:
            kw = {"input_ids": ids, "attention_mask": attention}
            if types is not None:
                kw["token_type_ids"] = types
            return self.student(**kw).logits
        finally:
            handle.remove()

    def _encode(self, ids, attention, types) -> torch.Tensor:
        kw = {"input_ids": ids, "attention_mask": attention}
        if types is not None:
            kw["token_type_ids"] = types
        return self.encoder(**kw).last_hidden_state

    def forward(self, batch: StudentBatch, objectives: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Encode the inputs these objectives need (mmkd.objectives) and run the heads they use.
        Besides each objective's tensors, the sentence input's [CLS] states are returned as
        `sentence_cls` / `teacher_cls`, for objectives that need no head of their own."""
        from mmkd.objectives import by_name, inputs

        needed = inputs(by_name(o) for o in objectives)
        out: dict[str, torch.Tensor] = {}
        if "masked_pair" in needed:
            selected = batch.masked_pair_labels != -100
            out["tlm_logits"] = self._masked_logits(batch.masked_pair_input_ids, batch.masked_pair_attention_mask,
                                                    batch.masked_pair_token_type_ids, selected)[None]
            out["masked_pair_labels"] = batch.masked_pair_labels[selected][None]
        if "word_masked_pair" in needed:
            hidden = self._encode(batch.word_masked_pair_input_ids, batch.word_masked_pair_attention_mask, batch.word_masked_pair_token_type_ids)
            index = batch.word_pos[..., None].expand(-1, -1, hidden.shape[-1])
            words = torch.gather(hidden, 1, index)                       # [B, W, H]: first sub-tokens
            out["student_words"] = self.word_map(words) if self.word_map is not None else words   # [B, W, Ht]
        if "sentence" in needed:
            cls = self._encode(batch.sent_input_ids, batch.sent_attention_mask, batch.sent_token_type_ids)[:, 0]
            teacher_cls = batch.teacher_cls.to(cls.dtype)
            out["sentence_cls"], out["teacher_cls"] = cls, teacher_cls
            if "senta" in objectives:
                out["senta_student"] = self.senta_predictor(self.senta_projector(cls))
                out["senta_teacher"] = self.teacher_senta_projector(teacher_cls)
            if "struca" in objectives:
                out["struca_student"] = self.struca_predictor(self.struca_projector(cls))
                out["struca_teacher"] = self.teacher_struca_projector(teacher_cls)
        return out
