"""A hostile user's cases: nothing mmkd did not make is deleted, one writer holds a lock, changed or
lying data is never trained on, and every bad input is one line, not a traceback. Each test is one
of the cases docs/failures.md promises."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmkd.cli import main

from conftest import copy_cache, make_format_1

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def one_line(r, *fragments):
    assert r.exit_code in (1, 2), r.output
    text = r.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1 and text.startswith(("error: ", "FAIL ")), text
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture(scope="module")
def cache(clean_cache) -> Path:
    return clean_cache


def fresh(cache: Path, tmp_path: Path) -> Path:
    return copy_cache(cache, tmp_path)


def train_args(cache, student, out, data_dir, *extra):
    return ["train", "--cache", str(cache), "--student", student, "--out", str(out), "--data-dir", str(data_dir),
            "--batch-size", "8", "--max-steps", "2", "--head-hidden", "32", "--head-out", "16", "--num-workers", "0",
            "--log-with", "none", "--checkpoint-every", "1", "--quiet", *extra]


# ------------------------------------------------------------------ delete only what mmkd made
def test_train_overwrite_never_deletes_a_users_folder(tmp_path, cache, tiny_student, data_dir):
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "t.tex").write_text("my thesis")
    for extra in ((), ("--overwrite",)):
        r = CliRunner().invoke(main, train_args(cache, tiny_student, mine, data_dir, *extra))
        one_line(r, "not an mmkd run folder")
    assert (mine / "t.tex").read_text() == "my thesis" and sorted(os.listdir(mine)) == ["t.tex"]


def test_train_overwrite_of_the_current_directory_or_the_cache_is_refused(tmp_path, cache, tiny_student, data_dir,
                                                                          monkeypatch):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)).exit_code == 0
    monkeypatch.chdir(run)
    r = CliRunner().invoke(main, train_args(cache, tiny_student, ".", data_dir, "--overwrite"))
    one_line(r, "never deletes the current directory")
    assert (run / "student").is_dir() and (run / "config.json").is_file()
    own = fresh(cache, tmp_path)
    r = CliRunner().invoke(main, train_args(own, tiny_student, own, data_dir, "--overwrite"))
    one_line(r)
    assert (own / "en-fr" / "manifest.json").is_file()


def test_train_overwrite_checks_the_cache_before_deleting_anything(tmp_path, cache, tiny_student, data_dir):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)).exit_code == 0
    before = sorted(p.name for p in run.iterdir())
    r = CliRunner().invoke(main, train_args(tmp_path / "nosuch", tiny_student, run, data_dir, "--overwrite"))
    one_line(r, "no teacher cache here")
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_run_folder_with_a_users_file_added_is_not_overwritten(tmp_path, cache, tiny_student, data_dir):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)).exit_code == 0
    (run / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, "--overwrite"))
    one_line(r, "holds files mmkd did not write (notes.txt)")
    assert (run / "notes.txt").is_file() and (run / "student").is_dir()


def test_cache_teacher_overwrite_never_deletes_files_placed_inside_its_folders(tmp_path, cache, tiny_teacher,
                                                                               data_dir):
    for inside in ("shards/mine.txt", "shards/00000/mine.txt", "verified/mine.txt"):
        own = fresh(cache, tmp_path / inside.replace("/", "_"))
        path = own / "en-fr" / inside
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
        r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out", str(own),
                                      "--data-dir", str(data_dir), "--overwrite", "--quiet", "--dtype", "fp32",
                                      "--shard-size", "64"])
        one_line(r, "holds files mmkd did not write", inside)
        assert path.read_text() == "mine" and (own / "en-fr" / "manifest.json").is_file()


def test_a_corpus_name_is_never_a_path(tmp_path, cache, tiny_teacher, data_dir):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    corpus = tmp_path / "data" / "corpora" / "evil"
    shutil.copytree(data_dir / "corpora" / "en-fr", corpus)
    meta = json.loads((corpus / "meta.json").read_text())
    meta["name"] = "../victim"
    (corpus / "meta.json").write_text(json.dumps(meta))
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", str(corpus), "--teacher", tiny_teacher,
                                  "--out", str(tmp_path / "outc"), "--overwrite", "--quiet"])
    one_line(r, "name", "one folder name")
    assert sorted(os.listdir(victim)) == ["keep.txt"] and not (tmp_path / "outc").exists()


def test_corpus_prepare_overwrite_never_deletes_a_folder_named_like_its_files(tmp_path, shared):
    tsv = shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv"
    args = ["corpus", "prepare", "en-fr", "--tsv", str(tsv), "--data-dir", str(tmp_path), "--max-pairs", "20",
            "--min-tokens", "3", "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    folder = tmp_path / "corpora" / "en-fr"
    (folder / "pairs.arrow").unlink()
    (folder / "pairs.arrow").mkdir()
    (folder / "pairs.arrow" / "mine.txt").write_text("mine")
    one_line(CliRunner().invoke(main, [*args, "--overwrite"]), "holds files mmkd did not write")
    assert (folder / "pairs.arrow" / "mine.txt").read_text() == "mine"


# ------------------------------------------------------------------ one writer, atomically
def test_many_processes_racing_for_a_lock_left_by_a_dead_holder_give_it_to_one(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "x"}))   # a dead holder's
    code = ("import sys, time, fsspec; from mmkd.lock import Lock; from mmkd.errors import MMKDError\n"
            f"l = Lock(fsspec.filesystem('file'), {str(folder)!r}, 'c', 'race')\n"
            "start = float(sys.argv[1])\n"
            "while time.time() < start: pass\n"
            "try:\n    l.acquire(); print('held', flush=True); time.sleep(1.5); l.release()\n"
            "except MMKDError as e:\n    print('refused', flush=True)\n")
    for _ in range(3):
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, "-c", code, str(start)], stdout=subprocess.PIPE, text=True,
                                  stderr=subprocess.PIPE) for _ in range(12)]
        outs = [p.communicate(timeout=60) for p in procs]
        results = [o.strip() for o, _ in outs]
        assert all(not e for _, e in outs), [e for _, e in outs if e][:1]
        assert results.count("held") == 1 and results.count("refused") == 11, results


def test_two_trainings_on_one_run_folder_the_second_is_refused(tmp_path, cache, tiny_student, data_dir):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "mmkd", *train_args(cache, tiny_student, run, data_dir)[:-1],
                              "--max-steps", "400"], env=ENV, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "metrics.csv").is_file() and time.time() < deadline:
        time.sleep(0.05)
    try:
        r = CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, "--resume"))
        one_line(r, "is being written by process", "mmkd train")
    finally:
        first.kill()
        first.wait()


def test_an_empty_lock_file_names_no_phantom_process(tmp_path):
    import fsspec

    from mmkd.errors import MMKDError
    from mmkd.lock import Lock

    (tmp_path / "lock").write_text("")
    holder = Lock(fsspec.filesystem("file"), str(tmp_path), "c", "t")
    holder.acquire()
    (tmp_path / "lock").write_text("")                     # a holder whose record is empty
    with pytest.raises(MMKDError) as e:
        Lock(fsspec.filesystem("file"), str(tmp_path), "c", "t").acquire()
    assert "None" not in str(e.value) and "another process" in str(e.value)
    holder.release()


# ------------------------------------------------------------------ a changed file is re-checked
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


# ------------------------------------------------------------------ a manifest that lies
def _edit_manifest(own: Path, edit) -> None:
    path = own / "en-fr" / "manifest.json"
    m = json.loads(path.read_text())
    m = edit(m)
    path.write_text(json.dumps(m))


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


# ------------------------------------------------------------------ errors in loader workers
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


# ------------------------------------------------------------------ resume names what differs
@pytest.mark.parametrize("option,value,shown", [
    ("heads.out", "32", "heads.out: run has 16, now 32"), ("heads.hidden", "64", "heads.hidden: run has 32, now 64"),
    ("heads.norm", "layer", "heads.norm: run has 'none', now 'layer'"),
    ("xwcl.map", "linear", "xwcl.map: run has 'auto', now 'linear'"),
    ("heads.teacher", "guard", "heads.teacher: run has 'structure', now 'guard'"),
])
def test_resume_with_a_setting_that_shapes_the_model_names_it(tmp_path, cache, tiny_student, data_dir, option, value,
                                                               shown):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, "--max-steps", "4")).exit_code == 0
    shutil.rmtree(run / "student")
    r = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", f"{option}={value}", "--quiet"])
    assert r.exit_code == 2 and shown in r.output and "damaged" not in r.output, r.output


def test_resume_with_another_student_names_it_and_the_same_one_spelled_otherwise_resumes(tmp_path, cache, tiny_student,
                                                                                        data_dir, monkeypatch):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, "--max-steps", "4",
                                               "--checkpoint-every", "2")).exit_code == 0
    shutil.rmtree(run / "student")
    (run / "checkpoints" / "latest").write_text("step-0000002\n")
    other = tmp_path / "other-student"
    shutil.copytree(tiny_student, other)
    r = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--student", str(other), "--quiet"])
    assert r.exit_code == 2 and "--student: run has" in r.output
    monkeypatch.chdir(Path(tiny_student).parent)
    r = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--student", Path(tiny_student).name + "/",
                                  "--quiet"])
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------ one line, not a traceback
@pytest.mark.parametrize("layer,shown", [("9", "layer=9: the teacher has 2 layers"),
                                         ("-9", "layer=-9: the teacher has 2 layers"),
                                         ("99", "layer=99: must be at most 64")])
def test_cache_teacher_layer_out_of_range(tmp_path, tiny_teacher, data_dir, layer, shown):
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out",
                                  str(tmp_path / "c"), "--data-dir", str(data_dir), f"layer={layer}", "--quiet"])
    one_line(r, shown)


@pytest.mark.parametrize("damage", ["truncated_pairs", "garbage_meta"])
def test_cache_teacher_on_a_damaged_corpus(tmp_path, tiny_teacher, data_dir, damage):
    corpus = tmp_path / "corpora" / "en-fr"
    shutil.copytree(data_dir / "corpora" / "en-fr", corpus)
    if damage == "truncated_pairs":
        os.truncate(corpus / "pairs.arrow", 300)
    else:
        (corpus / "meta.json").write_text("{garbage")
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", str(corpus), "--teacher", tiny_teacher, "--out",
                                  str(tmp_path / "c"), "--quiet"])
    one_line(r, "pairs.arrow" if damage == "truncated_pairs" else "meta.json")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_tmp(tmp_path, cache, tiny_student, data_dir,
                                                                       monkeypatch):
    import errno

    import mmkd.checkpoint as ck

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ck, "save_model", full)
    run = tmp_path / "run"
    r = CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir))
    one_line(r, "could not be written (No space left on device)", "free some space")
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_resume_with_a_truncated_rng_file_is_one_line(tmp_path, cache, tiny_student, data_dir):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, "--max-steps", "3")).exit_code == 0
    shutil.rmtree(run / "student")
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    os.truncate(latest / "rng-rank0.safetensors", 10)
    one_line(CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--quiet"]), "rng-rank0.safetensors")


def test_hf_dataset_pointing_at_a_folder_of_tsvs_is_one_line(tmp_path, shared):
    folder = tmp_path / "tsvs"
    folder.mkdir()
    shutil.copy(shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv", folder / "train.tsv")
    r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--hf-dataset", str(folder), "--data-dir",
                                  str(tmp_path / "d"), "--quiet"])
    one_line(r, "--hf-dataset")


@pytest.mark.parametrize("size", [0, 100])
def test_a_truncated_or_empty_weights_file_is_one_line(tmp_path, tiny_student, shared, size):
    model = tmp_path / "model"
    shutil.copytree(tiny_student, model)
    os.truncate(model / "model.safetensors", size)
    r = CliRunner().invoke(main, ["eval", "retrieval", "--model", str(model), "--pairs",
                                  str(shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv")])
    one_line(r, "without a loadable model", "copy the model folder again")


@pytest.mark.parametrize("content", [b"", "en\tfr\n".encode("utf-16")])
def test_an_empty_or_utf16_pairs_file_is_one_line(tmp_path, tiny_student, content):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_bytes(content)
    r = CliRunner().invoke(main, ["eval", "retrieval", "--model", tiny_student, "--pairs", str(pairs)])
    one_line(r, "pairs.tsv")


def test_a_nul_byte_deep_in_a_corpus_file_is_refused(tmp_path, shared):
    lines = (shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv").read_text(encoding="utf-8").splitlines()[:200]
    lines[150] = lines[150].replace(" ", " \x00", 1)
    tsv = tmp_path / "x.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert tsv.read_bytes().index(b"\x00") > 4096
    r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--tsv", str(tsv), "--data-dir", str(tmp_path / "d"),
                                  "--quiet", "--min-tokens", "1"])
    one_line(r, "line 151: a NUL byte")


# ------------------------------------------------------------------ cache upgrade verifies first
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


# ------------------------------------------------------------------ a model without its tokenizer
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


# ------------------------------------------------------------------ ablate never mixes settings
def test_ablate_refuses_to_mix_or_silently_reuse_runs_made_otherwise(tmp_path, cache, tiny_student, data_dir, shared):
    pairs = f"fr={shared / 'parallel' / 'tatoeba_challenge' / 'eng-fra.tsv'}"
    base = ["ablate", "--cache", str(cache), "--student", tiny_student, "--data-dir", str(data_dir), "--out",
            str(tmp_path / "s"), "--batch-size", "8", "--max-steps", "1", "--head-hidden", "32", "--head-out", "16",
            "--num-workers", "0", "--log-with", "none", "--quiet", "--pairs", pairs, "--no-baseline"]
    assert CliRunner().invoke(main, base).exit_code == 0
    shutil.rmtree(tmp_path / "s" / "-senta")                       # as if interrupted
    for change, shown in ((["--lr", "1e-3"], "train.lr: sweep has 2e-05, now 0.001"),
                          (["--max-steps", "3"], "train.max_steps: sweep has 1, now 3")):
        r = CliRunner().invoke(main, [*base, *change])
        assert r.exit_code == 2 and shown in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "s" / "-senta").exists()


# ------------------------------------------------------------------ round three: a user's data
def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None,
                                         p.stat().st_mtime_ns if not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


def test_another_tools_checkpoints_and_config_are_not_a_run(tmp_path, cache, tiny_student, data_dir):
    mine = tmp_path / "other"
    (mine / "checkpoints" / "epoch-3").mkdir(parents=True)
    (mine / "checkpoints" / "epoch-3" / "model.ckpt").write_bytes(b"weights of another tool")
    (mine / "config.json").write_text('{"lr": 0.1}')
    before = _snapshot(mine)
    for extra in ((), ("--overwrite",), ("--resume",)):
        one_line(CliRunner().invoke(main, train_args(cache, tiny_student, mine, data_dir, *extra)),
                 "not an mmkd run folder")
        assert _snapshot(mine) == before


def test_overwrite_never_deletes_a_users_file_inside_student_or_checkpoints(tmp_path, cache, tiny_student, data_dir):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)).exit_code == 0
    (run / "student" / "notes.txt").write_text("mine")
    (run / "checkpoints" / "mine.txt").write_text("mine too")
    (run / "checkpoints" / "step-0000002" / "plot.png").write_bytes(b"png")
    before = _snapshot(run)
    r = CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, "--overwrite"))
    one_line(r, "holds files mmkd did not write (checkpoints/mine.txt, checkpoints/step-0000002/plot.png, "
                "student/notes.txt)")
    assert _snapshot(run) == before
    for p in ("student/notes.txt", "checkpoints/mine.txt", "checkpoints/step-0000002/plot.png"):
        (run / p).unlink()
    # what mmkd wrote (the student's files are listed in its mmkd_run.json) is all --overwrite deletes
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, "--overwrite")).exit_code == 0
    listed = json.loads((run / "student" / "mmkd_run.json").read_text())["files"]
    assert sorted(listed) == sorted(p.name for p in (run / "student").iterdir())


def test_a_users_file_named_lock_is_never_emptied(tmp_path, cache, tiny_student, data_dir, tiny_teacher):
    run = tmp_path / "run"
    run.mkdir()
    (run / "lock").write_text("my lock-picking notes")
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)), "is not an mmkd lock file")
    assert (run / "lock").read_text() == "my lock-picking notes" and os.listdir(run) == ["lock"]
    out = tmp_path / "caches"
    (out / "en-fr").mkdir(parents=True)
    (out / "en-fr" / "lock").write_text("mine")
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out", str(out),
                                  "--data-dir", str(data_dir), "--quiet"])
    one_line(r, "is not an mmkd lock file")
    assert (out / "en-fr" / "lock").read_text() == "mine"


def test_a_lock_that_is_a_link_is_never_followed(tmp_path, cache, tiny_student, data_dir):
    from mmkd.errors import MMKDError
    from mmkd.lock import Lock
    from fsspec.implementations.local import LocalFileSystem

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "lock").symlink_to(victim)
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)), "is a link", "remove the link")
    own = fresh(cache, tmp_path)
    (own / "en-fr" / "lock").unlink(missing_ok=True)
    (own / "en-fr" / "lock").symlink_to(victim)
    with pytest.raises(MMKDError, match="never locks through a link"):
        Lock(LocalFileSystem(), str(own / "en-fr"), str(own / "en-fr"), "mmkd cache-teacher").acquire()
    r = CliRunner().invoke(main, ["cache", "upgrade", str(own / "en-fr"), "--data-dir", str(data_dir)])
    one_line(r, "is a link")
    assert victim.read_text() == "precious"


def test_cache_teacher_overwrite_never_replaces_a_users_build_json(tmp_path, tiny_teacher, data_dir):
    out = tmp_path / "caches"
    (out / "en-fr").mkdir(parents=True)
    (out / "en-fr" / "build.json").write_text('{"my": "build settings"}')
    for extra in ((), ("--overwrite",), ("--resume",)):
        r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out",
                                      str(out), "--data-dir", str(data_dir), "--quiet", *extra])
        one_line(r, "is not an mmkd cache")
    assert os.listdir(out / "en-fr") == ["build.json"]
    assert (out / "en-fr" / "build.json").read_text() == '{"my": "build settings"}'


def test_cache_upgrade_never_writes_through_a_shard_link_outside(tmp_path, cache, data_dir):
    own = fresh(cache, tmp_path)
    make_format_1(own / "en-fr")
    outside = tmp_path / "outside"
    shutil.move(own / "en-fr" / "shards" / "00000", outside)
    (own / "en-fr" / "shards" / "00000").symlink_to(outside)
    before = _snapshot(outside)
    r = CliRunner().invoke(main, ["cache", "upgrade", str(own / "en-fr"), "--data-dir", str(data_dir)])
    one_line(r, "shard 00000 is a link to", "outside the cache")
    assert _snapshot(outside) == before
    assert json.loads((own / "en-fr" / "manifest.json").read_text())["format_version"] == 1


def test_cache_upgrade_is_refused_while_a_writer_holds_the_lock(tmp_path, cache, data_dir):
    import fcntl

    own = fresh(cache, tmp_path)
    make_format_1(own / "en-fr")
    before = _snapshot(own / "en-fr")
    fd = os.open(own / "en-fr" / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)             # a cache-teacher writing there
        r = CliRunner().invoke(main, ["cache", "upgrade", str(own / "en-fr"), "--data-dir", str(data_dir)])
        one_line(r, "is being written by", "mmkd cache upgrade")
    finally:
        os.close(fd)
    assert _snapshot(own / "en-fr") == {**before, "lock": _snapshot(own / "en-fr")["lock"]}
    assert json.loads((own / "en-fr" / "manifest.json").read_text())["format_version"] == 1


def test_a_second_train_on_a_busy_run_folder_changes_nothing(tmp_path, cache, tiny_student, data_dir):
    """The first holds the folder's lock (here: this test, as a running `train` would); the second is
    refused before it deletes, writes or creates anything, with or without --overwrite."""
    import fcntl

    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)).exit_code == 0
    fd = os.open(run / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = _snapshot(run)
        for extra in (("--overwrite",), ("--resume", "--max-steps", "2"), ("--overwrite", "--lr", "1e-3")):
            one_line(CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, *extra)),
                     "is being written by another process")
            assert _snapshot(run) == before
    finally:
        os.close(fd)


# ------------------------------------------------------------------ round three: bad input
def test_a_seed_beyond_numpy_and_torch_is_one_line(tmp_path, cache, tiny_student, data_dir):
    r = CliRunner().invoke(main, train_args(cache, tiny_student, tmp_path / "r", data_dir, "--seed", str(2**64 + 1)))
    one_line(r, f"seed={2**64 + 1}: must be at most 4294967295")
    assert not (tmp_path / "r").exists()


def test_a_batch_or_length_no_machine_or_model_takes_is_one_line_before_any_work(tmp_path, cache, tiny_student,
                                                                                  data_dir, tiny_teacher):
    out = tmp_path / "r"
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, out, data_dir, f"batch_size={10**20}")),
             "batch_size=100000000000000000000: one micro-batch", "lower batch_size")
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, out, data_dir, f"max_length={10**8}")),
             "max_length=100000000: the student", "takes at most 160 tokens")
    assert not out.exists()
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out",
                                  str(tmp_path / "c"), "--data-dir", str(data_dir), "max_length=100000", "--quiet"])
    one_line(r, "max_length=100000: the teacher")
    assert not (tmp_path / "c").exists()


def test_a_settings_file_nested_50000_deep_is_one_line(tmp_path, cache, tiny_student, data_dir):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50000 + "]" * 50000)
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, tmp_path / "r", data_dir, "--config", str(deep))),
             "deep.json: not a settings file (nested too deeply")


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1", "invalid"])
def test_evaluation_files_not_in_utf8_name_the_file_and_line(tmp_path, encoding):
    from mmkd.eval.data import XNLI, EvalDataError, read_pair_tsv, read_squad

    rows = "A man sleeps.\tNobody sleeps.\tcontradiction\nLe café est chaud.\tIl fait froid.\tneutral\n"
    data = {"utf-16": rows.encode("utf-16"), "latin-1": rows.encode("latin-1"),
            "invalid": rows.encode("utf-8").replace("é".encode(), b"\xc3\x28")}[encoding]
    path = tmp_path / "test-fr.tsv"
    path.write_bytes(data)
    with pytest.raises(EvalDataError) as e:
        read_pair_tsv(path, XNLI)
    assert str(e.value).startswith(str(path)) and ("UTF-16" in str(e.value) if encoding == "utf-16"
                                                   else "line 2: invalid UTF-8" in str(e.value)), e.value
    squad = tmp_path / "xquad.fr.json"
    squad.write_bytes(json.dumps({"data": [{"paragraphs": [{"context": "é", "qas": []}]}]}, ensure_ascii=False)
                      .encode("utf-16" if encoding == "utf-16" else "latin-1"))
    with pytest.raises(EvalDataError, match=str(squad)):
        read_squad(squad)


def test_squad_json_of_the_wrong_shape_is_one_line(tmp_path):
    from mmkd.eval.data import EvalDataError, read_squad

    good = {"context": "Paris is in France.", "qas": [{"id": "q1", "question": "Where is Paris?",
                                                         "answers": [{"text": "France", "answer_start": 12}]}]}
    cases = {"no data": ({"version": "1.1"}, "'data' is missing, not list"),
             "a list": ([1, 2], "the top level is list, not dict"),
             "no paragraphs": ({"data": [{"title": "x"}]}, "data[0].paragraphs is missing"),
             "no answer_start": ({"data": [{"paragraphs": [{**good, "qas": [{**good["qas"][0], "answers": [
                 {"text": "France"}]}]}]}]}, "answer_start is missing, not int"),
             "start outside": ({"data": [{"paragraphs": [{**good, "qas": [{**good["qas"][0], "answers": [
                 {"text": "France", "answer_start": 99}]}]}]}]}, "answer_start 99 is outside its context")}
    for name, (data, fragment) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(EvalDataError) as e:
            read_squad(path)
        assert fragment in str(e.value) and str(path) in str(e.value), (name, e.value)
    path = tmp_path / "good.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [good]}]}))
    assert [q.id for q in read_squad(path)] == ["q1"]


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


def test_a_model_object_where_a_name_is_expected_is_one_line(tiny_student):
    from transformers import AutoModel

    from mmkd.errors import MMKDError
    from mmkd.hf import load, load_tokenizer

    model = AutoModel.from_pretrained(tiny_student)
    for call in (lambda: load_tokenizer(model), lambda: load(AutoModel, model, "encoder")):
        with pytest.raises(MMKDError, match="expected a model name or folder, got BertModel.*save_pretrained"):
            call()


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


def test_a_full_disk_in_safetensors_during_a_checkpoint_is_one_line(tmp_path, cache, tiny_student, data_dir,
                                                                    monkeypatch):
    import mmkd.checkpoint as ck
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space "
                              "left on device\" })")
    monkeypatch.setattr(ck, "save_model", full)
    run = tmp_path / "run"
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)), "could not be written",
             "free some space")
    assert not list((run / "checkpoints").glob("*.tmp"))
