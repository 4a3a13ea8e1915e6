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


def save_student(out: Path, model, tokenizer, run_meta: dict, manifests: dict, teacher_source: str,
                 start: str, trust_remote_code: bool = False) -> Path:
    from safetensors.torch import save_model

    from mmkd.console import quiet_transformers
    from mmkd.hf import starting_extras
    from mmkd.model_card import CARD, RUN_FILE, card_text

    dest, tmp = out / "student", out / "student.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    student = model.student
    extras = starting_extras(start, student, trust_remote_code)
    with quiet_transformers():
        student.save_pretrained(tmp, state_dict={**student.state_dict(), **extras})
        tokenizer.save_pretrained(tmp)
    (tmp / RUN_FILE).write_text(json.dumps(run_meta, indent=2, sort_keys=True) + "\n")
    for name, manifest in manifests.items():
        (tmp / f"cache-manifest-{name}.json").write_text(json.dumps(manifest.raw, indent=2, sort_keys=True) + "\n")
    (tmp / CARD).write_text(card_text(run_meta, manifests, teacher_source=teacher_source), encoding="utf-8")
    heads = torch.nn.ModuleDict(model.head_modules())
    save_model(heads, str(out / "heads.safetensors"))
    if dest.exists():   # a finished run saved again (e.g. --overwrite was not needed): swap
        old = out / "student.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old)
    else:
        os.replace(tmp, dest)
    return dest
