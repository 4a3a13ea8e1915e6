"""The cache is the one artifact between the stages. A cached run needs the
cache and the student, nothing else; the reader side imports none of stage one."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner

from mmkd.cache import CacheConfig, build_cache
from mmkd.objectives import HeadSettings
from mmkd.cli import main
from mmkd.corpus import CorpusConfig, prepare_corpus
from mmkd.errors import CacheError
from mmkd.features import SourceError
from mmkd.trainer import TrainConfig, train

from conftest import make_format_1, make_format_2


def losses(run: Path) -> list[tuple[str, ...]]:
    with open(run / "metrics.csv") as f:
        return [tuple(r[k] for k in ("loss", "tlm", "xwcl", "senta", "struca")) for r in csv.DictReader(f)]


@pytest.fixture
def own_cache(tmp_path, tiny_teacher, shared):
    """A corpus and its cache in this test's folder, so the test may delete and move them."""
    data = tmp_path / "data"
    prepare_corpus(CorpusConfig(pair="en-es", data_dir=str(data), max_pairs=120, min_tokens=3,
                                tsv=str(shared / "parallel/tatoeba_challenge/eng-spa.tsv")), progress=False)
    build_cache(CacheConfig(corpora=["en-es"], teacher=tiny_teacher, out=str(tmp_path / "cache"), data_dir=str(data),
                            dtype="fp32", shard_size=50), progress=False)
    return tmp_path / "cache", data


def cfg(tmp_path, cache, student, name, **kw) -> TrainConfig:
    return TrainConfig(cache=[str(cache)], student=student, out=str(tmp_path / name), batch_size=6, max_steps=3,
                       lr=1e-3, checkpoint_every=100, num_workers=0, log_with="none", heads=HeadSettings(hidden=32, out=16),
                       data_dir=str(tmp_path / "no-such-data-dir"), **kw)


def test_a_cache_alone_trains_moved_without_its_corpus_or_in_memory(tmp_path, own_cache, tiny_student):
    cache, data = own_cache
    manifest = json.loads((cache / "en-es" / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and "path" not in manifest["corpus"]
    want = losses(train(cfg(tmp_path, cache, tiny_student, "here"), progress=False))
    shutil.rmtree(data)                                             # the corpora are gone
    moved = tmp_path / "elsewhere" / "c"
    shutil.move(cache, moved)                                       # and the cache is somewhere else
    assert losses(train(cfg(tmp_path, moved, tiny_student, "moved"), progress=False)) == want
    mem = fsspec.filesystem("memory")                               # and behind an fsspec URL
    for path in moved.rglob("*"):
        if path.is_file() and "verified" not in path.parts:
            with mem.open(f"/boundary-test/{path.relative_to(moved)}", "wb") as f:
                f.write(path.read_bytes())
    assert losses(train(cfg(tmp_path, "memory://boundary-test", tiny_student, "memory"), progress=False)) == want


def test_the_cache_holds_the_pairs_text(own_cache):
    from mmkd.cache import TeacherCache
    from mmkd.corpus import open_corpus

    cache, data = own_cache
    reader, corpus = TeacherCache(str(cache / "en-es")), open_corpus("en-es", str(data))
    ids = [0, 49, 50, 119, 3]
    assert reader.texts(ids) == corpus.rows(ids)


def test_corpus_options_with_a_cache_are_refused(tmp_path, own_cache, tiny_student):
    cache, _ = own_cache
    with pytest.raises(SourceError, match="--corpus is for --online-teacher: a teacher cache holds the pairs' text"):
        train(dataclasses.replace(cfg(tmp_path, cache, tiny_student, "r"), corpora=["en-es"]), progress=False)


def test_a_format_1_cache_is_refused_then_upgraded(tmp_path, own_cache, tiny_student, shared):
    cache, data = own_cache
    want = losses(train(cfg(tmp_path, cache, tiny_student, "v2"), progress=False))
    shutil.rmtree(cache / "en-es" / "verified")
    make_format_1(cache / "en-es")
    with pytest.raises(CacheError, match=r"cache format version 1 holds no text.*mmkd cache upgrade .*--data-dir DIR"):
        train(cfg(tmp_path, cache, tiny_student, "v1"), progress=False)
    # The corpus must be the one the cache was made from.
    other = tmp_path / "other"
    prepare_corpus(CorpusConfig(pair="en-es", data_dir=str(other), max_pairs=100, min_tokens=3,
                                tsv=str(shared / "parallel/tatoeba_challenge/eng-spa.tsv")), progress=False)
    r = CliRunner().invoke(main, ["cache", "upgrade", str(cache / "en-es"), "--data-dir", str(other)])
    assert r.exit_code == 2 and "give the corpus it was made from" in r.output
    r = CliRunner().invoke(main, ["cache", "upgrade", str(cache / "en-es"), "--data-dir", str(data)])
    assert r.exit_code == 0 and "upgraded to format 2" in r.output and "upgraded to format 3" in r.output, r.output
    assert losses(train(cfg(tmp_path, cache, tiny_student, "upgraded"), progress=False)) == want
    r = CliRunner().invoke(main, ["cache", "upgrade", str(cache / "en-es"), "--data-dir", str(data)])
    assert "already format 3" in r.output
    assert CliRunner().invoke(main, ["cache", "verify", str(cache / "en-es"), "-k", "0"]).exit_code == 0


def test_stage_two_imports_no_stage_one_code():
    """Training (the reader, the features, the loop) imports neither the writer, the teacher nor the
    corpus code: a fresh interpreter shows what `import mmkd.trainer` loads."""
    code = ("import sys, mmkd.cache, mmkd.cache.reader, mmkd.features, mmkd.trainer; "
            "print([m for m in ('mmkd.cache.writer', 'mmkd.teacher', 'mmkd.corpus', 'mmkd.corpus_sources', "
            "'mmkd.download') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_the_teacher_mean_vector_and_its_upgrade_from_format_2(tmp_path, own_cache, tiny_student, tiny_teacher):
    """Format 3 stores the teacher's mean pooling (worked out here from the teacher's own hidden states);
    `senta.teacher_vector=mean` trains from it, is refused on a format-2 cache naming the upgrade, and
    `cache upgrade` re-runs the teacher to give the same vectors."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from mmkd.cache import TeacherCache
    from mmkd.config import TrainingError
    from mmkd.words import split_words

    cache, _ = own_cache
    reader = TeacherCache(str(cache / "en-es"))
    ids = [0, 7, 60]
    batch = reader.get(ids)
    english, _ = reader.texts(ids)
    model, tok = AutoModel.from_pretrained(tiny_teacher).eval(), AutoTokenizer.from_pretrained(tiny_teacher)
    for b, text in enumerate(english):
        enc = tok(split_words(text), is_split_into_words=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]
        want = hidden.mean(0).numpy()                     # every token, [CLS] and [SEP] included
        assert np.allclose(batch.mean[b].numpy(), want, atol=1e-5)
        assert np.allclose(batch.cls[b].numpy(), hidden[0].numpy(), atol=1e-5)
    mean_run = cfg(tmp_path, cache, tiny_student, "mean", without=["tlm", "xwcl"])
    mean_run.senta.teacher_vector = "mean"
    mean_run.struca.teacher_vector = "mean"
    cls_run = cfg(tmp_path, cache, tiny_student, "cls", without=["tlm", "xwcl"])
    mean_losses = losses(train(mean_run, progress=False))
    assert mean_losses != losses(train(cls_run, progress=False))
    old = tmp_path / "old"
    shutil.copytree(cache / "en-es", old, ignore=shutil.ignore_patterns("verified"))
    make_format_2(old)
    assert TeacherCache(str(old)).get(ids).mean is None            # format 2 still reads
    with pytest.raises(TrainingError, match=r"senta.teacher_vector=mean: .*old is format 2.*mmkd cache upgrade"):
        train(dataclasses.replace(mean_run, cache=[str(old)], out=str(tmp_path / "refused")), progress=False)
    r = CliRunner().invoke(main, ["cache", "upgrade", str(old)])    # the teacher the manifest names
    assert r.exit_code == 0 and "upgraded to format 3" in r.output, r.output
    again = TeacherCache(str(old))
    assert np.allclose(again.get(ids).mean.numpy(), batch.mean.numpy(), atol=1e-5)
    assert CliRunner().invoke(main, ["cache", "verify", str(old), "-k", "0"]).exit_code == 0
    assert losses(train(dataclasses.replace(mean_run, cache=[str(old)], out=str(tmp_path / "upgraded")),
                        progress=False)) == pytest.approx(mean_losses, rel=1e-5)
