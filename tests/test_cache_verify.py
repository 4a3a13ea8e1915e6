"""Verification (mmkd/cache/integrity.py, mmkd/cache/verify.py): nothing changed, lying, linked out or
non-finite is trained on; each refusal is one line naming cache, shard and file."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmkd.cache.verify import verify_cache
from mmkd.cli import main
from mmkd.errors import MMKDError
from mmkd.trainer import TrainingError, train

from helpers import build, copy_cache, fresh, one_line, one_line_error, short_run, train_args


def _edit_manifest(own: Path, edit) -> None:
    path = own / "en-fr" / "manifest.json"
    m = json.loads(path.read_text())
    m = edit(m)
    path.write_text(json.dumps(m))


def test_flipped_byte_is_caught_by_verify_naming_the_shard(tmp_path, tiny_teacher, data_dir):
    out = build(tmp_path, tiny_teacher, data_dir) / "en-fr"
    assert verify_cache(str(out), k=4, progress=False).ok
    target = out / "shards" / "00003" / "words" / "c" / "0" / "0"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    report = verify_cache(str(out), k=4, progress=False)
    assert report.problems == ["shard 00003: file words/c/0/0 checksum mismatch (corrupted)"]
    r = CliRunner().invoke(main, ["cache", "verify", str(out)])
    assert r.exit_code == 1 and "shard 00003" in r.output


def test_wrong_stored_values_are_caught_by_the_teacher_rerun(tmp_path, tiny_teacher, data_dir):
    """Checksums can be recomputed by whoever changed the data; the re-run cannot be fooled."""
    out = build(tmp_path, tiny_teacher, data_dir, dtype="fp32") / "en-fr"
    import zarr
    arr = zarr.open_array(str(out / "shards" / "00000" / "cls"), mode="r+")
    arr[:] = arr[:] * 1.5
    report = verify_cache(str(out), k=0, progress=False)
    assert not report.ok  # checksums catch it first
    # Re-record checksums as a careless tool would, then only the teacher re-run finds it.
    from mmkd.cache.format import dumps, sha256_file
    import fsspec
    fs = fsspec.filesystem("file")
    manifest = json.loads((out / "manifest.json").read_text())
    rec = manifest["shards"][0]
    rec["sha256"]["cls/c/0/0"] = sha256_file(fs, str(out / "shards/00000/cls/c/0/0"))
    (out / "shards/00000/shard.json").write_text(dumps(rec))
    (out / "manifest.json").write_text(dumps(manifest))
    report = verify_cache(str(out), k=300, progress=False)
    assert report.problems and all(p.startswith("shard 00000 sentence pair_id=") for p in report.problems)
    assert len(report.problems) == 64


@pytest.mark.parametrize("name", ["../../../../../../etc/passwd", "/dev/zero", "words/../../00001/cls/c/0/0"])
def test_verify_never_reads_outside_the_cache(tmp_path, clean_cache, name):
    cache = copy_cache(clean_cache, tmp_path) / "en-fr"
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"][0]["sha256"][name] = "0" * 64
    (cache / "manifest.json").write_text(json.dumps(manifest))
    (cache / "shards" / "00000" / "shard.json").write_text(json.dumps(manifest["shards"][0]))
    started = time.time()
    report = verify_cache(str(cache), k=0, progress=False)
    assert time.time() - started < 30                         # /dev/zero is never opened
    assert f"shards[0].sha256: file name {name!r} is not a path inside the shard" in " ".join(report.problems)


def test_verify_refuses_a_link_or_device_inside_a_shard(tmp_path, clean_cache):
    cache = copy_cache(clean_cache, tmp_path) / "en-fr"
    target = cache / "shards" / "00000" / "offsets" / "c" / "0"
    target.unlink()
    os.symlink("/dev/zero", target)
    report = verify_cache(str(cache), k=0, progress=False)
    assert any("offsets/c/0" in p and ("outside the shard" in p or "not a regular file" in p) for p in report.problems)


@pytest.mark.parametrize("target", ["words/c/0/0", "cls/c/0/0", "offsets/c/0", "meta.arrow"])
def test_training_refuses_a_corrupt_shard_naming_it(tmp_path, clean_cache, tiny_student, data_dir, target):
    cache = copy_cache(clean_cache, tmp_path)
    path = cache / "en-fr" / "shards" / "00002" / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match=rf"shard 00002: file {target} does not match its checksum"):
        train(short_run(tmp_path, cache / "en-fr", tiny_student, data_dir), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_verification_is_remembered_and_redone_when_a_file_changes(tmp_path, clean_cache, tiny_student, data_dir,
                                                                   monkeypatch):
    from mmkd.cache import integrity

    cache = copy_cache(clean_cache, tmp_path) / "en-fr"
    hashed = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda fs, p: hashed.append(p) or real(fs, p))
    train(short_run(tmp_path, cache, tiny_student, data_dir, max_steps=1), progress=False)
    n_files = sum(len(s["sha256"]) for s in json.loads((cache / "manifest.json").read_text())["shards"])
    assert len(hashed) == n_files and len(list((cache / "verified").glob("*.json"))) == 5
    hashed.clear()
    train(short_run(tmp_path, cache, tiny_student, data_dir, max_steps=1, out=str(tmp_path / "run2")), progress=False)
    assert hashed == []                                        # remembered: nothing hashed again
    path = cache / "shards" / "00004" / "words" / "c" / "0" / "0"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match="shard 00004: file words/c/0/0 does not match"):
        train(short_run(tmp_path, cache, tiny_student, data_dir, max_steps=1, out=str(tmp_path / "run3")), progress=False)


def test_a_read_only_cache_keeps_its_markers_in_the_run(tmp_path, clean_cache, tiny_student, data_dir, monkeypatch):
    from mmkd.cache import integrity

    monkeypatch.setattr(integrity, "writable", lambda fs, root: False)
    cache = copy_cache(clean_cache, tmp_path) / "en-fr"
    run = train(short_run(tmp_path, cache, tiny_student, data_dir, max_steps=1), progress=False)
    assert len(list((run / "verified-cache" / "en-fr").glob("*.json"))) == 5 and not (cache / "verified").exists()


def test_a_truncated_arrow_file_is_one_line(tmp_path, clean_cache, tiny_student, data_dir):
    cache = copy_cache(clean_cache, tmp_path)
    meta = cache / "en-fr" / "shards" / "00000" / "meta.arrow"
    meta.write_bytes(meta.read_bytes()[:200])
    r = CliRunner().invoke(main, ["train", "--cache", str(cache), "--student", tiny_student, "--out",
                                  str(tmp_path / "r"), "--data-dir", str(data_dir), "--batch-size", "8", "--max-steps",
                                  "1", "--num-workers", "0", "--log-with", "none", "--no-verify", "--quiet"])
    one_line_error(r, "meta.arrow: unreadable", "shard 00000 is corrupt")


def test_a_non_finite_cache_value_is_refused_even_where_no_objective_reads_it(tmp_path, clean_cache, tiny_student,
                                                                              data_dir):
    """NaN in step 1's word vectors with the checksums re-recorded over it (verification passes); XWCL,
    the only reader of word vectors, removed: still refused, naming the shard and the pair."""
    from mmkd.cache import TeacherCache
    from mmkd.cache.format import dumps, sha256_file
    from mmkd.schedule import BalancedSchedule
    import fsspec

    cache = copy_cache(clean_cache, tmp_path)
    reader = TeacherCache(str(cache / "en-fr"))
    first = [pair for _, _, pair in BalancedSchedule([len(reader)], 8, 0).batch(0)][0]
    k, local = divmod(first, 64)
    base = cache / "en-fr" / "shards" / f"{k:05d}"
    chunk = base / "words" / "c" / "0" / "0"
    rows = np.frombuffer(chunk.read_bytes(), dtype="<f4").reshape(-1, 32).copy()
    rows[reader.shard(k).offsets[local], 3] = np.nan
    chunk.write_bytes(rows.tobytes())
    manifest = json.loads((cache / "en-fr" / "manifest.json").read_text())
    manifest["shards"][k]["sha256"]["words/c/0/0"] = sha256_file(fsspec.filesystem("file"), str(chunk))
    (cache / "en-fr" / "manifest.json").write_text(dumps(manifest))
    (base / "shard.json").write_text(dumps(manifest["shards"][k]))
    with pytest.raises(MMKDError) as e:
        train(short_run(tmp_path, cache / "en-fr", tiny_student, data_dir, without=["xwcl"]), progress=False)
    assert f"shard {k:05d}: a non-finite value (nan) in words (pair {first})" in str(e.value), e.value
    assert not (tmp_path / "run" / "student").exists()


def test_a_damaged_shard_json_is_refused_by_train(tmp_path, clean_cache, tiny_student, data_dir):
    cache = copy_cache(clean_cache, tmp_path)
    record = cache / "en-fr" / "shards" / "00001" / "shard.json"
    record.write_text(record.read_text().replace('"n_words"', '"n_wurds"'))
    r = CliRunner().invoke(main, ["train", "--cache", str(cache / "en-fr"), "--student", tiny_student, "--out",
                                  str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "8", "--head-hidden",
                                  "32", "--head-out", "16", "--num-workers", "0", "--log-with", "none", "--quiet"])
    one_line_error(r, "shard 00001: file shard.json is damaged or differs from the manifest's record")


@pytest.mark.parametrize("target", ["words/c/0/0", "offsets/c/0", "meta.arrow"])
def test_a_flipped_byte_with_its_mtime_restored_is_found(tmp_path, cache, tiny_student, data_dir, target):
    own = fresh(cache, tmp_path)
    assert CliRunner().invoke(main, train_args(own, tiny_student, tmp_path / "r1", data_dir)).exit_code == 0
    path = own / "en-fr" / "shards" / "00001" / target
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))          # `touch -r`: size and mtime as before
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    r = CliRunner().invoke(main, train_args(own, tiny_student, tmp_path / "r2", data_dir))
    one_line(r, f"shard 00001: file {target} does not match its checksum")


@pytest.mark.parametrize("edit,fragment", [
    (lambda m: {**m, "shard_size": 0}, "shard_size: 0 is below 1"),
    (lambda m: {**m, "dtype": "fp64"}, "dtype: 'fp64' is not one of"),
    (lambda m: {k: v for k, v in m.items() if k != "shards"}, "shards: missing"),
    (lambda m: {**m, "hidden_size": "32"}, "hidden_size: '32' is not int"),
    (lambda m: [], "must be a JSON object, not list"),
    (lambda m: {**m, "n_sentences": 1000000}, "n_sentences: 1000000 but the shards hold"),
    (lambda m: {**m, "shards": [{**m["shards"][0], "name": "../../../outside"}, *m["shards"][1:]]}, "shards[0].name"),
])
def test_a_manifest_that_lies_is_one_line_for_train_and_verify(tmp_path, cache, tiny_student, data_dir, edit, fragment):
    own = fresh(cache, tmp_path)
    _edit_manifest(own, edit)
    one_line(CliRunner().invoke(main, train_args(own, tiny_student, tmp_path / "r", data_dir)), fragment)
    r = CliRunner().invoke(main, ["cache", "verify", str(own / "en-fr"), "-k", "0"])
    assert r.exit_code == 1 and fragment in r.output and "Traceback" not in r.output


def test_a_shard_that_is_a_link_to_a_copy_outside_is_refused(tmp_path, cache, tiny_student, data_dir):
    own = fresh(cache, tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.move(own / "en-fr" / "shards" / "00002", outside)
    os.symlink(outside, own / "en-fr" / "shards" / "00002")
    r = CliRunner().invoke(main, ["cache", "verify", str(own / "en-fr"), "-k", "0"])
    assert r.exit_code == 1 and "shard 00002 is a link" in r.output
    one_line(CliRunner().invoke(main, train_args(own, tiny_student, tmp_path / "r", data_dir)), "outside the cache")


def test_a_chunk_dropped_from_the_checksums_then_corrupted_is_refused(tmp_path, cache, tiny_student, data_dir):
    own = fresh(cache, tmp_path)

    def drop(m):
        for where in (m["shards"][1],):
            where["sha256"].pop("cls/c/0/0")
            where["bytes"].pop("cls/c/0/0")
        return m
    _edit_manifest(own, drop)
    (own / "en-fr" / "shards" / "00001" / "shard.json").write_text(
        json.dumps(json.loads((own / "en-fr" / "manifest.json").read_text())["shards"][1]))
    chunk = own / "en-fr" / "shards" / "00001" / "cls" / "c" / "0" / "0"
    chunk.write_bytes(bytes(len(chunk.read_bytes())))
    r = CliRunner().invoke(main, ["cache", "verify", str(own / "en-fr"), "-k", "0"])
    assert r.exit_code == 1 and "cls/c/0/0 has no checksum" in r.output
    one_line(CliRunner().invoke(main, train_args(own, tiny_student, tmp_path / "r", data_dir)), "has no checksum")


@pytest.mark.parametrize("damage", ["truncate_meta", "n_words"])
def test_errors_in_loader_workers_are_one_line_naming_shard_and_file(tmp_path, cache, tiny_student, data_dir, damage):
    own = fresh(cache, tmp_path)
    if damage == "truncate_meta":
        meta = own / "en-fr" / "shards" / "00002" / "meta.arrow"
        os.truncate(meta, 500)
        fragment = "shards/00002/meta.arrow"
    else:
        def more_words(m):
            m["shards"][2]["n_words"] += 5
            m["n_words"] += 5
            return m
        _edit_manifest(own, more_words)
        fragment = "shard 00002 is corrupt"
    r = CliRunner().invoke(main, train_args(own, tiny_student, tmp_path / "r", data_dir, "--no-verify",
                                            "--num-workers", "2", "--max-steps", "12"))
    one_line(r, fragment)
