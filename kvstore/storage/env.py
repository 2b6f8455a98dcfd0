"""One node's LMDB environment: opening it, growing its map, and translating its errors.

Why this layer exists: py-lmdb gives us transactions, but three things around them are
easy to get wrong and must be right for a node that runs for months:

* Growth. LMDB refuses writes once the map (a fixed-size mmap) is full. We abort the
  transaction, double the map and run the whole transaction again, so callers never
  see MapFullError. Remapping is only legal while no transaction of this process is
  open, so every transaction holds the `Gate` shared and a resize takes it exclusive.
* Other processes. Worker processes open the same directory read-only. When the
  writer has grown the file past a reader's map, LMDB says MDB_MAP_RESIZED at
  txn begin; the reader adopts the new size (`set_mapsize(0)`) and retries.
* Errors. A full disk shows up as ENOSPC, or, when LMDB's page write comes up short,
  as EIO; either way the user gets `StorageFull` with one clear line, and what was
  committed before stays readable (LMDB never updated its meta page).
* Heap. LMDB mallocs a buffer for every page a write txn dirties and keeps the freed
  single-page ones on a free list until the environment is closed (malloc_trim cannot
  reach them): a snapshot install of 1M keys left ~120 MB of heap behind. `reopen`
  closes and opens the environment again, under the same gate as a remap, to give it back.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from kvstore.errors import StorageError, StorageFull

log = logging.getLogger("kvstore.storage")

T = TypeVar("T")
# An lmdb.Transaction. Always opened with buffers=False, so keys and values are
# bytes, while py-lmdb's stubs say bytes | memoryview; Any keeps mypy quiet about it.
Txn = Any

MAX_DBS = 8
# Worker processes each hold a reader slot per open read txn; the lock file costs
# 64 bytes a slot, so be generous (only the first opener's value counts).
MAX_READERS = 510
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# Opening creates the named databases outside the grow-and-retry loop, so the map
# must start big enough for them; anything smaller is raised to this.
MIN_MAP_SIZE = 64 * PAGE
# After LMDB reports EIO on commit, less free space than this on the filesystem means
# the real cause was a short write on a full disk (LMDB maps short writes to EIO).
_NEARLY_FULL = 1 << 20


class SnapshotInterrupted(StorageError):
    """The map grew, or the environment was reopened, while a long read (a snapshot) was
    open; start the snapshot again."""


def round_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    x = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        x /= 1024
        if x < 1024 or unit == "TiB":
            break
    return f"{x:.1f} {unit}"


class Gate:
    """Shared/exclusive gate: transactions enter shared, a remap enters exclusive.

    A waiting remap holds back new shared entries (else a steady stream of readers
    in other threads would starve it), except from threads that already hold the gate
    shared, so that a thread may nest shared entries without deadlocking. Entering
    exclusive from a thread that holds it shared is refused: it could never succeed.

    The shared side takes no lock unless a remap is waiting or running (a read costs
    ~0.3 µs here instead of ~1.8 with two lock round trips). It relies on the GIL making
    each dict store and attribute load atomic and ordered: a reader announces itself in
    `_holders` and then looks at the flags; a remap raises a flag and then looks at
    `_holders`. Whichever comes second sees the other, so the reader steps back and
    waits, or the remap waits for the reader. At every moment of acquire_exclusive
    `_waiting` or `_exclusive` is set (it raises `_exclusive` before it lowers
    `_waiting`), so no reader slips between them.
    """

    __slots__ = ("_lock", "_cond", "_holders", "_exclusive", "_waiting")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._holders: dict[int, int] = {}  # thread id -> shared entries it holds
        self._exclusive = False
        self._waiting = 0

    def acquire_shared(self) -> None:
        tid = threading.get_ident()
        holders = self._holders
        held = holders.get(tid, 0)
        holders[tid] = held + 1  # announce first, then look
        if held or not (self._waiting or self._exclusive):
            return
        with self._lock:  # a remap is waiting or running: step back until it is done
            del holders[tid]
            self._cond.notify_all()
            while self._exclusive or self._waiting:
                self._cond.wait()
            holders[tid] = 1

    def release_shared(self) -> None:
        tid = threading.get_ident()
        holders = self._holders
        n = holders[tid] - 1
        if n:
            holders[tid] = n
            return
        del holders[tid]
        if self._waiting:  # a remap may be waiting for us
            with self._lock:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        tid = threading.get_ident()
        with self._lock:
            if tid in self._holders:
                raise StorageError("cannot remap the store from inside one of its own transactions")
            self._waiting += 1
            try:
                while self._exclusive or self._holders:
                    self._cond.wait()
                self._exclusive = True  # before _waiting drops (see the class docstring)
            finally:
                self._waiting -= 1
                if not self._waiting:
                    self._cond.notify_all()  # readers held back by us may go (or wait on _exclusive)

    def release_exclusive(self) -> None:
        with self._lock:
            self._exclusive = False
            self._cond.notify_all()


class LongRead:
    """A read txn kept open across calls (snapshot streaming).

    It does not hold the gate between calls, so the node can keep writing (and
    growing the map) while a snapshot is sent; a remap or a reopen aborts it instead,
    and the next `run` raises SnapshotInterrupted.
    """

    def __init__(self, env: Env, txn: Txn) -> None:
        self._env = env
        self._txn: Txn | None = txn
        self.interrupted = False

    def run(self, fn: Callable[[Txn], T]) -> T:
        gate = self._env.gate
        gate.acquire_shared()
        try:
            txn = self._txn
            if txn is None:
                if self.interrupted:
                    raise SnapshotInterrupted(
                        f"snapshot of {self._env.path} was interrupted because the map grew or the store"
                        " was reopened (after a snapshot install); start it again"
                    )
                raise StorageError("snapshot read used after it was closed")
            try:
                return fn(txn)
            except lmdb.Error as exc:
                raise self._env.translate(exc, "read") from exc
        finally:
            gate.release_shared()

    def kill(self) -> None:
        """Abort the txn; called with the gate held exclusive (or shared by close)."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None

    def close(self) -> None:
        gate = self._env.gate
        gate.acquire_shared()
        try:
            self.kill()
        finally:
            gate.release_shared()
        self._env.long_reads.discard(self)


class Env:
    """Owns the lmdb.Environment and runs read and write transactions on it."""

    def __init__(self, path: Path, *, map_size: int, max_map_size: int, sync: bool, readonly: bool) -> None:
        if map_size <= 0:
            raise ValueError(f"map_size must be positive, got {map_size}")
        if max_map_size < 0:
            raise ValueError(f"max_map_size must be >= 0, got {max_map_size}")
        self.path = path
        self.readonly = readonly
        self.sync_on = sync and not readonly
        map_size = max(round_up(map_size), MIN_MAP_SIZE)
        self.max_map_size = max_map_size // PAGE * PAGE
        if self.max_map_size and map_size > self.max_map_size:
            raise ValueError(
                f"map_size {map_size} is larger than max_map_size {max_map_size} (the minimum map is {MIN_MAP_SIZE})"
            )
        self.gate = Gate()
        # Serialises this process's writers (LMDB would too, but we also need it to
        # make "abort, grow, retry" one step) and lets replace_all span several txns.
        self.write_lock = threading.RLock()
        self.long_reads: set[LongRead] = set()
        # Set by the apply view when a put/delete hit MapFullError, in case the
        # caller's function swallowed the exception.
        self.map_full_seen = False
        self.closed = False
        data_file = path / "data.mdb"
        try:
            if readonly:
                if not data_file.exists():
                    raise StorageError(f"no store at {path}: the node must create it first")
                # map_size 0: take the size the writer recorded. No set_mapsize here
                # except to adopt a size on MDB_MAP_RESIZED.
                self.env = lmdb.open(
                    str(path), subdir=True, readonly=True, lock=True, map_size=0,
                    max_dbs=MAX_DBS, max_readers=MAX_READERS,
                )  # fmt: skip
            else:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                size = map_size
                if data_file.exists():
                    # A map that grew earlier stays grown: start at least at the
                    # file's size instead of re-growing step by step.
                    size = max(size, round_up(data_file.stat().st_size))
                    if self.max_map_size:
                        size = min(size, self.max_map_size)  # LMDB raises it to the data size
                self.env = self._open_writable(size)
            # Slots left by readers that died (SIGKILL, OOM) pin old pages forever
            # and make the file grow; clear them now.
            self.stale_readers_cleared = int(self.env.reader_check())
        except lmdb.Error as exc:
            raise self.translate(exc, "open") from exc
        if self.stale_readers_cleared:
            log.info("storage %s: cleared %d stale reader slot(s)", path, self.stale_readers_cleared)

    def _open_writable(self, map_size: int) -> lmdb.Environment:
        """lmdb.open of the writable environment: one definition for __init__ and reopen."""
        return lmdb.open(
            str(self.path), subdir=True, readonly=False, lock=True, map_size=map_size,
            max_dbs=MAX_DBS, max_readers=MAX_READERS, writemap=False,
            # Meta pages are flushed by an explicit env.sync() after each durable
            # commit (below): LMDB's own meta sync costs ~2x more here, and with
            # metasync off a crash can only roll back the last txn, never corrupt.
            sync=self.sync_on, metasync=False, map_async=False, mode=0o700,
        )  # fmt: skip

    # -- errors ---------------------------------------------------------------

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def translate(self, exc: lmdb.Error, op: str) -> StorageError:
        code = getattr(exc, "code", 0)
        if isinstance(exc, lmdb.DiskError) or code in (errno.ENOSPC, errno.EDQUOT):
            free = self._free_bytes()
            return StorageFull(f"disk full: cannot {op} the store at {self.path} ({human(free or 0)} free)")
        if code == errno.EIO:
            free = self._free_bytes()
            if free is not None and free < _NEARLY_FULL:
                return StorageFull(
                    f"disk full: cannot {op} the store at {self.path} ({human(free)} free; LMDB saw a short write)"
                )
        if isinstance(exc, lmdb.ReadonlyError) and self.readonly:
            return StorageError(f"the store at {self.path} is open read-only")
        text = str(exc).replace("\n", " ")
        return StorageError(f"storage error ({op}) at {self.path}: {text}")

    def _check_open(self) -> None:
        if self.closed:
            raise StorageError(f"the store at {self.path} is closed")

    # -- transactions -----------------------------------------------------------

    def read(self, fn: Callable[[Txn], T]) -> T:
        """Run fn in a fresh read txn; values are copied out (buffers=False)."""
        gate = self.gate
        while True:
            gate.acquire_shared()
            try:
                # Checked inside the gate: a close, or a reopen that failed, sets it
                # while holding the gate exclusive.
                if self.closed:
                    raise StorageError(f"the store at {self.path} is closed")
                try:
                    txn = self.env.begin(buffers=False)
                except lmdb.MapResizedError:
                    pass  # adopt the writer's size below, outside the gate
                except lmdb.Error as exc:
                    raise self.translate(exc, "read") from exc
                else:
                    try:
                        return fn(txn)
                    except lmdb.Error as exc:
                        raise self.translate(exc, "read") from exc
                    finally:
                        txn.abort()
            finally:
                gate.release_shared()
            self._adopt_map_size()

    def long_read(self) -> LongRead:
        while True:
            self.gate.acquire_shared()
            try:
                self._check_open()
                try:
                    lr = LongRead(self, self.env.begin(buffers=False))
                except lmdb.MapResizedError:
                    pass
                except lmdb.Error as exc:
                    raise self.translate(exc, "read") from exc
                else:
                    self.long_reads.add(lr)
                    return lr
            finally:
                self.gate.release_shared()
            self._adopt_map_size()

    def write(self, fn: Callable[[Txn], T], durable: bool = True) -> T:
        """Run fn in one write txn and commit it (durable on disk when sync is on).

        durable=False: data pages are flushed but the meta page is not, so a system
        crash may roll this txn back (never corrupt it); for state that can be rebuilt,
        like entries applied from a durable log.

        fn may run more than once: after MapFullError the txn is aborted, the map
        grows and fn runs again from scratch, so fn must only act through the txn.
        """
        if self.readonly:
            raise StorageError(f"the store at {self.path} is open read-only")
        with self.write_lock:
            while True:
                self._check_open()
                outcome = self._write_once(fn, durable)
                if outcome is _MAP_FULL:
                    self._grow()
                elif outcome is _RESIZED:
                    self._adopt_map_size()
                else:
                    return outcome  # type: ignore[return-value]

    def _write_once(self, fn: Callable[[Txn], T], durable: bool = True) -> Any:
        gate = self.gate
        gate.acquire_shared()
        try:
            try:
                txn = self.env.begin(write=True, buffers=False)
            except lmdb.MapResizedError:
                return _RESIZED
            except lmdb.Error as exc:
                raise self.translate(exc, "write") from exc
            self.map_full_seen = False
            try:
                result = fn(txn)
                if self.map_full_seen:
                    txn.abort()
                    return _MAP_FULL
                txn.commit()
                if durable and self.sync_on:
                    self.env.sync(True)
                return result
            except lmdb.MapFullError:
                txn.abort()
                return _MAP_FULL
            except lmdb.Error as exc:
                txn.abort()
                if self.map_full_seen:  # a swallowed MapFullError left the txn unusable
                    return _MAP_FULL
                raise self.translate(exc, "write") from exc
            except BaseException:
                txn.abort()
                raise
        finally:
            gate.release_shared()

    # -- map size ---------------------------------------------------------------

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def _grow(self) -> None:
        cur = self.map_size()
        new = cur * 2
        if self.max_map_size:
            if cur >= self.max_map_size:
                raise StorageFull(
                    f"store at {self.path} is full: its map reached max_map_size ({human(self.max_map_size)})"
                )
            new = min(new, self.max_map_size)
        self._remap(new)
        log.info("storage %s: map grown from %s to %s", self.path, human(cur), human(new))

    def _adopt_map_size(self) -> None:
        self._remap(0)

    def _interrupt_long_reads(self) -> None:
        """With the gate exclusive: abort every long read; its next use raises SnapshotInterrupted."""
        for lr in list(self.long_reads):
            lr.kill()
            lr.interrupted = True
        self.long_reads.clear()

    def _remap(self, size: int) -> None:
        self.gate.acquire_exclusive()
        try:
            self._interrupt_long_reads()
            try:
                self.env.set_mapsize(size)
            except lmdb.Error as exc:
                raise self.translate(exc, "grow") from exc
        finally:
            self.gate.release_exclusive()

    # -- reopening ----------------------------------------------------------------

    def reopen(self, after: Callable[[], None]) -> None:
        """Close the LMDB environment and open it again, to give its heap back.

        LMDB keeps the page buffers its write txns malloc'd on a free list until the
        environment is closed, so a txn that dirtied a large part of the map (the swap
        of a snapshot install) leaves that much heap resident for good; closing frees
        it. Runs under `write_lock` with the gate exclusive, as a remap: no transaction
        of this process is open. Long reads are killed (their next use raises
        SnapshotInterrupted). `after` runs before the gate is released, to replace
        every handle of the old environment (the Store's db handles), so no thread
        ever runs a txn with a stale one. If opening again (or `after`) fails, the Env
        is closed and StorageError raised: the node must stop.
        """
        if self.readonly:
            raise StorageError(f"the store at {self.path} is open read-only")
        with self.write_lock:
            self._check_open()
            self.gate.acquire_exclusive()
            try:
                self._interrupt_long_reads()
                size = self.map_size()
                self.env.close()
                try:
                    self.env = self._open_writable(size)
                    cleared = int(self.env.reader_check())
                    after()
                except BaseException as exc:
                    self.closed = True  # every later call says so, instead of using a dead env
                    self.env.close()  # the new one, or the old one again (a no-op)
                    if not isinstance(exc, Exception):
                        raise
                    why = self.translate(exc, "reopen") if isinstance(exc, lmdb.Error) else exc
                    raise StorageError(
                        f"cannot reopen the store at {self.path}, it is closed now ({why})"
                    ) from exc
            finally:
                self.gate.release_exclusive()
        if cleared:
            log.info("storage %s: cleared %d stale reader slot(s) on reopen", self.path, cleared)

    def close(self) -> None:
        if self.closed:
            return
        with self.write_lock:
            self.gate.acquire_exclusive()
            try:
                for lr in list(self.long_reads):
                    lr.kill()
                self.long_reads.clear()
                self.closed = True
                self.env.close()
            finally:
                self.gate.release_exclusive()


_MAP_FULL = object()
_RESIZED = object()
