"""`<run>/student/`: the trained student as a Hugging Face model folder a user can publish as it is.

The trained encoder and MLM head, plus every tensor of the starting checkpoint MMKD does not train
(pooler, other pre-training heads) unchanged, the tokenizer, the run's settings and the cache
manifests it read, and a model card. Written into `student.tmp/` and renamed, so a `student/`
folder is always complete. The heads MMKD trains besides the student go to `<run>/heads.safetensors`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_model

from mmkd.atomic import publish
from mmkd.config import TrainingError
from mmkd.console import quiet_transformers
from mmkd.hf import starting_extras
from mmkd.model_card import CARD, RUN_FILE, card_text


def save_student(out: Path, model, tokenizer, run_meta: dict, manifests: dict, teacher_source: str,
                 start: str, trust_remote_code: bool = False) -> Path:
    """Write `<run>/student/` (and `<run>/heads.safetensors`) completely or not at all. A full disk
    is one line; the half-written `student.tmp/` is removed."""
    dest, tmp = out / "student", out / "student.tmp"
    try:
        _write(tmp, out, model, tokenizer, run_meta, manifests, teacher_source, start, trust_remote_code)
    except Exception as e:    # OSError, safetensors' SafetensorError, tokenizers' errors on a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingError(f"{tmp}: the trained student could not be saved ({reason(e)}); it was removed. The last "
                            f"checkpoint is complete: free some space, then run the same command with --resume") from None
    if dest.exists():   # a finished run saved again (e.g. --overwrite was not needed): swap
        old = out / "student.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
        publish(tmp, dest)
        shutil.rmtree(old)
    else:
        publish(tmp, dest)
    return dest


def _write(tmp: Path, out: Path, model, tokenizer, run_meta, manifests, teacher_source, start, trust_remote_code):
    if tmp.exists():
        shutil.rmtree(tmp)
    student = model.student
    extras = starting_extras(start, student, trust_remote_code)
    with quiet_transformers():
        student.save_pretrained(tmp, state_dict={**student.state_dict(), **extras})
        tokenizer.save_pretrained(tmp)
    for name, manifest in manifests.items():
        (tmp / f"cache-manifest-{name}.json").write_text(json.dumps(manifest.raw, indent=2, sort_keys=True) + "\n")
    (tmp / CARD).write_text(card_text(run_meta, manifests, teacher_source=teacher_source), encoding="utf-8")
    # The files this folder holds, so that `--overwrite` can tell them from a file a user put there.
    files = sorted({str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()} | {RUN_FILE})
    (tmp / RUN_FILE).write_text(json.dumps({**run_meta, "files": files}, indent=2, sort_keys=True) + "\n")
    heads = torch.nn.ModuleDict(model.head_modules())
    aside = out / "heads.safetensors.tmp"
    save_model(heads, str(aside))
    publish(aside, out / "heads.safetensors")


def reason(e: Exception) -> str:
    """The one-line reason of a write failure (errno text, or the library's first line)."""
    text = getattr(e, "strerror", None) or str(e)
    return text.splitlines()[0][:160] if text else type(e).__name__
