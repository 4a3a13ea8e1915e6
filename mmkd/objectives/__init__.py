"""The MMKD objectives (paper section 3, eq. 6), one module each.

An objective owns everything about itself: its settings (a dataclass the run's `TrainConfig`
holds under its name: `cfg.xwcl.temperature`), the student input it reads (`objectives.inputs`),
the heads it adds to the student and to the teacher side, its forward from the encoded input to the
tensors its loss needs (teacher features included: they travel with the input), its loss (a pure
function in `mmkd.losses`), what that loss is a mean over and how many of those a micro-batch holds
(the trainer's exact global weighting), its weight in L, and its collapse indicators. The trainer,
the batch builder, the CLI, the ablation sweep, the metrics columns and the model card all derive
from `OBJECTIVES`; adding an objective or a setting of one touches its module only.

The order of `OBJECTIVES` is the order in which every process issues its collectives (StrucA's
all-gather, the reductions), builds heads (their random initialisation) and runs forwards (dropout
draws): it must be the same everywhere.
"""

from __future__ import annotations

from mmkd.objectives.base import Objective
from mmkd.objectives.senta import SENTA
from mmkd.objectives.struca import STRUCA
from mmkd.objectives.teacher_heads import TEACHER_HEAD_MODES, TEACHER_HEADS_LOSS
from mmkd.objectives.tlm import TLM
from mmkd.objectives.xwcl import XWCL

OBJECTIVES: tuple[Objective, ...] = (TLM, XWCL, SENTA, STRUCA)


def names() -> tuple[str, ...]:
    return tuple(o.name for o in OBJECTIVES)


def by_name(name: str) -> Objective:
    for o in (*OBJECTIVES, TEACHER_HEADS_LOSS):
        if o.name == name:
            return o
    raise KeyError(f"no objective {name!r}; the objectives are {', '.join(names())}")


def chosen(without, cfg=None) -> tuple[Objective, ...]:
    """The objectives a run trains, in the fixed order of OBJECTIVES; given the run's config, followed
    by the teacher heads' own loss when its teacher-head mode has one and an objective uses teacher
    heads."""
    picked = tuple(o for o in OBJECTIVES if o.name not in without)
    mode = TEACHER_HEAD_MODES.get(getattr(cfg, "teacher_heads", "frozen"))
    if mode is not None and mode.loss and any(o.has_teacher_heads for o in picked):
        picked += (TEACHER_HEADS_LOSS,)
    return picked


def inputs(objectives) -> list:
    """The student inputs these objectives read, each once, in objective order."""
    out = []
    for o in objectives:
        if o.input not in out:
            out.append(o.input)
    return out


def build_heads(objectives, student_hidden: int, teacher_hidden: int, cfg) -> tuple[dict, tuple[str, ...]]:
    """Every head of these objectives, and the names of the teacher projectors among them: all
    student-side heads first, then all teacher projectors, each group in objective order (the order
    fixes their random initialisation and the parameter order)."""
    heads: dict = {}
    for o in objectives:
        heads.update(o.student_heads(student_hidden, teacher_hidden, cfg))
    teacher: dict = {}
    for o in objectives:
        teacher.update(o.teacher_heads(teacher_hidden, cfg))
    return {**heads, **teacher}, tuple(teacher)


def indicator_names() -> list[str]:
    return [n for o in OBJECTIVES for n in o.indicator_names]


__all__ = ["OBJECTIVES", "Objective", "TEACHER_HEAD_MODES", "TEACHER_HEADS_LOSS", "by_name", "chosen", "inputs",
           "build_heads", "names", "indicator_names"]
