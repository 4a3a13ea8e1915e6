"""Two machines, simulated on this one as faithfully as it allows: `accelerate launch --num_machines 2
--machine_rank {0,1} --main_process_ip 127.0.0.1`, two gloo processes per machine, each machine with
its own working folder, its own copy of the cache and its own node-local `--out` (docs/gpu.md,
"Several machines")."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import copy_cache

ARGS = ("--batch-size", "16", "--lr", "1e-3", "--head-hidden", "32", "--head-out", "16", "--log-with", "none",
        "--quiet", "--num-workers", "0", "--max-grad-norm", "0", "--teacher-heads", "frozen")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(folder: Path, student: str, data_dir: Path, *extra: str) -> list[str]:
    return ["train", "--cache", str(folder / "cache"), "--student", student, "--out", str(folder / "run"),
            "--data-dir", str(data_dir), *ARGS, *extra]


def _machines(tmp_path: Path, clean: Path, name: str) -> list[Path]:
    """Two machines' working folders, each with its own copy of the cache."""
    folders = []
    for r in range(2):
        folder = tmp_path / name / f"machine{r}"
        folder.mkdir(parents=True)
        copy_cache(clean, folder)
        folders.append(folder)
    return folders


def _launch(folders: list[Path], student: str, data_dir: Path, *extra: str) -> list[subprocess.Popen]:
    port = _port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for r, folder in enumerate(folders):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--machine_rank", str(r), "--num_processes", "4", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "mmkd", *_train(folder, student, data_dir, *extra)]
        procs.append(subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str]]:
    done = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        done.append((p.returncode, out))
    return done


def _kill_machine(folder: Path) -> int:
    """kill -9 every process of one machine: its launcher and the workers torchrun started (which are
    in their own process groups), found by the machine's --out in their command line."""
    mark = str(folder / "run").encode()
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "cmdline").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            pass
    return killed


def _metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _latest(run: Path) -> str:
    try:
        return (run / "checkpoints" / "latest").read_text().strip()
    except OSError:
        return ""


def test_two_machines_with_node_local_disks_train_survive_kill_9_and_equal_one_process(
        tmp_path, clean_cache, student_nodrop, data_dir):
    steps = ("--max-steps", "12", "--checkpoint-every", "3")
    ref = tmp_path / "one"
    ref.mkdir()
    copy_cache(clean_cache, ref)
    subprocess.run([sys.executable, "-m", "mmkd", *_train(ref, student_nodrop, data_dir, *steps)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    folders = _machines(tmp_path, clean_cache, "two")
    procs = _launch(folders, student_nodrop, data_dir, *steps)
    deadline = time.time() + 600
    while time.time() < deadline and _latest(folders[1] / "run") != "step-0000006" and procs[1].poll() is None:
        time.sleep(0.005)
    assert procs[1].poll() is None, "machine 1 finished (or died) before it could be killed:\n" + procs[1].stdout.read()
    assert _kill_machine(folders[1]) == 3           # the launcher and its two workers, at once
    (_, out1), (code0, out0) = _finish(procs[1:]) + _finish(procs[:1], timeout=300)
    assert code0 != 0, "machine 0 went on without machine 1"
    rows = _metrics(folders[0] / "run")
    assert 6 <= len(rows) < 12, len(rows)
    # Each machine's own --out holds complete checkpoints with its own ranks' RNG states.
    for r, folder in enumerate(folders):
        step = folder / "run" / "checkpoints" / "step-0000006"
        names = sorted(p.name for p in step.iterdir())
        assert names == ["meta.json", "model.safetensors", "optimizer.pt",
                         f"rng-rank{2 * r}.safetensors", f"rng-rank{2 * r + 1}.safetensors", "scheduler.pt"], names
    done = _finish(_launch(folders, student_nodrop, data_dir, *steps, "--resume"))
    assert all(code == 0 for code, _ in done), "\n".join(out[-3000:] for _, out in done)
    got, want = _metrics(folders[0] / "run"), _metrics(ref / "run")
    assert [row["step"] for row in got] == [str(i) for i in range(1, 13)]
    for a, b in zip(got, want):
        for key in ("loss", "tlm", "xwcl", "senta", "struca", "lr"):
            # Tolerance: four processes pad and sum in another order (~1e-6 relative).
            assert float(a[key]) == pytest.approx(float(b[key]), rel=2e-4, abs=1e-6), (a["step"], key)
    w_one = load_file(str(ref / "run" / "student" / "model.safetensors"))
    w_two = load_file(str(folders[0] / "run" / "student" / "model.safetensors"))
    assert w_two.keys() == w_one.keys()
    worst = max((w_two[k] - w_one[k]).abs().max().item() for k in w_one)
    assert worst < 1e-4, worst
    assert not (folders[1] / "run" / "student").exists()     # the student is saved once, by process 0
    assert _latest(folders[1] / "run") == "step-0000012"         # machine 1 wrote its own, the same weights
    last = [load_file(str(f / "run" / "checkpoints" / "step-0000012" / "model.safetensors")) for f in folders]
    assert last[0].keys() == last[1].keys() and all(torch.equal(last[0][k], last[1][k]) for k in last[0])


def test_a_corrupt_cache_copy_on_the_second_machine_is_refused(tmp_path, clean_cache, student_nodrop, data_dir):
    """Each copy is hashed in full: before, machine 1's two processes hashed only shards 2, 3 (mod 4)
    of its copy; shard 0 on machine 1 was never read, so its flipped byte went unseen."""
    folders = _machines(tmp_path, clean_cache, "corrupt")
    target = folders[1] / "cache" / "en-fr" / "shards" / "00000"
    victim = max((p for p in target.rglob("*") if p.is_file() and p.name != "shard.json"),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    done = _finish(_launch(folders, student_nodrop, data_dir, "--max-steps", "2"))
    assert all(code != 0 for code, _ in done)
    text = done[1][1]
    assert f"{folders[1] / 'cache' / 'en-fr'} shard 00000" in text and "does not match its checksum" in text, text[-3000:]
    assert not (folders[0] / "run" / "checkpoints").exists() and not (folders[1] / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ fp16 GPUs, tested on the CPU
def test_an_fp16_overflow_is_skipped_by_the_scaler_and_its_state_is_checkpointed(tmp_path, clean_cache, tiny_student,
                                                                                 data_dir, monkeypatch, request):
    """A forced overflow: accelerate gives no loss scaler on the CPU, so the test hands the run torch's
    CPU GradScaler, starting at 2**127. The first step's scaled gradients overflow float32; the scaler
    skips that step and lowers the scale to 2**10, and training goes on. (A NaN *loss* still stops a
    run: tests/test_trainer.py::test_nan_guard_names_step_and_loss.)"""
    import accelerate

    from mmkd import settings as st
    from mmkd.config import TrainConfig
    from mmkd.trainer import train

    class WithScaler(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, backoff_factor=2.0 ** -117)
            self.native_amp = True

    from accelerate.state import AcceleratorState

    import mmkd.run_setup

    monkeypatch.setattr(mmkd.run_setup, "Accelerator", WithScaler)      # the setup's own name for it
    AcceleratorState._reset_state(reset_partial_state=True)     # this process's earlier runs were fp32
    request.addfinalizer(lambda: AcceleratorState._reset_state(reset_partial_state=True))
    cfg = st.from_mapping(TrainConfig, dict(
        cache=[str(clean_cache)], student=tiny_student, out=str(tmp_path / "run"), data_dir=str(data_dir),
        batch_size=8, max_steps=4, lr=1e-3, warmup_ratio=0.5, checkpoint_every=2, num_workers=0, log_with="none",
        head_hidden=32, head_out=16, mixed_precision="fp16"), "test")
    run = train(cfg, progress=False)
    rows = _metrics(run)
    assert [r["skipped"] for r in rows] == ["1", "0", "0", "0"]
    assert rows[0]["grad_norm"] in ("inf", "nan") and all(float(r["grad_norm"]) < 1e6 for r in rows[1:])
    # The skipped step left the schedule where it was: step 2 trains at step 1's warm-up lr.
    assert float(rows[1]["lr"]) == pytest.approx(float(rows[0]["lr"]))
    assert float(rows[2]["lr"]) > float(rows[1]["lr"])
    saved = torch.load(run / "checkpoints" / "step-0000004" / "scaler.pt", weights_only=True)
    assert saved["scale"] == 2.0 ** 10
    from mmkd.run_folder import foreign_files
    assert foreign_files(run) == []          # scaler.pt is one of a checkpoint's files


def test_sharded_engines_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    from mmkd.config import TrainingError
    from mmkd.run_setup import refuse_sharded_engines, resolve_precision

    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        monkeypatch.setenv(var, "true")
        with pytest.raises(TrainingError, match=f"^{name} is not supported.*accelerate launch --multi_gpu"):
            refuse_sharded_engines()
        monkeypatch.delenv(var)
    refuse_sharded_engines()
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("auto", cpu=True) == "no" and resolve_precision("bf16", cpu=True) == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")    # what `accelerate launch`'s configuration says
    assert resolve_precision("auto", cpu=True) == "fp16" and resolve_precision("no", cpu=True) == "no"


# ------------------------------------------------------------------ locks on cluster filesystems
@pytest.mark.parametrize("code", ["ENOSYS", "ENOLCK", "EOPNOTSUPP"])
def test_a_filesystem_without_flock_is_named_and_mmkd_lock_file_works_there(tmp_path, monkeypatch, code):
    """Lustre or NFS mounted without flock answer ENOSYS (ENOLCK, EOPNOTSUPP): that is not another
    writer. MMKD_LOCK=file is the soft lock for them."""
    import errno
    import fcntl

    from fsspec.implementations.local import LocalFileSystem

    from mmkd.errors import MMKDError
    from mmkd.lock import Lock

    real = fcntl.flock

    def no_flock(fd, op):
        if op & fcntl.LOCK_UN:
            return real(fd, op)
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(MMKDError) as e:
        Lock(LocalFileSystem(), str(folder), str(folder), "mmkd train").acquire()
    text = str(e.value)
    assert text.startswith(f"{folder / 'lock'}: this filesystem cannot lock files") and "MMKD_LOCK=file" in text
    assert "being written" not in text
    monkeypatch.setenv("MMKD_LOCK", "file")
    first = Lock(LocalFileSystem(), str(folder), str(folder), "mmkd train")
    first.acquire()
    assert json.loads((folder / "lock.held").read_text())["pid"] == os.getpid()
    with pytest.raises(MMKDError, match=rf"being written by process {os.getpid()} .*MMKD_LOCK=file.*delete "
                                        rf"{folder / 'lock.held'}"):
        Lock(LocalFileSystem(), str(folder), str(folder), "mmkd train").acquire()
    first.release()
    assert not (folder / "lock.held").exists()
    with Lock(LocalFileSystem(), str(folder), str(folder), "mmkd train"):
        pass
    monkeypatch.setenv("MMKD_LOCK", "maybe")
    with pytest.raises(MMKDError, match="MMKD_LOCK='maybe'"):
        Lock(LocalFileSystem(), str(folder), str(folder), "mmkd train").acquire()


def test_a_train_under_mmkd_lock_file_runs_and_refuses_a_second(tmp_path, clean_cache, tiny_student, data_dir,
                                                                monkeypatch):
    from mmkd import settings as st
    from mmkd.config import TrainConfig, TrainingError
    from mmkd.trainer import train

    monkeypatch.setenv("MMKD_LOCK", "file")
    cfg = st.from_mapping(TrainConfig, dict(
        cache=[str(clean_cache)], student=tiny_student, out=str(tmp_path / "run"), data_dir=str(data_dir),
        batch_size=8, max_steps=1, num_workers=0, log_with="none", head_hidden=32, head_out=16), "test")
    run = train(cfg, progress=False)
    assert (run / "student").is_dir() and not (run / "lock.held").exists()
    (run / "lock.held").write_text(json.dumps({"pid": 1, "host": "node7", "started": "2026-12-04 00:00:00"}))
    with pytest.raises(TrainingError, match="being written by process 1 on node7"):
        train(cfg, resume=True, progress=False)


def test_two_machines_sharing_one_run_folder_write_it_once_with_every_ranks_state(tmp_path, clean_cache,
                                                                                 student_nodrop, data_dir):
    """`--out` on a filesystem both machines mount (docs/gpu.md: shared or node-local): one writer for
    the folder, every rank's RNG state in each checkpoint, one config.json, one student."""
    folders = _machines(tmp_path, clean_cache, "shared")
    shared_run = tmp_path / "shared" / "run"
    done = _finish(_launch(folders, student_nodrop, data_dir, "--max-steps", "6", "--checkpoint-every", "3",
                           "--out", str(shared_run)))
    assert all(code == 0 for code, _ in done), "\n".join(out[-3000:] for _, out in done)
    for step in ("step-0000003", "step-0000006"):
        names = sorted(p.name for p in (shared_run / "checkpoints" / step).iterdir())
        assert names == ["meta.json", "model.safetensors", "optimizer.pt", *[f"rng-rank{r}.safetensors" for r in range(4)],
                         "scheduler.pt"], names
    assert json.loads((shared_run / "config.json").read_text())["processes"] == 4
    assert [row["step"] for row in _metrics(shared_run)] == [str(i) for i in range(1, 7)]
    assert (shared_run / "student" / "model.safetensors").is_file()
    from mmkd.run_folder import foreign_files
    assert foreign_files(shared_run) == []                 # no claim file or stray lock left behind
    assert not any((f / "run").exists() for f in folders)
