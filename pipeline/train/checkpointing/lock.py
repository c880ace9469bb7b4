"""One run at a time in a run directory: an exclusive flock on RUN/run.lock, held by global rank 0
from start-up to the end of the run.

    lock = lock_run(run_dir, main, comm)   # collective: UserError on every rank if it is taken
    lock.release()                         # (RunLock(run_dir).acquire() -> None | the holder)
    RunLock(run_dir).holder()              # who holds it, taking nothing (lai-train --check)

The OS drops a flock when its process ends, however it ends (kill -9 included), so the file a
killed run leaves behind never blocks the next one; it only keeps the holder's pid, host, start
time and command, which a second run names in its error. A filesystem that refuses flock (some
Lustre or NFS mounts) gets a warning, and the run goes on unlocked.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from pipeline.comm import Comm
from pipeline.errors import UserError

LOCK_NAME = "run.lock"


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock (None), or say who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)   # no truncation: the holder's line
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            return holder or "another process"
        except OSError as e:
            os.close(fd)
            print(f"warning: {self.path}: cannot lock ({e.strerror}); a second run into this "
                  "run.out_dir would not be stopped", file=sys.stderr, flush=True)
            return None
        command = " ".join(sys.argv)[:300]
        line = (f"pid {os.getpid()} on {socket.gethostname()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {command}\n")
        os.ftruncate(fd, 0)
        os.pwrite(fd, line.encode(), 0)
        self._fd = fd
        return None

    def holder(self) -> str | None:
        """Who holds the lock now, or None; creates and changes nothing (the launcher's check)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:                                   # no lock file (or no run dir): free
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        except OSError:
            return None
        finally:
            os.close(fd)                                  # drops our shared lock, if taken
        return None

    def release(self) -> None:
        """Drop the lock (the file stays, with the last holder's line)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.release()


def lock_run(run_dir: str | os.PathLike, main: bool, comm: Comm) -> RunLock:
    """Rank 0 (`main`) takes the run directory's lock; if another run holds it, every rank raises
    the same one-line UserError naming the holder. Collective."""
    lock = RunLock(run_dir)
    holder = comm.gather_objects(lock.acquire() if main else None)[0]
    if holder:
        raise in_use(run_dir, holder)
    return lock


def in_use(run_dir: str | os.PathLike, holder: str) -> UserError:
    return UserError(f"run.out_dir: {run_dir} is in use by another run ({holder}); wait for it "
                     "to end, or give this run another run.out_dir")
