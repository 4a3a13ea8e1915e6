"""A run folder (mmkd/run_folder.py): only what mmkd made is deleted, a run identifies itself wherever it
moves, and a resume with other settings names each difference."""

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
from mmkd.trainer import TrainingError, train

from helpers import (
    changed, copy_cache, folder_snapshot, fresh, metrics, one_line, one_line_error, short_run, small_config,
    train_args)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_resume_accepts_any_spelling_of_the_run_folder_and_a_moved_one(tmp_path, clean_cache, tiny_student,
                                                                       data_dir, monkeypatch):
    import dataclasses

    cache = copy_cache(clean_cache, tmp_path)
    monkeypatch.chdir(tmp_path)
    first = short_run(tmp_path, cache, tiny_student, data_dir, out="st1", max_steps=2)
    train(first, progress=False)
    for out in ("./st1/", "st1/", str(tmp_path / "st1")):
        train(dataclasses.replace(first, out=out), resume=True, progress=False)
    shutil.move(tmp_path / "st1", tmp_path / "moved")
    run = train(dataclasses.replace(first, out="moved"), resume=True, progress=False)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert json.loads((run / "config.json").read_text())["config"]["out"] == "moved"
    with pytest.raises(TrainingError, match="lr: run has 0.001, now 0.002"):    # other settings still refused
        train(dataclasses.replace(first, out="moved", lr=2e-3), resume=True, progress=False)


def test_a_run_moved_without_its_config_or_metrics_or_with_only_its_checkpoints_resumes(tmp_path, clean_cache,
                                                                                        tiny_student, data_dir,
                                                                                        monkeypatch):
    cache = copy_cache(clean_cache, tmp_path)
    monkeypatch.chdir(tmp_path)
    base = ["--student", tiny_student, "--data-dir", str(data_dir), "--quiet"]
    first = ["train", "--cache", "cache/en-fr", "--out", "run", "--max-steps", "4", "--checkpoint-every", "2",
             "--batch-size", "8", "--head-hidden", "32", "--head-out", "16", "--num-workers", "0", "--log-with",
             "none", *base]
    assert CliRunner().invoke(main, first).exit_code == 0
    shutil.rmtree(tmp_path / "run" / "student")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-0000002\n")
    for name, keep in (("no-config", lambda p: (p / "config.json").unlink()),
                       ("no-metrics", lambda p: (p / "metrics.csv").unlink()),
                       ("only-checkpoints", None)):
        dest = tmp_path / "moved" / name
        if keep is None:
            dest.mkdir(parents=True)
            shutil.copytree(tmp_path / "run" / "checkpoints", dest / "checkpoints")
        else:
            shutil.copytree(tmp_path / "run", dest)
            keep(dest)
        r = CliRunner().invoke(main, ["train", "--out", str(dest), "--resume", "--quiet"])
        assert r.exit_code == 0, (name, r.output)
        assert (dest / "checkpoints" / "latest").read_text().strip() == "step-0000004"
        if name != "no-config":
            assert "the rows of steps 1-2 are lost" in r.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(tmp_path / "run", elsewhere / "run")
    monkeypatch.chdir(elsewhere)          # the run recorded cache/en-fr, relative to tmp_path
    r = CliRunner().invoke(main, ["train", "--out", "run", "--resume", "--quiet"])
    one_line_error(r, "records the cache 'cache/en-fr', which is not there", "give it again with --cache")
    r = CliRunner().invoke(main, ["train", "--out", "run", "--resume", "--cache", str(cache / "en-fr"), "--quiet"])
    assert r.exit_code == 0, r.output


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


def test_another_tools_checkpoints_and_config_are_not_a_run(tmp_path, cache, tiny_student, data_dir):
    mine = tmp_path / "other"
    (mine / "checkpoints" / "epoch-3").mkdir(parents=True)
    (mine / "checkpoints" / "epoch-3" / "model.ckpt").write_bytes(b"weights of another tool")
    (mine / "config.json").write_text('{"lr": 0.1}')
    before = folder_snapshot(mine)
    for extra in ((), ("--overwrite",), ("--resume",)):
        one_line(CliRunner().invoke(main, train_args(cache, tiny_student, mine, data_dir, *extra)),
                 "not an mmkd run folder")
        assert folder_snapshot(mine) == before


def test_overwrite_never_deletes_a_users_file_inside_student_or_checkpoints(tmp_path, cache, tiny_student, data_dir):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)).exit_code == 0
    (run / "student" / "notes.txt").write_text("mine")
    (run / "checkpoints" / "mine.txt").write_text("mine too")
    (run / "checkpoints" / "step-0000002" / "plot.png").write_bytes(b"png")
    before = folder_snapshot(run)
    r = CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, "--overwrite"))
    one_line(r, "holds files mmkd did not write (checkpoints/mine.txt, checkpoints/step-0000002/plot.png, "
                "student/notes.txt)")
    assert folder_snapshot(run) == before
    for p in ("student/notes.txt", "checkpoints/mine.txt", "checkpoints/step-0000002/plot.png"):
        (run / p).unlink()
    # what mmkd wrote (the student's files are listed in its mmkd_run.json) is all --overwrite deletes
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, "--overwrite")).exit_code == 0
    listed = json.loads((run / "student" / "mmkd_run.json").read_text())["files"]
    assert sorted(listed) == sorted(p.name for p in (run / "student").iterdir())


def test_a_second_train_on_a_busy_run_folder_changes_nothing(tmp_path, cache, tiny_student, data_dir):
    """The first holds the folder's lock (here: this test, as a running `train` would); the second is
    refused before it deletes, writes or creates anything, with or without --overwrite."""
    import fcntl

    run = tmp_path / "run"
    assert CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)).exit_code == 0
    fd = os.open(run / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = folder_snapshot(run)
        for extra in (("--overwrite",), ("--resume", "--max-steps", "2"), ("--overwrite", "--lr", "1e-3")):
            one_line(CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir, *extra)),
                     "is being written by another process")
            assert folder_snapshot(run) == before
    finally:
        os.close(fd)


def test_resume_with_other_settings_is_refused(tmp_path, cache_root, tiny_student, data_dir):
    cfg = small_config(tmp_path, cache_root, tiny_student, data_dir, max_steps=2)
    train(cfg, progress=False)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(cfg, progress=False)
    with pytest.raises(TrainingError, match=r"other settings:\n  lr: run has 0.001, now 0.002"):
        train(changed(cfg, lr=2e-3), resume=True, progress=False)


def test_resume_and_config_reuse_a_runs_settings(tmp_path, cache_root, tiny_student, data_dir):
    from click.testing import CliRunner

    from mmkd.cli import main

    run = tmp_path / "run"
    first = ["train", "--cache", str(cache_root), "--student", tiny_student, "--out", str(run), "--batch-size", "8",
             "--lr", "1e-3", "--alpha", "0.5", "--head-hidden", "32", "--head-out", "16", "--max-steps", "2",
             "--checkpoint-every", "1", "--num-workers", "0", "--log-with", "none", "--quiet"]
    assert CliRunner().invoke(main, first).exit_code == 0
    r = CliRunner().invoke(main, ["train", "--resume", "--out", str(run), "--quiet"])      # no flags retyped
    assert r.exit_code == 0, r.output
    again = tmp_path / "again"
    r = CliRunner().invoke(main, ["train", "--config", str(run / "config.json"), "--out", str(again), "--quiet"])
    assert r.exit_code == 0, r.output
    keys = ("loss", "tlm", "xwcl", "senta", "struca", "lr")
    assert [[m[k] for k in keys] for m in metrics(again)] == [[m[k] for k in keys] for m in metrics(run)]
    other = tmp_path / "other"
    r = CliRunner().invoke(main, ["train", "--config", str(run / "config.json"), "--out", str(other), "--alpha", "2",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    import json
    saved = json.loads((other / "config.json").read_text())["config"]
    assert saved["struca"]["alpha"] == 2.0 and saved["lr"] == 1e-3 and saved["out"] == str(other)
