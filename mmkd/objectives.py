"""The MMKD objectives in one place (paper section 3, eq. 6).

Each `Objective` says everything the rest of mmkd needs to know about it: its name (for
`--without` and the metrics column), the student input it needs, what its loss is a mean over and
how many of those a micro-batch holds, whether it is computed over the micro-batch gathered from
every process (then each process computes the same value and weights it by its share), its weight
in L, the call of its loss function, and the collapse indicators it logs. The trainer, the batch
builder, the CLI, the ablation sweep, the metrics columns and the model card all derive from
`OBJECTIVES`; docs/method.md ("Change or add an objective") says how to add one here.

The order of `OBJECTIVES` is the order in which every process issues its collectives (StrucA's
all-gather, the reductions): it must be the same everywhere, which a set's hash order is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# The student inputs of a pair (mmkd/batching.py builds those that the chosen objectives need).
INPUTS = ("masked_pair", "word_masked_pair", "sentence")


@dataclass(frozen=True)
class Objective:
    name: str                                   # --without NAME, the metrics column
    title: str                                  # as the paper writes it
    equation: str
    input: str                                  # one of INPUTS
    averages_over: str                          # what the loss is a mean over
    count: Callable[[Any], int]                 # how many of those a StudentBatch holds
    loss: Callable[[dict, Any, Any, Callable], Any]   # (model outputs, batch, TrainConfig, gather) -> scalar
    weight: Callable[[Any], float] = lambda cfg: 1.0  # its weight in L (eq. 6), from the TrainConfig
    spans_batch: Callable[[Any], bool] = lambda cfg: False   # over the gathered micro-batch of all processes
    indicators: Callable[[dict], dict] = lambda out: {}      # logged every step (collapse)
    indicator_names: tuple[str, ...] = ()
    same_width: bool = False                    # compares student and teacher states directly
    table5_row: int = 99                        # where its ablation stands in the sweep's table
    notes: dict = field(default_factory=dict)


def _std(x) -> float:
    from mmkd.losses import projection_std
    return projection_std(x).item()


def _tlm_loss(out, batch, cfg, gather):
    from mmkd.losses import tlm_loss
    return tlm_loss(out["tlm_logits"], out["masked_pair_labels"])


def _xwcl_loss(out, batch, cfg, gather):
    from mmkd.losses import xwcl_loss
    return xwcl_loss(out["student_words"], batch.teacher_words, batch.teacher_word_mask, batch.masked_words,
                     cfg.xwcl_temperature, cfg.xwcl_similarity)


def _teacher(out, key, cfg):
    """A teacher projection as SentA/StrucA see it: with the teacher-head modes that train the heads
    by a loss of their own (TEACHER_HEADS), SentA's and StrucA's gradients stop here."""
    return out[key].detach() if TEACHER_HEADS[cfg.teacher_heads].stop_gradient else out[key]


def _senta_loss(out, batch, cfg, gather):
    from mmkd.losses import senta_loss
    teacher = _teacher(out, "senta_teacher", cfg)
    if cfg.senta_center:   # the batch mean must be the global batch's: over the gathered micro-batch
        return senta_loss(gather(out["senta_student"]), gather(teacher), center=True)
    return senta_loss(out["senta_student"], teacher)


def _struca_loss(out, batch, cfg, gather):
    from mmkd.losses import struca_loss
    return struca_loss(gather(out["struca_student"]), gather(_teacher(out, "struca_teacher", cfg)),
                       cfg.struca_temperature)


def _sentences(batch) -> int:
    return 0 if batch.sent_input_ids is None else len(batch.sent_keys)


OBJECTIVES: tuple[Objective, ...] = (
    Objective("tlm", "TLM", "3.1", "masked_pair", "masked tokens",
              count=lambda b: 0 if b.masked_pair_labels is None else int((b.masked_pair_labels != -100).sum()),
              loss=_tlm_loss, table5_row=2),
    Objective("xwcl", "XWCL", "(1)", "word_masked_pair", "masked English words (anchors)",
              count=lambda b: 0 if b.masked_words is None else int((b.masked_words & b.teacher_word_mask).sum()),
              loss=_xwcl_loss, same_width=True, table5_row=1),
    Objective("senta", "SentA", "(2)", "sentence", "sentences",
              count=_sentences, loss=_senta_loss, spans_batch=lambda cfg: cfg.senta_center,
              indicators=lambda out: {"std_student_senta": _std(out["senta_student"]),
                                      "std_teacher_senta": _std(out["senta_teacher"])},
              indicator_names=("std_student_senta", "std_teacher_senta"), table5_row=3),
    Objective("struca", "StrucA", "(3)-(5)", "sentence", "sentences (rows of the gathered similarity matrix)",
              count=_sentences, loss=_struca_loss, weight=lambda cfg: cfg.alpha, spans_batch=lambda cfg: True,
              indicators=lambda out: {"std_student_struca": _std(out["struca_student"]),
                                      "std_teacher_struca": _std(out["struca_teacher"])},
              indicator_names=("std_student_struca", "std_teacher_struca"), table5_row=4),
)


# ----------------------------------------------------------------------------- teacher heads
# How the teacher projectors ḡ_t (one per sentence objective) are trained: docs/method.md, "Teacher
# heads". Not an objective of eq. (6): a mode whose heads learn by a loss of their own adds the
# `teacher_heads` term below to the objectives a run trains (`chosen(without, cfg)`); it is never
# ablated and `--without` does not name it.

@dataclass(frozen=True)
class TeacherHeadMode:
    name: str
    trained: bool               # the teacher projectors are updated at all
    stop_gradient: bool         # SentA/StrucA gradients stop at the teacher projections
    loss: str | None            # the teacher heads' own loss (mmkd.losses), if any
    summary: str


TEACHER_HEADS: dict[str, TeacherHeadMode] = {m.name: m for m in (
    TeacherHeadMode("frozen", False, False, None, "random, never trained"),
    TeacherHeadMode("train", True, False, None, "trained by SentA/StrucA only (both sides can agree on a constant)"),
    TeacherHeadMode("structure", True, True, "structure_loss",
                    "trained only to keep the batch similarity structure of the teacher's centred [CLS] (eq. 7); "
                    "SentA/StrucA gradients stopped"),
    TeacherHeadMode("guard", True, False, "variance_covariance",
                    "trained by SentA/StrucA plus a variance/covariance guard on their outputs (eq. 8)"),
)}


def _heads_loss(out, batch, cfg, gather):
    """The teacher heads' own loss, summed over the teacher projections of the objectives trained,
    over the micro-batch gathered from every process (a spread is a property of the whole batch).
    The guard of a head is weighted like the objective whose gradient it must hold off (α for
    StrucA's head): with α = 50 an unweighted guard is 50 times weaker than what pulls the head."""
    from mmkd import losses
    total = 0.0
    for name, key in (("senta", "senta_teacher"), ("struca", "struca_teacher")):
        if key not in out:
            continue
        if TEACHER_HEADS[cfg.teacher_heads].loss == "structure_loss":
            total = total + losses.structure_loss(gather(out[key]), gather(out["teacher_cls"]), cfg.struca_temperature)
        else:
            total = total + by_name(name).weight(cfg) * losses.variance_covariance(gather(out[key]))
    return total


HEADS = Objective("teacher_heads", "teacher heads", "(7)/(8)", "sentence", "sentences (of the gathered micro-batch)",
                  count=_sentences, loss=_heads_loss, weight=lambda cfg: cfg.teacher_head_weight,
                  spans_batch=lambda cfg: True, table5_row=99)


def names() -> tuple[str, ...]:
    return tuple(o.name for o in OBJECTIVES)


def by_name(name: str) -> Objective:
    for o in (*OBJECTIVES, HEADS):
        if o.name == name:
            return o
    raise KeyError(f"no objective {name!r}; the objectives are {', '.join(names())}")


def chosen(without, cfg=None) -> tuple[Objective, ...]:
    """The objectives a run trains, in the fixed order of OBJECTIVES; given the run's config, followed
    by the teacher heads' own loss when its teacher-head mode has one and a sentence objective uses
    the heads."""
    picked = tuple(o for o in OBJECTIVES if o.name not in without)
    mode = TEACHER_HEADS.get(getattr(cfg, "teacher_heads", "frozen"))
    if mode is not None and mode.loss and {"senta", "struca"} & {o.name for o in picked}:
        picked += (HEADS,)
    return picked


def inputs(objectives) -> set[str]:
    """The student inputs these objectives need."""
    return {o.input for o in objectives}
