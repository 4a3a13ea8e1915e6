"""Models built from PyPI packages (mmkd/supply/): checked on every use, a damaged record or a full disk one
line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


def _built_folder(tmp_path, tiny_student) -> Path:
    """A model folder as `mmkd models build` leaves it: its files and their checksums in mmkd-model.json."""
    from mmkd.supply import PROVENANCE, file_sha256

    folder = tmp_path / "built"
    shutil.copytree(tiny_student, folder)
    (folder / "1_Pooling").mkdir()                   # as sentence-transformers folders have
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / PROVENANCE).write_text(json.dumps({"name": "built", "original": "org/tiny", "licence": "MIT",
                                                 "packages": [{"name": "tiny", "version": "1"}], "files": files}))
    return folder


def test_a_built_model_folder_is_checked_on_every_use(tmp_path, tiny_student):
    from mmkd.errors import MMKDError
    from mmkd.hf import load_tokenizer

    folder = _built_folder(tmp_path, tiny_student)
    assert load_tokenizer(str(folder)) is not None and (folder / ".mmkd-verified.json").is_file()
    tok = folder / "tokenizer.json"
    tok.write_bytes(tok.read_bytes().replace(b'"[UNK]"', b'"[UNX]"', 1))
    with pytest.raises(MMKDError, match="tokenizer.json: changed since it was built"):
        load_tokenizer(str(folder))
    shutil.rmtree(folder)
    folder = _built_folder(tmp_path, tiny_student)
    (folder / "extra.bin").write_bytes(b"x")
    with pytest.raises(MMKDError, match="a file was added: extra.bin"):
        load_tokenizer(str(folder))
    shutil.rmtree(folder)
    folder = _built_folder(tmp_path, tiny_student)
    assert load_tokenizer(str(folder)) is not None     # a subfolder's files are listed, so this is no change
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    with pytest.raises(MMKDError, match="1_Pooling/config.json: changed since it was built"):
        load_tokenizer(str(folder))
    (folder / "1_Pooling" / "extra.txt").write_text("x")
    with pytest.raises(MMKDError, match="a file was added: 1_Pooling/extra.txt"):
        load_tokenizer(str(folder))


@pytest.mark.parametrize("record", ["garbage{", "[1, 2]", '{"original": null, "packages": null}',
                                    '{"original": "x", "packages": [{"name": "p", "version": "1"}]}'])
def test_a_damaged_model_record_is_one_line(tmp_path, tiny_student, record):
    from mmkd.errors import MMKDError
    from mmkd.hf import load_tokenizer
    from mmkd.supply import PROVENANCE, describe

    folder = _built_folder(tmp_path, tiny_student)
    (folder / PROVENANCE).write_text(record)
    with pytest.raises(MMKDError) as e:
        load_tokenizer(str(folder))
    assert str(e.value).startswith(str(folder / PROVENANCE)) and "rebuild it" in str(e.value), e.value
    assert "built" in describe(str(folder))          # a card still names it, without a traceback


def test_a_full_disk_while_building_a_model_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import mmkd.supply as supply
    from mmkd.errors import MMKDError
    from safetensors import SafetensorError

    def build(files, dest, bar):
        (dest / "model.safetensors").write_bytes(b"half")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")
    fake = supply.Supply("fake-model", "org/fake", "MIT", (), build, 1, "a test")
    monkeypatch.setattr(supply, "_supplies", lambda: {"fake-model": fake})
    monkeypatch.setenv("MMKD_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(MMKDError) as e:
        supply.model_folder("fake-model", progress=False)
    assert "building fake-model failed" in str(e.value) and "No space left on device" in str(e.value)
    assert "\n" not in str(e.value) and os.listdir(tmp_path / "models") == []
