"""Loading models and tokenizers (mmkd/hf.py): a damaged or missing file is one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmkd.cli import main

from helpers import one_line


@pytest.mark.parametrize("size", [0, 100])
def test_a_truncated_or_empty_weights_file_is_one_line(tmp_path, tiny_student, shared, size):
    model = tmp_path / "model"
    shutil.copytree(tiny_student, model)
    os.truncate(model / "model.safetensors", size)
    r = CliRunner().invoke(main, ["eval", "retrieval", "--model", str(model), "--pairs",
                                  str(shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv")])
    one_line(r, "without a loadable model", "copy the model folder again")


def test_a_model_folder_without_tokenizer_files_is_refused(tmp_path, tiny_student, tiny_teacher, data_dir, shared):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_student) / name, bare / name)
    r = CliRunner().invoke(main, ["eval", "xnli", "--model", str(bare), "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "xnli" / "dev-en.tsv"), "--languages", "fr",
                                  "--max-train-examples", "16", "--max-eval-examples", "8", "--epochs", "1"])
    one_line(r, "tokenizer", "files")
    teacher = tmp_path / "bare-teacher"
    teacher.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_teacher) / name, teacher / name)
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", str(teacher), "--out",
                                  str(tmp_path / "c"), "--data-dir", str(data_dir), "--quiet"])
    one_line(r, "tokenizer")
    assert not (tmp_path / "c").exists()


def test_a_model_object_where_a_name_is_expected_is_one_line(tiny_student):
    from transformers import AutoModel

    from mmkd.errors import MMKDError
    from mmkd.hf import load, load_tokenizer

    model = AutoModel.from_pretrained(tiny_student)
    for call in (lambda: load_tokenizer(model), lambda: load(AutoModel, model, "encoder")):
        with pytest.raises(MMKDError, match="expected a model name or folder, got BertModel.*save_pretrained"):
            call()
