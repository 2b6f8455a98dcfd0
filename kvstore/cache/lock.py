"""The writer mutex of a shared-memory cache: one POSIX semaphore, made crash-safe.

A POSIX semaphore has no owner, so a process SIGKILLed while holding it would wedge every
writer forever. The holder therefore records itself in the segment header (pid, process
start time, acquire time, and an epoch bumped on every acquire). A writer whose wait times
out looks at that record: if the holder is dead (no such pid, a zombie, or a pid reused by
a younger process), it takes the lock over instead of waiting for a release that will never
come, and repairs whatever the dead holder left half-written.

Several waiters may notice the same dead holder at once; exactly one must take over. They
arbitrate with a non-blocking flock() on the segment's own file descriptor: the kernel drops
a flock when its holder dies, so this arbitration cannot wedge, and the winner re-checks that
the record still names the dead holder before taking over.

The one unprotected window is between sem_wait() returning and the holder's record being
written (a few instructions). A holder killed exactly there leaves pid 0; a waiter that sees
the same pid-0 record across two whole timeouts treats the holder as dead.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable

import posix_ipc

from kvstore.cache.errors import CacheLockTimeout

# pid u32, pad u32, pid start time u64 (clock ticks since boot), acquired at f64 (time.time()), epoch u64
LOCK_INFO = struct.Struct("<IIQdQ")


def proc_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (Linux /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


_self_start: tuple[int, int | None] = (0, None)


def self_identity() -> tuple[int, int]:
    """(pid, start time) of this process; cached, but re-read after a fork."""
    global _self_start
    pid = os.getpid()
    if _self_start[0] != pid:
        _self_start = (pid, proc_start_time(pid))
    return pid, _self_start[1] or 0


def pid_alive(pid: int, start: int) -> bool:
    """Whether process `pid` (started at `start`, 0 = unknown) is still running.

    A zombie counts as dead: a SIGKILLed child that its parent has not reaped yet holds no
    lock any more. A different start time means the pid was reused by another process.
    """
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        data = b""
    if data:
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):
            return False
        return not start or int(fields[19]) == start
    try:  # no /proc (not Linux): the signal-0 probe is the best we have
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLock:
    """Semaphore-based mutex with dead-holder takeover. Not re-entrant."""

    def __init__(
        self,
        sem: posix_ipc.Semaphore,
        mm: mmap.mmap,
        fd: int,
        info_offset: int,
        *,
        timeout: float,
        max_wait: float,
        on_takeover: Callable[[], None],
    ) -> None:
        self._sem = sem
        self._mm = mm
        self._fd = fd
        self._off = info_offset
        self.timeout = timeout
        self.max_wait = max_wait
        self._on_takeover = on_takeover

    def read_info(self) -> tuple[int, int, float, int]:
        """(pid, start, acquired_at, epoch) of the current holder; pid 0 when free."""
        pid, _, start, at, epoch = LOCK_INFO.unpack_from(self._mm, self._off)
        return pid, start, at, epoch

    def _claim(self, epoch: int) -> None:
        pid, start = self_identity()
        LOCK_INFO.pack_into(self._mm, self._off, pid, 0, start, time.time(), epoch + 1)

    def acquire(self, max_wait: float | None = None) -> None:
        patience = self.max_wait if max_wait is None else max_wait
        deadline = time.monotonic() + patience
        seen: tuple[int, int] | None = None
        while True:
            try:
                self._sem.acquire(self.timeout)
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:
                continue
            else:
                self._claim(self.read_info()[3])
                return
            pid, start, _, epoch = self.read_info()
            if pid == 0:
                dead = seen == (0, epoch)  # nobody got further for a whole timeout
            else:
                dead = not pid_alive(pid, start)
            seen = (pid, epoch)
            if dead and self._take_over(pid, start, epoch):
                return
            if time.monotonic() >= deadline:
                raise CacheLockTimeout(f"cache writer lock held by live pid {pid} for over {patience:.1f}s")

    def _take_over(self, pid: int, start: int, epoch: int) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another waiter is recovering; go back to waiting on the semaphore
        try:
            cur_pid, cur_start, _, cur_epoch = self.read_info()
            if (cur_pid, cur_start, cur_epoch) != (pid, start, epoch):
                return False  # someone else recovered first, or the holder moved on
            self._claim(epoch)
            try:
                self._on_takeover()
            except BaseException:
                self.release()
                raise
            return True
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self) -> None:
        epoch = self.read_info()[3]
        LOCK_INFO.pack_into(self._mm, self._off, 0, 0, 0, 0.0, epoch)
        self._sem.release()
