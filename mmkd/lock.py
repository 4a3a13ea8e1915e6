"""One writer at a time: the lock of a cache (`cache-teacher`, `cache upgrade`) and of a run folder
(`train`).

On a local disk the lock is `fcntl.flock` on the file `lock`, held on an open descriptor for as
long as the writer runs: the kernel gives it to one process only, however many ask at the same
instant, and takes it back when the holder exits, even by kill -9, so there is no stale lock to take
over and no race in taking one over. The file stays when the lock is released (emptied): removing
it would let a process that opened it just before lock an unlinked file while a third locks a new
one. While held it names the holder (pid, host, start), for the refusal message. On an object store (an fsspec URL) there is no such primitive: the lock is a file
created if absent, which two writers starting within the same instant can both pass
(docs/failures.md says so).
"""

from __future__ import annotations

import json
import os
import socket
import time

from fsspec.implementations.local import LocalFileSystem

from mmkd.errors import MMKDError

LOCK = "lock"


class Lock:
    def __init__(self, fs, folder: str, url: str, what: str, error=MMKDError):
        self.fs, self.path, self.url, self.what, self.error = fs, f"{folder}/{LOCK}", url, what, error
        self.fd: int | None = None
        self.held = False

    def _record(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"

    def _holder(self) -> str:
        try:
            with self.fs.open(self.path, "r") as f:
                h = json.load(f)
            return f"process {h['pid']} on {h['host']} (since {h['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> None:
        if isinstance(self.fs, LocalFileSystem):
            import fcntl

            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self.error(f"{self.url} is being written by {self._holder()} ({self.what}); wait for it to "
                                 "finish, or stop it") from None
            os.ftruncate(fd, 0)
            os.write(fd, self._record().encode())
            self.fd, self.held = fd, True
            return
        if self.fs.exists(self.path):
            raise self.error(f"{self.url} is being written by {self._holder()} ({self.what}); wait for it to finish. "
                             f"If that process is gone, delete {self.path}")
        with self.fs.open(self.path, "w") as f:
            f.write(self._record())
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        if self.fd is not None:
            import fcntl

            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        else:
            try:
                self.fs.rm(self.path)
            except OSError:
                pass
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
