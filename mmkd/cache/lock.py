"""One writer per cache: `<cache>/lock` names the process writing it (pid, host, start time).

`cache-teacher` (with or without `--resume`) takes the lock before it touches the folder and
removes it when it ends, also on an error. A lock left by a process that died (kill -9, a crash)
on this host is recognised as stale (no process has its pid) and taken over; one held by a live
process, or by another host, is a refusal naming the holder. On a local disk the lock is created
atomically (O_EXCL); on an object store two writers starting within the same instant are not
excluded (say so in docs/failures.md).
"""

from __future__ import annotations

import json
import os
import socket
import time

from fsspec.implementations.local import LocalFileSystem

from mmkd.errors import CacheError

LOCK = "lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


class CacheLock:
    def __init__(self, fs, root: str, url: str):
        self.fs, self.path, self.url = fs, f"{root}/{LOCK}", url
        self.held = False

    def _holder(self) -> dict:
        try:
            with self.fs.open(self.path, "r") as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError, ValueError):
            return {}

    def _create(self, record: str) -> bool:
        if isinstance(self.fs, LocalFileSystem):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(record)
            return True
        if self.fs.exists(self.path):
            return False
        with self.fs.open(self.path, "w") as f:
            f.write(record)
        return True

    def acquire(self, say=print) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        record = json.dumps(me) + "\n"
        for _ in range(2):
            if self._create(record):
                self.held = True
                return
            holder = self._holder()
            pid, host = holder.get("pid"), holder.get("host")
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                say(f"{self.url}: taking over the lock of process {pid}, which is gone (interrupted run)")
                self.fs.rm(self.path)
                continue
            raise CacheError(
                f"{self.url} is being written by process {pid} on {host} (since {holder.get('started')}); "
                f"wait for it to finish. If that process is gone, delete {self.path} and run again with --resume")
        raise CacheError(f"{self.url}: could not take the lock {self.path}; run again")

    def release(self) -> None:
        if self.held and self._holder().get("pid") == os.getpid():
            self.fs.rm(self.path)
        self.held = False
