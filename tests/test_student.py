"""The saved student (mmkd/student.py): the whole starting model, loadable by transformers, with its card;
never half-written."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner
from transformers import AutoConfig, AutoModel, AutoTokenizer

from mmkd.cli import main
from mmkd.tiny import make_tiny_bert
from mmkd.trainer import train

from helpers import ENV, copy_cache, one_line, small_config, train_args


def test_a_kill_during_the_final_save_leaves_no_student_folder(tmp_path, clean_cache, tiny_student, data_dir):
    """SIGKILL while the student is being written: `student/` never appears half-written."""
    cache = copy_cache(clean_cache, tmp_path)
    code = f"""
import os, signal, mmkd.student
def killed(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
mmkd.student.card_text = killed      # the card is written after the weights, inside student.tmp/
from mmkd.objectives import HeadSettings
from mmkd.trainer import TrainConfig, train
train(TrainConfig(cache=[{str(cache)!r}], student={tiny_student!r}, out={str(tmp_path / 'run')!r},
      data_dir={str(data_dir)!r}, batch_size=8, max_steps=1, num_workers=0, log_with="none", heads=HeadSettings(hidden=32,
      out=16)), progress=False)
"""
    r = subprocess.run([sys.executable, "-c", code], env=ENV)
    assert r.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "student.tmp" / "model.safetensors").is_file()   # it died mid-save
    assert not (tmp_path / "run" / "student").exists()


def test_a_full_disk_while_saving_the_student_is_one_line_and_leaves_no_tmp(tmp_path, cache, tiny_student, data_dir,
                                                                            monkeypatch):
    import mmkd.student
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space "
                              "left on device\" })")
    monkeypatch.setattr(mmkd.student, "save_model", full)          # the student module's own name for it
    run = tmp_path / "run"
    r = CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir))
    one_line(r, "student.tmp: the trained student could not be saved", "No space left on device", "--resume")
    assert not (run / "student.tmp").exists() and not (run / "student").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000002"


def test_trained_student_loads_with_automodel(tmp_path, cache_root, tiny_student, data_dir):
    run = train(small_config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2), progress=False)
    student = AutoModel.from_pretrained(run / "student")
    tok = AutoTokenizer.from_pretrained(run / "student")
    with torch.no_grad():
        out = student(**tok(["A sentence."], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 32
    assert (run / "student" / "mmkd_run.json").is_file()
    assert sorted(p.name for p in (run / "student").glob("cache-manifest-*.json")) == [
        "cache-manifest-en-de.json", "cache-manifest-en-fr.json"]
    before = AutoModel.from_pretrained(tiny_student)
    name = "embeddings.word_embeddings.weight"
    assert not torch.equal(dict(student.named_parameters())[name], dict(before.named_parameters())[name])
    assert AutoConfig.from_pretrained(run / "student").hidden_size == 32


def test_saved_student_is_the_whole_starting_model(tmp_path, cache_root, tiny_student, data_dir):
    """The tiny student is saved like mBERT (BertForPreTraining). MMKD trains its encoder and MLM
    head; the pooler and the NSP head must come back unchanged, so a sequence classifier built
    from the student starts from the same pooler as one built from the starting model."""
    from safetensors.torch import load_file
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, BertForPreTraining

    run = train(small_config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2), progress=False)
    start = BertForPreTraining.from_pretrained(tiny_student)
    saved = load_file(str(run / "student" / "model.safetensors"))
    for key in ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.seq_relationship.weight",
                "cls.seq_relationship.bias"):
        assert torch.equal(saved[key], start.state_dict()[key]), key
    assert not torch.equal(saved["bert.encoder.layer.0.attention.self.query.weight"],
                           start.state_dict()["bert.encoder.layer.0.attention.self.query.weight"])
    clf, info = AutoModelForSequenceClassification.from_pretrained(run / "student", num_labels=3,
                                                                   output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(clf.bert.pooler.dense.weight, start.bert.pooler.dense.weight)
    base, info = AutoModel.from_pretrained(run / "student", output_loading_info=True)
    assert not info["missing_keys"] and torch.equal(base.pooler.dense.bias, start.bert.pooler.dense.bias)
    _, info = AutoModelForQuestionAnswering.from_pretrained(run / "student", output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["qa_outputs.bias", "qa_outputs.weight"]
    assert not (run / "student.tmp").exists()


def test_bare_encoder_start_keeps_its_pooler_under_the_model_prefix(tmp_path, cache_root, data_dir, multilingual_texts):
    """A student that starts from a bare encoder checkpoint (BertModel, like all-MiniLM-L6-v2)."""
    from safetensors.torch import load_file

    bare = make_tiny_bert(multilingual_texts[:3000], tmp_path / "bare", 2000, seed=4)
    run = train(small_config(tmp_path, cache_root, str(bare), data_dir, max_steps=1, without=["xwcl"]), progress=False)
    saved = load_file(str(run / "student" / "model.safetensors"))
    start = AutoModel.from_pretrained(bare)
    assert torch.equal(saved["bert.pooler.dense.weight"], start.pooler.dense.weight)
    assert not any(k.startswith("pooler.") for k in saved)


def test_student_folder_has_a_model_card_that_eval_updates(tmp_path, cache_root, tiny_student, data_dir, shared):
    from click.testing import CliRunner

    from mmkd.cli import main

    run = train(small_config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2), progress=False)
    card = (run / "student" / "README.md").read_text()
    front = card.split("---")[1]
    assert "language:\n- en\n- de\n- fr\n" in front and "library_name: transformers" in front
    assert "base_model" not in front            # a local starting model is named in the body, not as a hub id
    name = Path(tiny_student).name
    assert f"| starting model | a local model folder named '{name}' |" in card
    assert tiny_student not in card and str(cache_root) not in card   # never a local absolute path
    assert "| steps | 2 of global batch 8 on 1 process(es)" in card
    assert "| en-fr | en-fr | 300 |" in card and "Not evaluated yet" in card
    r = CliRunner().invoke(main, ["eval", "retrieval", "--model", str(run / "student"),
                                  "--pairs", f"tatoeba-fr={shared / 'parallel/tatoeba_challenge/eng-fra.tsv'}",
                                  "--max-eval-examples", "50"])
    assert r.exit_code == 0, r.output
    card = (run / "student" / "README.md").read_text()
    assert "Not evaluated yet" not in card and "**retrieval**" in card and "| tatoeba-fr | avg |" in card
