"""Publishing atomically and durably: write aside, fsync what was written, rename it over the target,
fsync the folder that holds it (what HF datasets and torch's distributed checkpoints do).

A reader sees the old file (or folder) or the whole new one; and after a power cut the rename cannot
survive over an empty or partial file, because the data reached the disk before the folder entry
that names it. Every publishing rename in mmkd goes through `publish` (local paths) or `fs_publish`
(any fsspec filesystem: on an object store one object's upload is already atomic and there is
nothing to fsync)."""

from __future__ import annotations

import os
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem


def _fsync_path(path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:          # a folder that cannot be opened (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:          # a filesystem that cannot fsync a folder
        pass
    finally:
        os.close(fd)


def fsync_folder(folder) -> None:
    """Make the entries (a rename, a new file) of `folder` durable."""
    _fsync_path(folder, os.O_RDONLY)


def fsync_tree(path) -> None:
    """fsync a file, or every file and folder under a folder (folders after their contents)."""
    path = Path(path)
    if path.is_symlink():
        return
    if path.is_file():
        _fsync_path(path, os.O_RDONLY)
        return
    for top, dirs, files in os.walk(path, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(top, name)):
                _fsync_path(os.path.join(top, name), os.O_RDONLY)
        fsync_folder(top)


def publish(tmp, final) -> None:
    """Rename the complete `tmp` (a file or a folder) to `final`, durably."""
    fsync_tree(tmp)
    os.replace(tmp, final)
    fsync_folder(Path(final).parent)


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes(path, data: bytes) -> None:
    """Replace the file `path` by `data` atomically and durably."""
    path = Path(path)
    tmp = _aside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def fs_publish(fs, tmp: str, final: str) -> None:
    """`publish` on a local filesystem; a plain move elsewhere (an object store's put is atomic)."""
    if is_local(fs):
        publish(tmp, final)
    else:
        fs.mv(tmp, final, recursive=True)


def fs_write_text(fs, path: str, text: str) -> None:
    """Replace `path` on any fsspec filesystem by `text`, atomically (and durably where local)."""
    fs_write_bytes(fs, path, text.encode("utf-8"))


def fs_write_bytes(fs, path: str, data: bytes) -> None:
    """`write_bytes` on a local filesystem; one put elsewhere."""
    if is_local(fs):
        write_bytes(path, data)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)
