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

Where the filesystem has no flock, `MMKD_LOCK=file` takes a soft lock instead: the file
`lock.held`, created with O_EXCL (atomic on local disks, NFSv3+ and Lustre) and holding the holder's
record, removed on release. A holder killed by kill -9 leaves it: the next writer is refused, naming
the holder, and told to delete it once that process is gone.

The lock file is opened without following links and must be a plain file that is empty or holds a
holder's record: a link or a user's own file named `lock` is refused, never emptied. A filesystem
without flock (NFS or Lustre mounted without it answer ENOSYS/ENOLCK) is named as such, not
reported as another writer.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time

from fsspec.implementations.local import LocalFileSystem

from mmkd.errors import MMKDError

LOCK = "lock"
HELD = "lock.held"                   # MMKD_LOCK=file's soft lock
LOCK_FILES = {LOCK, HELD}
DEAD_HOLDER_WAIT = 15.0   # seconds; PyTorch's data-loader workers check for their parent every 5 s
_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def mode() -> str:
    """MMKD_LOCK: `flock` (the default) or `file` (for filesystems without flock)."""
    value = os.environ.get("MMKD_LOCK", "flock") or "flock"
    if value not in ("flock", "file"):
        raise MMKDError(f"MMKD_LOCK={value!r}: it is `flock` (the default) or `file` (a soft lock for filesystems "
                        "without flock; docs/failures.md)")
    return value


class Lock:
    def __init__(self, fs, folder: str, url: str, what: str, error=MMKDError):
        self.fs, self.path, self.url, self.what, self.error = fs, f"{folder}/{LOCK}", url, what, error
        self.fd: int | None = None
        self.soft: str | None = None         # the MMKD_LOCK=file lock this process made
        self.held = False

    def _record(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"

    def _flock(self, fd: int) -> None:
        """flock(fd) without blocking; while the recorded holder is a process of this machine that is
        gone (a run killed with kill -9), tried again for up to DEAD_HOLDER_WAIT seconds: its
        data-loader workers inherited the lock and each exits within seconds of its parent."""
        import fcntl   # lazy: POSIX only, and only a local folder takes an flock

        deadline = time.monotonic() + DEAD_HOLDER_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline \
                        or not self._holder_gone():
                    raise
                time.sleep(0.1)

    def _holder_gone(self) -> bool:
        """Is the process recorded in the lock file one of this machine's that no longer runs?"""
        try:
            with self.fs.open(self.path, "r") as f:
                h = json.load(f)
            if h["host"] != socket.gethostname():
                return False
            os.kill(int(h["pid"]), 0)
        except ProcessLookupError:
            return True
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return False

    def _holder(self) -> str:
        try:
            with self.fs.open(self.path, "r") as f:
                h = json.load(f)
            return f"process {h['pid']} on {h['host']} (since {h['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> None:
        if isinstance(self.fs, LocalFileSystem) and mode() == "file":
            self._acquire_soft()
            return
        if isinstance(self.fs, LocalFileSystem):
            import fcntl   # lazy: POSIX only, and only a local folder takes an flock

            fd = self._open_local()
            try:
                self._flock(fd)
            except OSError as e:
                os.close(fd)
                if e.errno in _NO_FLOCK:
                    raise self.error(f"{self.path}: this filesystem cannot lock files ({os.strerror(e.errno)}: NFS "
                                     "or Lustre mounted without flock); mount it with flock (Lustre: -o flock), "
                                     "write on a local disk, or set MMKD_LOCK=file for a soft lock "
                                     "(docs/failures.md)") from None
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise self.error(f"{self.path}: cannot lock it ({os.strerror(e.errno)})") from None
                raise self.error(f"{self.url} is being written by {self._holder()} ({self.what}); wait for it to "
                                 "finish, or stop it") from None
            try:
                self._check_ours(fd)
            except BaseException:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise
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

    def _acquire_soft(self) -> None:
        held = f"{self.path[:-len(LOCK)]}{HELD}"
        try:
            fd = os.open(held, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            holder = self._holder_of(held)
            raise self.error(f"{self.url} is being written by {holder} ({self.what}; MMKD_LOCK=file); wait for it to "
                             f"finish. If that process is gone, delete {held}") from None
        except OSError as e:
            raise self.error(f"{held}: cannot create the lock file ({e.strerror})") from None
        try:
            os.write(fd, self._record().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.soft, self.held = held, True

    def _holder_of(self, path: str) -> str:
        saved, self.path = self.path, path
        try:
            return self._holder()
        finally:
            self.path = saved

    def _open_local(self) -> int:
        """Open (or create) the lock file, never through a link and never anything but a plain file: a
        link named `lock` would have mmkd empty the file it points to."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0),
                         0o644)
        except OSError as e:
            if os.path.islink(self.path) or e.errno == errno.ELOOP:
                raise self.error(f"{self.path} is a link (to {os.path.realpath(self.path)}); mmkd never locks "
                                 "through a link: remove the link") from None
            raise self.error(f"{self.path}: cannot create the lock file ({e.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self.error(f"{self.path} is not a plain file; mmkd's lock file must be: move it away")
        return fd

    def _check_ours(self, fd: int) -> None:
        """The file holds nothing (a released lock) or a holder's record (one killed): mmkd's. Anything
        else is a user's file named `lock`, which must not be emptied."""
        size = os.fstat(fd).st_size
        if not size:
            return
        data = os.pread(fd, min(size, 4096), 0) if size <= 4096 else b""
        try:
            record = json.loads(data.decode("utf-8"))
            if isinstance(record, dict) and {"pid", "host", "started"} <= set(record):
                return
        except (UnicodeDecodeError, ValueError):
            pass
        raise self.error(f"{self.path} ({size} bytes) is not an mmkd lock file; it was left as it is: move it away, "
                         "or choose another folder")

    def release(self) -> None:
        if not self.held:
            return
        if self.soft is not None:
            try:
                os.unlink(self.soft)
            except OSError:
                pass
            self.soft = None
        elif self.fd is not None:
            import fcntl   # lazy: POSIX only, and only a local folder takes an flock

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
