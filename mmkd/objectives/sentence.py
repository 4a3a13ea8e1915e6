"""What SentA and StrucA share: the sentence input `[CLS] t [SEP]`, its [CLS] state, a student
projector and predictor each, and a teacher projector each fed by the teacher's [CLS] of s (paper
3.3–3.4, 4.1: 2-layer MLPs, 768 hidden units, 128 outputs; `--head-hidden/--head-out/--head-norm`)."""

from __future__ import annotations

from mmkd.objectives.base import Objective
from mmkd.objectives.inputs import SENTENCE


def sentence_vector(hidden, attention_mask, pooling: str):
    """The student's sentence vector: its [CLS] state (the paper) or the mean of its last hidden states
    over every token of the input, special tokens included (sentence-transformers' and e5's mean
    pooling, and what `mmkd eval retrieval` calls mean)."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask[..., None].to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def projection_std(x) -> float:
    from mmkd.losses import projection_std as std
    return std(x).item()


class SentenceObjective(Objective):
    input = SENTENCE
    averages_over = "sentences"
    has_teacher_heads = True

    def student_heads(self, student_hidden, teacher_hidden, cfg):
        from mmkd.heads import mlp
        return {f"{self.name}_projector": mlp(student_hidden, cfg.head_hidden, cfg.head_out, cfg.head_norm),
                f"{self.name}_predictor": mlp(cfg.head_out, cfg.head_hidden, cfg.head_out, cfg.head_norm)}

    def teacher_heads(self, teacher_hidden, cfg):
        from mmkd.heads import mlp
        return {f"teacher_{self.name}_projector": mlp(teacher_hidden, cfg.head_hidden, cfg.head_out, cfg.head_norm)}

    def forward(self, model, encoded, batch):
        mine = batch.inputs["sentence"]
        hidden = encoded.hidden("sentence")
        settings = self.settings_of(model)
        cls = sentence_vector(hidden, mine["attention_mask"], settings.student_vector)
        teacher_vector = mine[f"teacher_{settings.teacher_vector}"].to(cls.dtype)
        return {"student": getattr(model, f"{self.name}_predictor")(getattr(model, f"{self.name}_projector")(cls)),
                "teacher": getattr(model, f"teacher_{self.name}_projector")(teacher_vector),
                "teacher_vector": teacher_vector}

    def check_features(self, features, cfg):
        from mmkd.errors import TrainingError

        if self.settings(cfg).teacher_vector == "mean" and not features.has_teacher_mean:
            old = next((c.url for c in getattr(features, "caches", []) if not c.manifest.has_mean), "the cache")
            raise TrainingError(f"--{self.name}-teacher-vector mean: {old} is format 2, which holds the teacher's [CLS] but "
                            f"not its mean pooling; add it with `mmkd cache upgrade {old}` (re-runs the teacher)")

    def count(self, batch):
        return len(batch.keys["sentence"]) if "sentence" in batch.inputs else 0

    def teacher_side(self, out, cfg):
        """The teacher projection as this loss sees it: a teacher-head mode that trains the heads by a
        loss of its own stops this objective's gradient there."""
        from mmkd.objectives.teacher_heads import TEACHER_HEAD_MODES

        teacher = out[self.name]["teacher"]
        return teacher.detach() if TEACHER_HEAD_MODES[cfg.teacher_heads].stop_gradient else teacher

    @property
    def indicator_names(self):
        return (f"std_student_{self.name}", f"std_teacher_{self.name}")

    def indicators(self, mine, cfg=None, gather=None):
        return {f"std_student_{self.name}": projection_std(mine["student"]),
                f"std_teacher_{self.name}": projection_std(mine["teacher"])}
