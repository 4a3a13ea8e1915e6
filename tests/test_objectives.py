"""The objectives' registry (mmkd/objectives/): each term alone and removed, teacher-head modes, a fifth
objective added by its module only."""

from __future__ import annotations

import pytest
import torch

from mmkd import objectives as objs, settings as st
from mmkd.trainer import train

from helpers import metrics, small_config, tiny_model


@pytest.mark.parametrize("removed", objs.names())
def test_without_drops_exactly_its_term(tmp_path, cache_root, tiny_student, data_dir, removed):
    cfg = small_config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2, without=[removed], alpha=0.5)
    rows = metrics(train(cfg, progress=False))
    for row in rows:
        assert row[removed] == ""
        kept = [o for o in objs.names() if o != removed]
        assert all(row[o] != "" for o in kept)
        expected = sum(float(row[o]) * (0.5 if o == "struca" else 1.0) for o in kept)
        expected += float(row["teacher_heads"] or 0.0)     # the teacher heads' own loss, if the mode has one
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-9)


def test_teacher_heads_frozen_or_trained(tmp_path, cache_root, tiny_student, data_dir):
    from safetensors.torch import load_file

    for mode, should_change in (("frozen", False), ("train", True), ("structure", True), ("guard", True)):
        cfg = small_config(tmp_path / mode, cache_root, tiny_student, data_dir, max_steps=3, teacher_heads=mode)
        run = train(cfg, progress=False)
        torch.manual_seed(cfg.seed)
        ref = tiny_model(tiny_student)
        heads = load_file(str(run / "heads.safetensors"))
        w0 = ref.teacher_senta_projector[0].weight
        changed = not torch.equal(heads["teacher_senta_projector.0.weight"], w0)
        assert changed == should_change, mode
        assert not torch.equal(heads["senta_projector.0.weight"], ref.senta_projector[0].weight)
        stds = [float(r["std_teacher_senta"]) for r in metrics(run)]
        assert all(s >= 0 for s in stds)


def test_teacher_heads_term_is_logged_and_weighted(tmp_path, cache_root, tiny_student, data_dir):
    cfg = small_config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2, teacher_heads="guard",
                 teacher_head_weight=0.5, alpha=0.5)
    for row in metrics(train(cfg, progress=False)):
        assert float(row["teacher_heads"]) > 0
        expected = sum(float(row[o]) * w for o, w in (("tlm", 1), ("xwcl", 1), ("senta", 1), ("struca", 0.5),
                                                       ("teacher_heads", 0.5)))
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-9)


def test_struca_logs_its_targets_diagonal_mass(tmp_path, cache_root, tiny_student, data_dir):
    rows = metrics(train(small_config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2,
                                struca={"temperature": 0.1}), progress=False))
    flat = metrics(train(small_config(tmp_path / "hot", cache_root, tiny_student, data_dir, max_steps=2,
                                struca={"temperature": 100.0}), progress=False))
    for r, f in zip(rows, flat):
        assert 1 / 8 <= float(r["struca_target_diag"]) <= 1.0
        assert float(f["struca_target_diag"]) == pytest.approx(1 / 8, rel=0.02)     # τ → ∞: every sentence alike
        assert float(r["struca_target_diag"]) > float(f["struca_target_diag"])


def test_a_fifth_objective_needs_only_its_module_and_its_place_in_the_list(tmp_path, cache_root, tiny_student,
                                                                          data_dir, monkeypatch):
    """A toy objective (a small penalty on the student's sentence [CLS]) defined here and added to
    mmkd.objectives.OBJECTIVES, nowhere else: it trains, is weighted, has its metrics column, can be
    removed with --without, and gets its own run in the ablation sweep."""
    from mmkd import ablate
    from mmkd.objectives.inputs import SENTENCE

    class ClsNorm(objs.Objective):
        name, title, equation, input, averages_over, table5_row = "clsnorm", "CLS-norm", "-", SENTENCE, "sentences", 5
        weight = 0.25

        def forward(self, encoded, batch):
            return {"cls": encoded.hidden("sentence")[:, 0]}

        def count(self, batch):
            return len(batch.keys["sentence"]) if "sentence" in batch.inputs else 0

        def loss(self, out, gather):
            return out[self.name]["cls"].float().pow(2).mean()

    monkeypatch.setattr(objs, "OBJECTIVES", objs.OBJECTIVES + (ClsNorm,))
    rows = metrics(train(small_config(tmp_path / "all", cache_root, tiny_student, data_dir, max_steps=2, alpha=0.5),
                         progress=False))
    for row in rows:
        assert float(row["clsnorm"]) > 0
        expected = sum(float(row[o]) * w for o, w in (("tlm", 1), ("xwcl", 1), ("senta", 1), ("struca", 0.5),
                                                       ("clsnorm", 0.25)))
        expected += float(row["teacher_heads"] or 0.0)
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-9)
    only = metrics(train(small_config(tmp_path / "only", cache_root, tiny_student, data_dir, max_steps=1,
                                without=["tlm", "xwcl", "senta", "struca"]), progress=False))
    assert float(only[0]["loss"]) == pytest.approx(0.25 * float(only[0]["clsnorm"]), rel=1e-9)
    assert only[0]["tlm"] == "" and only[0]["struca"] == ""
    without = metrics(train(small_config(tmp_path / "without", cache_root, tiny_student, data_dir, max_steps=1,
                                   without=["clsnorm"]), progress=False))
    assert without[0]["clsnorm"] == ""
    assert [name for name, _ in ablate.runs()] == ["mmkd", "-xwcl", "-tlm", "-senta", "-struca", "-clsnorm"]


def test_a_new_objectives_settings_join_the_run_settings_from_the_registry(monkeypatch):
    """An objective's `Settings` dataclass becomes `TrainConfig.<name>` with nothing else written:
    a settings file and KEY=VALUE reach it, its checks hold, and build_objectives hands it over."""
    from dataclasses import dataclass

    from mmkd.config import with_objectives
    from mmkd.objectives.inputs import SENTENCE
    from mmkd.settings import setting

    @dataclass
    class ClsNormSettings:
        weight: float = setting(0.25, "Its weight in L.", min=0)

    class ClsNorm(objs.Objective):
        name, title, equation, input, averages_over = "clsnorm", "CLS-norm", "-", SENTENCE, "sentences"
        Settings = ClsNormSettings

        @property
        def weight(self):
            return self.settings.weight

    cls = with_objectives(objs.OBJECTIVES + (ClsNorm,))
    cfg = st.from_mapping(cls, {"clsnorm": {"weight": 0.5}, "struca.alpha": 2.0}, "test")
    assert cfg.clsnorm.weight == 0.5 and cfg.struca.alpha == 2.0 and cls().clsnorm.weight == 0.25
    assert st.load(cls, None, st.assignments(cls, ["clsnorm.weight=3"], "train")).clsnorm.weight == 3.0
    with pytest.raises(st.SettingsError, match="clsnorm.weight=-1.0: must be at least 0"):
        st.assignments(cls, ["clsnorm.weight=-1"], "train")
    assert "clsnorm.weight" in [f.key for f in st.fields(cls)]
    monkeypatch.setattr(objs, "OBJECTIVES", objs.OBJECTIVES + (ClsNorm,))
    made = {o.name: o for o in objs.build_objectives(cfg).terms}
    assert made["clsnorm"].settings is cfg.clsnorm and made["clsnorm"].weight == 0.5 and made["struca"].weight == 2.0
