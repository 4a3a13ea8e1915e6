"""`mmkd cache upgrade` (mmkd/cache/upgrade.py): older formats refused naming it, upgraded in place
after a verify, never through a link or under a writer's lock."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from mmkd.cli import main
from mmkd.corpus import CorpusConfig, prepare_corpus
from mmkd.errors import CacheError
from mmkd.trainer import train

from helpers import cached_run, folder_snapshot, fresh, losses, make_format_1, make_format_2, one_line


def test_a_format_1_cache_is_refused_then_upgraded(tmp_path, own_cache, tiny_student, shared):
    cache, data = own_cache
    want = losses(train(cached_run(tmp_path, cache, tiny_student, "v2"), progress=False))
    shutil.rmtree(cache / "en-es" / "verified")
    make_format_1(cache / "en-es")
    with pytest.raises(CacheError, match=r"cache format version 1 holds no text.*mmkd cache upgrade .*--data-dir DIR"):
        train(cached_run(tmp_path, cache, tiny_student, "v1"), progress=False)
    # The corpus must be the one the cache was made from.
    other = tmp_path / "other"
    prepare_corpus(CorpusConfig(pair="en-es", data_dir=str(other), max_pairs=100, min_tokens=3,
                                tsv=str(shared / "parallel/tatoeba_challenge/eng-spa.tsv")), progress=False)
    r = CliRunner().invoke(main, ["cache", "upgrade", str(cache / "en-es"), "--data-dir", str(other)])
    assert r.exit_code == 2 and "give the corpus it was made from" in r.output
    r = CliRunner().invoke(main, ["cache", "upgrade", str(cache / "en-es"), "--data-dir", str(data)])
    assert r.exit_code == 0 and "upgraded to format 2" in r.output and "upgraded to format 3" in r.output, r.output
    assert losses(train(cached_run(tmp_path, cache, tiny_student, "upgraded"), progress=False)) == want
    r = CliRunner().invoke(main, ["cache", "upgrade", str(cache / "en-es"), "--data-dir", str(data)])
    assert "already format 3" in r.output
    assert CliRunner().invoke(main, ["cache", "verify", str(cache / "en-es"), "-k", "0"]).exit_code == 0


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
    mean_run = cached_run(tmp_path, cache, tiny_student, "mean", without=["tlm", "xwcl"])
    mean_run.senta.teacher_vector = "mean"
    mean_run.struca.teacher_vector = "mean"
    cls_run = cached_run(tmp_path, cache, tiny_student, "cls", without=["tlm", "xwcl"])
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


def test_cache_upgrade_refuses_corrupt_data_and_stays_inside_the_cache(tmp_path, cache, data_dir):
    own = fresh(cache, tmp_path) / "en-fr"
    make_format_1(own)
    meta = own / "shards" / "00001" / "meta.arrow"
    data = bytearray(meta.read_bytes())
    data[len(data) // 2] ^= 0x01
    meta.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["cache", "upgrade", str(own), "--data-dir", str(data_dir)])
    one_line(r, "shard 00001: file meta.arrow does not match its checksum")
    assert json.loads((own / "manifest.json").read_text())["format_version"] == 1     # nothing vouched for
    manifest = json.loads((own / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../../../outside"
    (own / "manifest.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(main, ["cache", "upgrade", str(own), "--data-dir", str(data_dir)])
    one_line(r, "refused")
    assert not (tmp_path / "outside").exists() and not any(tmp_path.parent.glob("outside"))


def test_cache_upgrade_never_writes_through_a_shard_link_outside(tmp_path, cache, data_dir):
    own = fresh(cache, tmp_path)
    make_format_1(own / "en-fr")
    outside = tmp_path / "outside"
    shutil.move(own / "en-fr" / "shards" / "00000", outside)
    (own / "en-fr" / "shards" / "00000").symlink_to(outside)
    before = folder_snapshot(outside)
    r = CliRunner().invoke(main, ["cache", "upgrade", str(own / "en-fr"), "--data-dir", str(data_dir)])
    one_line(r, "shard 00000 is a link to", "outside the cache")
    assert folder_snapshot(outside) == before
    assert json.loads((own / "en-fr" / "manifest.json").read_text())["format_version"] == 1


def test_cache_upgrade_is_refused_while_a_writer_holds_the_lock(tmp_path, cache, data_dir):
    import fcntl

    own = fresh(cache, tmp_path)
    make_format_1(own / "en-fr")
    before = folder_snapshot(own / "en-fr")
    fd = os.open(own / "en-fr" / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)             # a cache-teacher writing there
        r = CliRunner().invoke(main, ["cache", "upgrade", str(own / "en-fr"), "--data-dir", str(data_dir)])
        one_line(r, "is being written by", "mmkd cache upgrade")
    finally:
        os.close(fd)
    assert folder_snapshot(own / "en-fr") == {**before, "lock": folder_snapshot(own / "en-fr")["lock"]}
    assert json.loads((own / "en-fr" / "manifest.json").read_text())["format_version"] == 1
