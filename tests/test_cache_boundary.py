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
from mmkd.cli import main
from mmkd.corpus import CorpusConfig, prepare_corpus
from mmkd.errors import CacheError
from mmkd.features import SourceError
from mmkd.train import TrainConfig, train

from conftest import make_format_1


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
                       lr=1e-3, checkpoint_every=100, num_workers=0, log_with="none", head_hidden=32, head_out=16,
                       data_dir=str(tmp_path / "no-such-data-dir"), **kw)


def test_a_cache_alone_trains_moved_without_its_corpus_or_in_memory(tmp_path, own_cache, tiny_student):
    cache, data = own_cache
    manifest = json.loads((cache / "en-es" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and "path" not in manifest["corpus"]
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
    assert r.exit_code == 0 and "upgraded to format 2" in r.output, r.output
    assert losses(train(cfg(tmp_path, cache, tiny_student, "upgraded"), progress=False)) == want
    r = CliRunner().invoke(main, ["cache", "upgrade", str(cache / "en-es"), "--data-dir", str(data)])
    assert "already format 2" in r.output
    assert CliRunner().invoke(main, ["cache", "verify", str(cache / "en-es"), "-k", "0"]).exit_code == 0


def test_stage_two_imports_no_stage_one_code():
    """Training (the reader, the features, the loop) imports neither the writer, the teacher nor the
    corpus code: a fresh interpreter shows what `import mmkd.train` loads."""
    code = ("import sys, mmkd.cache, mmkd.cache.reader, mmkd.features, mmkd.train; "
            "print([m for m in ('mmkd.cache.writer', 'mmkd.teacher', 'mmkd.corpus', 'mmkd.corpus_sources', "
            "'mmkd.download') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
