"""The MMKD objectives (paper section 3, eq. 6), one module each.

An objective owns everything about itself: its settings (a dataclass, `Settings`, that the run's
`TrainConfig` holds under its name: `settings.xwcl.temperature`; the sentence objectives' shared
heads under `heads`, `HeadSettings`), the student input it reads
(`objectives.inputs`), the heads it adds to the student and to the teacher side, its forward from
the encoded input to the tensors its loss needs (teacher features included: they travel with the
input), its loss (a pure function in `mmkd.losses`), what that loss is a mean over and how many of
those a micro-batch holds (the trainer's exact global weighting), its weight in L, and its collapse
indicators. The trainer, the batch builder, the CLI, the ablation sweep, the metrics columns and the
model card all derive from `OBJECTIVES`.

`build_objectives(settings, student_width, teacher_width)` runs once per run: it reads the run's
settings and makes each objective with its own, its heads and its weight. Nothing in this package
reads a run's settings after that.

The order of `OBJECTIVES` is the order in which every process issues its collectives (StrucA's
all-gather, the reductions), builds heads (their random initialisation) and runs forwards (dropout
draws): it must be the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.objectives.base import Objective
from mmkd.objectives.senta import SentA
from mmkd.objectives.sentence import TEACHER_HEAD_MODES, HeadSettings
from mmkd.objectives.struca import StrucA
from mmkd.objectives.teacher_heads import TeacherHeadsLoss
from mmkd.objectives.tlm import TLM
from mmkd.objectives.xwcl import XWCL

OBJECTIVES: tuple[type[Objective], ...] = (TLM, XWCL, SentA, StrucA)


def names() -> tuple[str, ...]:
    return tuple(o.name for o in OBJECTIVES)


def by_name(name: str) -> type[Objective]:
    for o in (*OBJECTIVES, TeacherHeadsLoss):
        if o.name == name:
            return o
    raise KeyError(f"no objective {name!r}; the objectives are {', '.join(names())}")


def chosen(without) -> tuple[type[Objective], ...]:
    """The objectives a run without `without` trains, in the fixed order of OBJECTIVES."""
    return tuple(o for o in OBJECTIVES if o.name not in without)


def inputs(objectives) -> list:
    """The student inputs these objectives read, each once, in objective order."""
    out = []
    for o in objectives:
        if o.input not in out:
            out.append(o.input)
    return out


def indicator_names() -> list[str]:
    return [n for o in OBJECTIVES for n in o.indicator_names]


@dataclass
class Built:
    terms: tuple[Objective, ...]     # the run's terms of L: the objectives trained, then the teacher heads' loss
    heads: dict                      # every head by name: all student-side ones first, then the teacher projectors
    teacher_head_names: tuple[str, ...]

    def __iter__(self):
        return iter(self.terms)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.terms)

    @property
    def objectives(self) -> tuple[Objective, ...]:
        """The terms that are objectives of eq. (6) (not the teacher heads' own loss)."""
        return tuple(o for o in self.terms if o.name in names())


def build_objectives(settings, student_width: int | None = None, teacher_width: int | None = None) -> Built:
    """Every objective of a run (a TrainConfig) made once with its own settings, and, given the widths,
    the heads. Every objective's heads are built, also those removed with `without`: their random
    initialisation draws from the seeded generator, so a run's heads do not depend on which objectives
    it trains; the student-side heads are built first, then the teacher projectors, each group in
    objective order (the order fixes their initialisation and the parameter order)."""
    shape = settings.heads
    every = [cls(getattr(settings, cls.name, None), trained=cls.name not in settings.without, shape=shape)
             for cls in OBJECTIVES]
    heads: dict = {}
    teacher: dict = {}
    if student_width is not None and teacher_width is not None:
        for o in every:
            made = o.student_heads(student_width, teacher_width)
            o.heads.update(made)
            heads.update(made)
        for o in every:
            made = o.teacher_heads(teacher_width)
            o.heads.update(made)
            teacher.update(made)
    terms = tuple(o for o in every if o.trained)
    sentence = tuple(o for o in terms if o.has_teacher_heads)
    if shape.mode.loss and sentence:
        terms += (TeacherHeadsLoss(sentence, shape.teacher_weight, settings.struca.temperature),)
    return Built(terms, {**heads, **teacher}, tuple(teacher))


__all__ = ["OBJECTIVES", "Objective", "TEACHER_HEAD_MODES", "HeadSettings", "TeacherHeadsLoss", "Built", "build_objectives",
           "by_name", "chosen", "inputs", "names", "indicator_names"]
