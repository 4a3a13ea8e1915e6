"""One writer per distinct folder, among all the processes of a run.

A run folder (`--out`) may be one shared folder (NFS, Lustre) or a node-local path that exists once
per machine. Which it is cannot be told from a path, so the folder itself decides: every process
tries to create the same claim file (`.writer-<token>`, the token drawn by process 0 and shared)
with O_EXCL. In each distinct folder exactly one process succeeds; it is that folder's writer (its
lock, config.json, checkpoints). After everyone has tried, the writer removes the claim.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path


CLAIM = re.compile(r"\.writer-[0-9a-f]{16}")


def elect(folder: Path, accelerator) -> tuple[bool, bool]:
    """(this process writes `folder`, `folder` existed before this call). Makes the folder."""
    from accelerate.utils import broadcast_object_list   # lazy: accelerate, see mmkd/__init__.py
    existed = folder.exists()
    if accelerator.num_processes == 1:
        folder.mkdir(parents=True, exist_ok=True)
        return True, existed
    token = broadcast_object_list([secrets.token_hex(8) if accelerator.is_main_process else None])[0]
    accelerator.wait_for_everyone()                 # everyone saw whether it existed before anyone made it
    folder.mkdir(parents=True, exist_ok=True)
    claim = folder / f".writer-{token}"
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        won = True
    except FileExistsError:
        won = False
    accelerator.wait_for_everyone()
    if won:
        claim.unlink()
    return won, existed


def gather(value, accelerator) -> list:
    """`value` of every process, in rank order."""
    from accelerate.utils import gather_object   # lazy: accelerate, see mmkd/__init__.py
    if accelerator.num_processes == 1:
        return [value]
    return gather_object([value])


__all__ = ["elect", "gather", "CLAIM"]
