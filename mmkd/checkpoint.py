"""Complete, atomic training checkpoints.

`<run>/checkpoints/step-000123/` holds
- `model.safetensors`   student + all heads (strict load; tied weights handled by safetensors)
- `optimizer.pt`        AdamW state (torch.save; loaded with weights_only=True)
- `scheduler.pt`        LR scheduler state (same)
- `scaler.pt`           fp16's loss-scaler state (same; only when training in fp16)
- `rng-rank{r}.safetensors`  every rank's torch CPU (and CUDA) generator state
- `meta.json`           step, epoch, the run config and its config_version, the caches' fingerprints, mmkd version

It is written into `step-000123.tmp/` and renamed when complete; then `checkpoints/latest` (a
one-line file, replaced atomically) names it. Resuming reads `latest`, never guesses by time.
Only the last `keep` checkpoints are kept.

`writes` is True on the one process that writes this copy of the run folder (mmkd/writers.py): on
a shared folder that is process 0; on node-local disks one process per machine, so every machine
holds complete checkpoints with its own ranks' RNG states. Resuming takes the newest step that
every copy holds (`agreed_checkpoint`): a machine killed while publishing may be one step behind. The data position is the step: the schedule is a
function of (seed, step) and masks of (seed, example), so nothing else is needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from mmkd.atomic import publish, write_text
from mmkd.console import say
from mmkd.errors import MMKDError
from mmkd.writers import gather


class CheckpointError(MMKDError):
    pass


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda_{i}"] = s
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, meta: dict, accelerator,
                    keep: int = 3, writes: bool | None = None) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    # Never publish a checkpoint that holds NaN or inf: `latest` must always be a state to resume from.
    bad = [name for name, t in accelerator.unwrap_model(model).state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"step {step}: {len(bad)} tensors are not finite (e.g. {', '.join(bad[:3])}); "
                              "the checkpoint was not written and checkpoints/latest still names the last good one")
    writes = accelerator.is_main_process if writes is None else writes
    tmp = root / f"step-{step:07d}.tmp"
    if writes and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        tmp.mkdir(parents=True, exist_ok=True)     # by every rank: on node-local disks each machine has its own
        save_file(_rng_state(), str(tmp / f"rng-rank{accelerator.process_index}.safetensors"))
        if writes:
            save_model(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
    except Exception as e:    # a full disk, a quota (OSError, safetensors' SafetensorError): nothing half-written
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{tmp}: the checkpoint of step {step} could not be written ({_reason(e)}); it was "
                              "removed and checkpoints/latest still names the last complete one: free some space, "
                              "then --resume") from None
    accelerator.wait_for_everyone()
    if writes:
        try:
            (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2, sort_keys=True) + "\n")
            if final.exists():
                shutil.rmtree(final)
            publish(tmp, final)            # every file fsynced, renamed, the folder fsynced
            write_text(root / "latest", final.name + "\n")
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"{tmp}: the checkpoint of step {step} could not be written ({_reason(e)}); "
                                  "checkpoints/latest still names the last complete one: free some space, then "
                                  "--resume") from None
        done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "meta.json").is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def agreed_checkpoint(run_dir: Path, accelerator) -> Path | None:
    """The checkpoint to resume from: `latest`, or, when copies of a node-local run folder disagree (a
    machine killed while publishing), the newest step every copy still holds."""
    latest = latest_checkpoint(run_dir)
    steps = gather(int(latest.name.split("-")[1]) if latest else 0, accelerator)
    if len(set(steps)) == 1:
        return latest
    root = Path(run_dir) / "checkpoints"
    held = {int(p.name.split("-")[1]) for p in root.glob("step-*")
            if p.is_dir() and not p.name.endswith(".tmp") and (p / "meta.json").is_file()}
    common = sorted(set.intersection(*map(set, gather(sorted(held), accelerator))))
    if not common:
        raise CheckpointError(f"{run_dir}: the machines' copies of the run folder hold no common checkpoint (their "
                              f"latest steps: {steps}); start again with --overwrite")
    return root / f"step-{common[-1]:07d}"


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator) -> dict:
    """Restore everything in place; returns the checkpoint's meta (with its step)."""
    damaged = (f"the checkpoint {path} is damaged; move it away and write the previous step's name "
               f"(ls {path.parent}) into {path.parent / 'latest'}, or start again with --overwrite")
    try:
        meta = json.loads((path / "meta.json").read_text())
        missing, unexpected = load_model(accelerator.unwrap_model(model), str(path / "model.safetensors"), strict=True)
        # Loaded to the CPU, then moved by load_state_dict to each parameter's device: a saved storage's
        # tag ('cpu:0' under a multi-process CPU run) is not a location torch.load can map to.
        map_location = "cpu"
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if accelerator.scaler is not None:
            if (path / "scaler.pt").is_file():
                accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
            else:       # a checkpoint of an fp32/bf16 run resumed in fp16: the scaler starts afresh
                say(f"warning: {path} holds no scaler.pt (saved without fp16); the loss scale starts afresh", once=True)
    except Exception as e:   # safetensors' SafetensorError, torch's unpickling errors, OSError, ...
        if isinstance(e, FileNotFoundError):
            raise CheckpointError(f"{e.filename}: missing; {damaged}") from None
        raise CheckpointError(f"{str(e).splitlines()[0][:200]}: {damaged}") from None
    if missing or unexpected:  # pragma: no cover - strict=True raises first
        raise CheckpointError(f"{path}: missing {missing}, unexpected {unexpected}")
    rng = path / f"rng-rank{accelerator.process_index}.safetensors"
    if not rng.is_file():
        raise CheckpointError(f"{path}: no RNG state for rank {accelerator.process_index}; "
                              "resume with the same number of processes")
    try:
        _set_rng_state(load_file(str(rng)))
    except Exception as e:   # safetensors' SafetensorError, a truncated or foreign file
        raise CheckpointError(f"{rng}: unreadable ({_reason(e)}): {damaged}") from None
    return meta


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.splitlines()[0][:160] if text else type(e).__name__
