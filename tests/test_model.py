"""The MMKD network (mmkd/model.py, mmkd/heads.py): heads, their learning rates and gradient routes, the
head phase, TLM's fresh head, the sentence vector."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mmkd import objectives as objs
from mmkd.cache import CacheConfig, build_cache
from mmkd.config import TrainingError
from mmkd.model import build_model
from mmkd.tiny import make_tiny_bert, tiny_batch
from mmkd.trainer import train

from helpers import changed, losses_of_step, metrics, small_config, small_settings, tiny_model


def _head_grads(mode: str, tiny_student: str, objectives: tuple[str, ...]) -> dict[str, bool]:
    """Which parts get a gradient from each objective's loss, in teacher-head mode `mode`."""
    torch.manual_seed(0)
    cfg = small_settings(teacher_heads=mode, without=[n for n in objs.names() if n not in objectives])
    model, terms = build_model(AutoModelForMaskedLM.from_pretrained(tiny_student), 32, cfg)
    got = {}
    for o in terms:
        model.zero_grad(set_to_none=True)
        out = model(tiny_batch(tiny_student), terms.names)
        o.loss(out, lambda t: t).backward()
        got[o.name] = {part: any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
                       for part, module in (("teacher", model.teacher_senta_projector),
                                            ("teacher_struca", model.teacher_struca_projector),
                                            ("student_heads", model.senta_projector),
                                            ("encoder", model.encoder))}
    return got


def test_removed_objectives_skip_their_forward_pass(tiny_student):
    torch.manual_seed(0)
    model = tiny_model(tiny_student)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    batch = tiny_batch(tiny_student)
    for objectives, n in [(objs.names(), 3), (("xwcl", "senta", "struca"), 2), (("tlm", "senta", "struca"), 2),
                          (("tlm", "xwcl", "struca"), 3), (("tlm", "xwcl"), 2), (("senta",), 1)]:
        calls.clear()
        out = model(batch, tuple(objectives))
        assert len(calls) == n, objectives
        assert set(out) == set(objectives)


def test_teacher_head_modes_route_gradients_as_documented(tiny_student):
    """structure: SentA/StrucA stop at the teacher projections, which learn from their own loss only
    (and it reaches nothing else); guard and train: SentA reaches them; frozen/train add no term."""
    structure = _head_grads("structure", tiny_student, ("senta", "struca"))
    assert [n for n in structure] == ["senta", "struca", "teacher_heads"]
    assert not structure["senta"]["teacher"] and structure["senta"]["student_heads"] and structure["senta"]["encoder"]
    assert not structure["struca"]["teacher_struca"]
    assert structure["teacher_heads"] == {"teacher": True, "teacher_struca": True, "student_heads": False,
                                          "encoder": False}
    guard = _head_grads("guard", tiny_student, ("senta", "struca"))
    assert guard["senta"]["teacher"] and guard["struca"]["teacher_struca"]
    assert guard["teacher_heads"]["teacher"] and not guard["teacher_heads"]["encoder"]
    # Only the heads of the objectives trained: with SentA removed, its teacher head has no own loss.
    assert not _head_grads("structure", tiny_student, ("struca",))["teacher_heads"]["teacher"]
    for mode in ("frozen", "train"):
        assert "teacher_heads" not in _head_grads(mode, tiny_student, ("senta", "struca"))
    # Without a sentence objective the mode adds no term.
    assert objs.build_objectives(small_settings(teacher_heads="structure", without=["senta", "struca"])).names == ("tlm", "xwcl")


def test_guard_of_each_head_is_weighted_like_its_objective():
    """guard: SentA's head's guard has weight 1, StrucA's α (what it must hold off); structure: eq. 7
    per head, unweighted."""
    from mmkd.losses import structure_loss, variance_covariance

    g = torch.Generator().manual_seed(0)
    cls = torch.randn(6, 12, generator=g)
    out = {"senta": {"teacher": torch.randn(6, 8, generator=g), "teacher_vector": cls},
           "struca": {"teacher": torch.randn(6, 8, generator=g), "teacher_vector": cls}}
    same = lambda t: t   # noqa: E731
    for alpha in (1.0, 50.0):
        term = objs.build_objectives(small_settings(teacher_heads="guard", alpha=alpha)).terms[-1]
        assert term.name == "teacher_heads"
        got = term.loss(out, same)
        expected = (variance_covariance(out["senta"]["teacher"])
                    + alpha * variance_covariance(out["struca"]["teacher"]))
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got = objs.build_objectives(small_settings(teacher_heads="structure", alpha=50.0)).terms[-1].loss(out, same)
    expected = sum(structure_loss(out[k]["teacher"], cls, 0.1) for k in ("senta", "struca"))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("width", [48, 24])
def test_a_teacher_of_another_width_goes_through_a_learned_map(tmp_path, english_texts, tiny_student, data_dir, width,
                                                               cache_root, shared):
    """A wider (48) or narrower (24) teacher than the 32-d student: XWCL compares W·h̃ with h through a
    learned linear map W, trained with the student and saved with the heads; cached and online
    teachers give the same losses; `--xwcl-map none` refuses, as the paper's direct comparison must."""
    from safetensors.torch import load_file

    teacher = make_tiny_bert(english_texts[:2000], tmp_path / "teacher", 1000, seed=0, hidden=width)
    build_cache(CacheConfig(corpora=["en-fr"], teacher=str(teacher), out=str(tmp_path / "c"), data_dir=str(data_dir),
                            dtype="fp32"), progress=False)
    cfg = small_config(tmp_path, tmp_path / "c", tiny_student, data_dir)
    with pytest.raises(TrainingError, match=f"student 32, teacher {width}. Use xwcl.map=linear"):
        train(changed(cfg, xwcl_map="none"), progress=False)
    run = train(cfg, progress=False)
    rows = metrics(run)
    assert len(rows) == 4 and all(float(r["xwcl"]) > 0 for r in rows)
    heads = load_file(str(run / "heads.safetensors"))
    assert heads["word_map.weight"].shape == (width, 32)
    torch.manual_seed(cfg.seed)
    start = tiny_model(tiny_student, width, xwcl_map="linear").word_map.weight
    assert not torch.equal(heads["word_map.weight"], start)            # trained with the student
    # The saved student reloads (trained, not the start) and evaluates like any other.
    saved = AutoModelForMaskedLM.from_pretrained(run / "student")
    assert saved.config.hidden_size == 32
    assert not torch.equal(saved.get_input_embeddings().weight,
                           AutoModelForMaskedLM.from_pretrained(tiny_student).get_input_embeddings().weight)
    from click.testing import CliRunner

    from mmkd.cli import main
    r = CliRunner().invoke(main, ["eval", "xnli", "--model", str(run / "student"), "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "xnli" / "dev-en.tsv"), "--languages", "fr",
                                  "--max-train-examples", "32", "--max-eval-examples", "16", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    result = json.loads((run / "student" / "eval" / "xnli" / "results.json").read_text())
    assert result["languages"] == ["fr"] and 0 <= result["summary"]["fr"]["mean"] <= 100
    torch.manual_seed(0)
    model = tiny_model(tiny_student, width, xwcl_map="linear").eval()
    online = dataclasses.replace(cfg, cache=[], online_teacher=str(teacher), corpora=["en-fr"])
    a, b = losses_of_step(cfg, model), losses_of_step(online, model)
    assert a["xwcl"] == pytest.approx(b["xwcl"], rel=1e-5)
    # Same width: no map unless asked (the paper's dot product).
    same = train(small_config(tmp_path / "same", cache_root, tiny_student, data_dir, max_steps=1), progress=False)
    assert "word_map.weight" not in load_file(str(same / "heads.safetensors"))
    asked = train(small_config(tmp_path / "asked", cache_root, tiny_student, data_dir, max_steps=1, xwcl_map="linear"),
                  progress=False)
    assert load_file(str(asked / "heads.safetensors"))["word_map.weight"].shape == (32, 32)


def test_param_groups_give_every_fresh_head_the_head_lr(tiny_student):
    from mmkd.optim import param_groups

    model = tiny_model(tiny_student)
    groups = param_groups(model, 0.01, lr=2e-5, head_lr=1e-3)
    by_id = {id(p): g for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    heads = {n for n, p in names.items() if by_id[id(p)]["name"] == "heads"}
    # The objectives' heads and the MLM head's transform and output bias learn at the head lr ...
    assert {"senta_projector.0.weight", "struca_predictor.2.bias", "teacher_senta_projector.0.weight",
            "student.cls.predictions.transform.dense.weight", "student.cls.predictions.bias"} <= heads
    # ... the encoder, and the MLM decoder tied to its word embeddings, at the encoder's.
    encoder = {n for n in names if n.startswith("student.bert.")}
    assert encoder and not encoder & heads and all(by_id[id(names[n])]["lr"] == 2e-5 for n in encoder)
    assert all(by_id[id(names[n])]["lr"] == 1e-3 for n in heads)
    assert model.student.get_output_embeddings().weight is model.student.bert.embeddings.word_embeddings.weight
    assert all(by_id[id(p)]["weight_decay"] == 0.0 for n, p in names.items() if n.endswith("bias"))
    # No head lr: the paper's one lr for everything.
    assert {g["lr"] for g in param_groups(model, 0.01, lr=2e-5)} == {2e-5}


def test_the_head_phase_runs_the_encoder_without_gradients(tiny_student):
    model = tiny_model(tiny_student)
    batch = tiny_batch(tiny_student)
    out = model(batch, objs.names(), frozen_encoder=True)
    sum(model.terms[o].loss(out, lambda t: t) for o in objs.names()).backward()
    for name, p in model.named_parameters():
        if name.startswith("student.bert.") and name != "student.bert.embeddings.word_embeddings.weight":
            assert p.grad is None, name                              # nothing flowed into the encoder
    # ... but for the MLM decoder, which is the word-embedding matrix (the trainer drops that gradient).
    for name in ("senta_projector.0.weight", "struca_predictor.0.weight", "student.cls.predictions.bias",
                 "student.cls.predictions.transform.dense.weight"):
        assert dict(model.named_parameters())[name].grad is not None, name
    assert torch.is_grad_enabled()


def test_unigram_log_probs_by_hand(tiny_student):
    from mmkd.objectives.tlm import unigram_log_probs

    tok = AutoTokenizer.from_pretrained(tiny_student)
    texts = ["the the report", "report the"]
    the, report = tok("the", add_special_tokens=False)["input_ids"], tok("report", add_special_tokens=False)["input_ids"]
    assert len(the) == 1 and len(report) == 1
    rows = len(tok) + 3
    got = unigram_log_probs(tok, texts, rows, smoothing=0.5)
    total = 3 + 2 + 0.5 * rows                # 3 x "the", 2 x "report", every row smoothed (specials zeroed first)
    assert got[the[0]] == pytest.approx(np.log(3.5 / total))
    assert got[report[0]] == pytest.approx(np.log(2.5 / total))
    assert got[tok.cls_token_id] == pytest.approx(np.log(0.5 / total)) and got[rows - 1] == got[tok.cls_token_id]
    assert np.exp(got).sum() == pytest.approx(1.0)


def test_sentence_objectives_can_use_mean_pooling(tiny_student):
    """student_vector mean: SentA/StrucA's heads are fed the mean of the student's last hidden states
    over the sentence's tokens (what retrieval measures), not its [CLS]."""
    from mmkd.objectives.sentence import sentence_vector

    batch = tiny_batch(tiny_student)
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert sentence_vector(hidden, mask, "cls").tolist() == [[0, 1], [6, 7]]
    assert sentence_vector(hidden, mask, "mean").tolist() == [[1, 2], [8, 9]]
    torch.manual_seed(0)
    cls_model = tiny_model(tiny_student)
    torch.manual_seed(0)
    mean_model = tiny_model(tiny_student, senta={"student_vector": "mean"})
    cls_model.eval(), mean_model.eval()
    a, b = cls_model(batch, ("senta", "struca")), mean_model(batch, ("senta", "struca"))
    assert torch.equal(a["struca"]["student"], b["struca"]["student"])          # StrucA kept its [CLS]
    assert not torch.allclose(a["senta"]["student"], b["senta"]["student"])
    with torch.no_grad():
        mine = batch.inputs["sentence"]
        h = mean_model.encoder(input_ids=mine.input_ids, attention_mask=mine.attention_mask,
                               token_type_ids=mine.token_type_ids).last_hidden_state
        m = mine.attention_mask[..., None].float()
        want = mean_model.senta_predictor(mean_model.senta_projector((h * m).sum(1) / m.sum(1)))
    assert torch.allclose(b["senta"]["student"], want, atol=1e-6)
