"""The MMKD network (paper Figure 1): the student encoder with its MLM head, and the heads the
objectives add (student projectors and predictors, teacher projectors fed by the teacher's [CLS],
XWCL's width map). The teacher encoder is not part of it.

Everything trainable sits in this one module so that DDP wraps it once and sees one forward. The
forward encodes each student input the objectives read (once: SentA and StrucA share theirs) and
hands each objective its encoding; the objectives (mmkd/objectives/) turn that and their heads
into the tensors their losses need. Nothing here is specific to an objective.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mmkd.batching import StudentBatch
from mmkd.objectives import Built, build_objectives


class Encodings:
    """The student's encodings of one micro-batch's inputs, each computed once when first asked for.

    `frozen` (the head phase): the encoder runs without gradients, so no activations are kept for a
    backward through it; only what the heads compute from its outputs is differentiated."""

    def __init__(self, student: nn.Module, batch: StudentBatch, frozen: bool = False):
        self.student, self.batch, self.frozen = student, batch, frozen
        self._hidden: dict[str, torch.Tensor] = {}

    def _kwargs(self, name: str) -> dict:
        return self.batch.inputs[name].encoder_kwargs()

    def hidden(self, name: str) -> torch.Tensor:
        """Last hidden states [B, L, H] of the student encoder on input `name`."""
        if name not in self._hidden:
            with torch.no_grad() if self.frozen else contextlib.nullcontext():
                self._hidden[name] = self.student.base_model(**self._kwargs(name)).last_hidden_state
        return self._hidden[name]

    def masked_logits(self, name: str, selected: torch.Tensor) -> torch.Tensor:
        """The student's own masked-LM forward on input `name`, whatever its family, with the vocabulary
        projection (`get_output_embeddings()`) applied to the `selected` positions only: [N, V]
        instead of [B, L, V] (mBERT's 119k vocabulary makes the full tensor ~2 GB at batch 32 x 128).
        The head's other layers are per position, so the selected rows are exactly those of the full
        forward."""
        projection = self.student.get_output_embeddings()
        rows = selected.reshape(-1)

        def masked_only(module, args):
            hidden = args[0]
            return (hidden.reshape(-1, hidden.shape[-1])[rows], *args[1:])

        handles = [projection.register_forward_pre_hook(masked_only)]
        grad_was = torch.is_grad_enabled()
        if self.frozen:      # the encoder inside the family's own MLM forward runs without gradients
            encoder = self.student.base_model
            handles += [encoder.register_forward_pre_hook(_grad_off), encoder.register_forward_hook(_grad_on)]
        try:
            return self.student(**self._kwargs(name)).logits
        finally:
            for handle in handles:
                handle.remove()
            torch.set_grad_enabled(grad_was)


def _grad_off(module, args) -> None:
    torch.set_grad_enabled(False)      # called as a function, it sets the mode until changed


def _grad_on(module, args, out) -> None:
    torch.set_grad_enabled(True)


class MMKDModel(nn.Module):
    def __init__(self, student: nn.Module, objectives: Built):
        super().__init__()
        self.student = student                       # *ForMaskedLM
        for name, head in objectives.heads.items():  # registered by name: checkpoints and heads.safetensors
            self.add_module(name, head)
        self.head_names = tuple(objectives.heads)
        self.teacher_head_names = objectives.teacher_head_names
        self.terms = {o.name: o for o in objectives.terms}      # plain objects: their heads are registered above

    @property
    def encoder(self) -> nn.Module:
        return self.student.base_model

    def head_modules(self) -> dict[str, nn.Module]:
        """Everything trained besides the student (saved as heads.safetensors)."""
        return {name: getattr(self, name) for name in self.head_names}

    def teacher_projectors(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.teacher_head_names]

    def forward(self, batch: StudentBatch, objectives: tuple[str, ...],
                frozen_encoder: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """{objective name: the tensors its loss needs}, for the objectives named; `frozen_encoder`:
        the head phase (the encoder runs without gradients)."""
        encoded = Encodings(self.student, batch, frozen_encoder)
        return {name: self.terms[name].forward(encoded, batch) for name in objectives}


def build_model(student: nn.Module, teacher_hidden: int, settings) -> tuple[MMKDModel, Built]:
    """The student with every objective's heads for a teacher of width `teacher_hidden`, and the run's
    objectives (mmkd.objectives.build_objectives) made from `settings` (a TrainConfig)."""
    objectives = build_objectives(settings, student.config.hidden_size, teacher_hidden)
    return MMKDModel(student, objectives), objectives
