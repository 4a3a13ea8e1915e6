"""Checkpoints (mmkd/checkpoint.py): finite or never written, damage is one line naming the fix."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from mmkd.cli import main
from mmkd.trainer import train

from helpers import copy_cache, one_line, one_line_error, short_run, train_args


def test_a_checkpoint_with_non_finite_tensors_is_never_written(tmp_path):
    from accelerate import Accelerator

    from mmkd.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    accelerator = Accelerator(cpu=True)
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {}, accelerator)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="step 2: 1 tensors are not finite \\(e.g. weight\\)"):
        save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {}, accelerator)
    assert latest_checkpoint(tmp_path).name == "step-0000001"
    assert not (tmp_path / "checkpoints" / "step-0000002").exists()


def test_a_truncated_checkpoint_is_one_line_naming_the_fix(tmp_path, clean_cache, tiny_student, data_dir):
    cache = copy_cache(clean_cache, tmp_path)
    train(short_run(tmp_path, cache, tiny_student, data_dir), progress=False)
    weights = tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    r = CliRunner().invoke(main, ["train", "--cache", str(cache), "--student", tiny_student, "--out",
                                  str(tmp_path / "run"), "--data-dir", str(data_dir), "--batch-size", "8", "--lr", "1e-3",
                                  "--warmup-ratio", "0", "--checkpoint-every", "1", "--max-steps", "2",
                                  "--num-workers", "0", "--log-with", "none", "--head-hidden", "32", "--head-out", "16",
                                  "--resume", "--quiet"])
    one_line_error(r, "step-0000002 is damaged", "checkpoints/latest")


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
