"""Students of other families train, save, reload and evaluate, each with
its own tokenizer conventions (special tokens, pair template, token types)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from families import FAMILIES
from mmkd.cache import CacheConfig, build_cache
from mmkd.objectives import HeadSettings
from mmkd.cli import main
from mmkd.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def family_cache(tmp_path_factory, tiny_teacher, data_dir):
    out = tmp_path_factory.mktemp("family-cache") / "cache"
    build_cache(CacheConfig(corpora=["en-fr", "en-de"], teacher=tiny_teacher, out=str(out), data_dir=str(data_dir),
                            dtype="fp32"), progress=False)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_student_family_trains_saves_reloads_and_evaluates(tmp_path, family, family_cache, multilingual_texts, shared):
    student = FAMILIES[family](multilingual_texts, tmp_path / "student")
    run = train(TrainConfig(cache=[str(family_cache)], student=str(student), out=str(tmp_path / "run"), batch_size=8,
                            max_steps=3, lr=1e-3, num_workers=0, log_with="none", heads=HeadSettings(hidden=32, out=16),
                            checkpoint_every=100), progress=False)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        assert all(float(values[o]) > 0 for o in ("tlm", "xwcl", "senta", "struca"))
    saved = AutoModelForMaskedLM.from_pretrained(run / "student")
    assert saved.config.model_type == family
    start = AutoModelForMaskedLM.from_pretrained(student)
    emb = saved.get_input_embeddings().weight
    assert not torch.equal(emb, start.get_input_embeddings().weight)
    AutoModelForSequenceClassification.from_pretrained(run / "student", num_labels=3)
    r = CliRunner().invoke(main, ["eval", "xnli", "--model", str(run / "student"), "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "xnli" / "dev-en.tsv"), "--languages", "de,fr",
                                  "--max-train-examples", "32", "--max-eval-examples", "16", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "student" / "eval" / "xnli" / "results.json").read_text())["languages"] == ["de", "fr"]


def test_a_tokenizer_without_word_ids_is_refused_saying_what_to_use():
    from types import SimpleNamespace

    from mmkd.errors import MMKDError
    from mmkd.words import require_fast

    with pytest.raises(MMKDError, match=r"'slow-one' is not a fast tokenizer; .* tokenizer.json"):
        require_fast(SimpleNamespace(is_fast=False, name_or_path="slow-one"))


def test_a_student_with_no_masked_lm_head_is_one_line(tmp_path, family_cache, tiny_student):
    """A decoder-only checkpoint (GPT-2) has no masked-LM class: refused with one line, exit 2."""
    import shutil

    from transformers import GPT2Config, GPT2Model

    folder = tmp_path / "gpt2"
    GPT2Model(GPT2Config(vocab_size=6000, n_embd=32, n_layer=1, n_head=2)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{tiny_student}/{name}", folder / name)
    r = CliRunner().invoke(main, ["train", "--cache", str(family_cache), "--student", str(folder), "--out",
                                  str(tmp_path / "r"), "--batch-size", "8", "--max-steps", "1", "--num-workers", "0",
                                  "--quiet"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith(f"error: student '{folder}' is a folder without a loadable model")
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("tlm", [True, False])
def test_what_is_said_of_a_student_without_an_mlm_head_follows_tlm(tmp_path, family_cache, tiny_teacher, capsys, tlm):
    """A student saved without an MLM head (an encoder like multilingual-e5-small) gets a new one: trained
    when TLM is on, and said to be untrained when TLM is off. After training, the saved student has the
    head, so it reloads with nothing missing (the unused pooler is kept as it was)."""
    from mmkd import console

    console._said.clear()
    without = [] if tlm else ["tlm"]
    run = train(TrainConfig(cache=[str(family_cache)], student=tiny_teacher, out=str(tmp_path / "run"), batch_size=8,
                            max_steps=1, num_workers=0, log_with="none", without=without), progress=False)
    err = capsys.readouterr().err
    trained = "has no MLM head; TLM trains a new one (started as tlm.fresh_head says)"
    untrained = "has no MLM head; TLM is off, so the saved student carries an untrained one"
    assert (trained in err) is tlm and (untrained in err) is not tlm, err
    _, info = AutoModelForMaskedLM.from_pretrained(run / "student", output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) == {"bert.pooler.dense.bias",
                                                                         "bert.pooler.dense.weight"}
