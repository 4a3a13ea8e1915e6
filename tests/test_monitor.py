"""Collapse warnings (mmkd/monitor.py)."""

from __future__ import annotations

from mmkd.trainer import train

from helpers import metrics, small_config


def test_a_collapsed_head_warns_on_the_console(tmp_path, cache_root, tiny_student, data_dir, capfd):
    """The random tiny teacher gives nearly the same [CLS] for every sentence, so frozen teacher
    projections are nearly one vector (std ≈ 5e-4 against 1/√16 = 0.25) and never change: a real case
    of what the warning is for. Once per indicator, naming it and the step."""
    run = train(small_config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2, teacher_heads="frozen"),
                progress=False)
    err = capfd.readouterr().err
    low = float(metrics(run)[0]["std_teacher_senta"])
    assert low < 0.25 / 16 ** 0.5
    assert err.count("warning: step 1: std_teacher_senta") == 1 and "step 2: std_teacher_senta" not in err
    assert "the head is collapsing" in err and "it is not trained" in err


def test_collapse_warnings_once_per_indicator_when_a_trained_head_falls():
    from mmkd.monitor import CollapseWatch

    watch = CollapseWatch(128, teacher_heads="structure")
    floor = 0.25 / 128 ** 0.5                     # 0.0221
    assert watch({"step": 1, "std_student_senta": 0.03, "std_teacher_senta": 0.08}) == []
    first = watch({"step": 7, "std_student_senta": 0.004, "std_teacher_senta": 0.08})
    assert len(first) == 1 and "std_student_senta = 0.0040" in first[0] and "step 7" in first[0]
    assert f"{floor:.4f}" in first[0] and "fell from 0.0300" in first[0]
    assert watch({"step": 8, "std_student_senta": 0.001}) == []
    assert watch({"step": 9, "std_teacher_struca": 0.09}) == []
    assert len(watch({"step": 10, "std_teacher_struca": 0.0})) == 1


def test_a_trained_head_that_starts_narrow_and_widens_is_not_a_collapse():
    """multilingual-e5-small's [CLS] vectors point one way, so its student heads start at ~0.009
    (floor 0.022) and widen as they learn: no warning. Falling to half its highest, it is one."""
    from mmkd.monitor import CollapseWatch

    watch = CollapseWatch(128, teacher_heads="structure")
    for step, value in enumerate((0.0085, 0.0090, 0.0110, 0.0160, 0.0150), start=1):
        assert watch({"step": step, "std_student_senta": value}) == []
    assert len(watch({"step": 6, "std_student_senta": 0.0079})) == 1


def test_a_collapse_warning_names_the_remedy_for_its_side_under_the_run_settings():
    """Student SentA collapsing under plain SentA: --senta-center; teacher heads collapsing while frozen
    or trained by the objectives: structure/guard; neither remedy offered when the run already has it."""
    from mmkd.monitor import CollapseWatch

    def warn(name, teacher_heads=None, senta_center=None):
        watch = CollapseWatch(128, teacher_heads, senta_center)
        watch({"step": 2, name: 0.08})
        (message,) = watch({"step": 3, name: 0.001})
        return message

    assert "senta.center=true" in warn("std_student_senta", teacher_heads="structure", senta_center=False)
    assert "senta.center=true" not in warn("std_student_senta", teacher_heads="structure", senta_center=True)
    for heads in ("frozen", "train"):
        assert "heads.teacher=structure or guard" in warn("std_teacher_struca", teacher_heads=heads)
    assert "heads.teacher=structure or guard" in warn("std_student_struca", teacher_heads="train")
    assert "heads.teacher" not in warn("std_student_struca", teacher_heads="frozen")
    for heads in ("structure", "guard"):
        message = warn("std_teacher_senta", teacher_heads=heads, senta_center=True)
        assert "heads.teacher" not in message and "senta.center" not in message
        assert "docs/results.md" in message
