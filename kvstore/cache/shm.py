"""ShmCache: a fixed-size hash table in one POSIX shared-memory segment.

The node writes it as it applies committed entries; any local process maps it and reads
without locks or system calls. Bounded memory: the segment never grows; when full, the
oldest entries go.

Segment layout (byte offsets; the header little-endian, the rest in native byte order:
the segment never leaves its host; constants and structs in layout.py)::

    0      header, 4096 bytes
           0   magic "KVSCACHE"         8   version u32       12  header size u32
           16  size_bytes u64           24  nslots u32 (2^k)  28  window u32
           32  ring_off u64             40  ring_cap u64      48  max_value u32
           52  max_key u32              56  lock_timeout f64  64  nstripes u32
           96  creator pid u32          100 retired u32       104 creator start time u64
           112 generation u64  (bumped by every reset and every lock recovery)
           128 writer lock: holder pid u32, pad, holder start time u64,
               acquired at f64 (unix time), lock epoch u64
           192 ring head u64  (next write position, relative to ring_off)
           256 counters u64: puts deletes evictions rejected lock_recoveries resets wraps clears
    4096   stripe versions: nstripes (min(nslots, 4096)) u64; slot i is in stripe
           i & (nstripes - 1), and every change to a slot happens inside an odd/even
           bump of its stripe (readers' memos check these, see reader.py)
    slots_off = 4096 + 8 * nstripes
           slots: nslots + window - 1 slots of 32 bytes
           0   seq u64        even = stable, odd = being written (seqlock)
           8   key offset u32    12  value offset u32 (= key end)    16  value end u32
           20  checksum u32 (xxh32 of the value)                     24  key hash u64 (xxh3_64; 0 = empty)
    ring_off   ring of records, ring_cap bytes, tiled end to end
           0   record length u32 (8-aligned, header included)   4  owning slot u32
           8   key bytes, then value bytes, then padding

A key lives in one of the `window` slots following its home slot ((hash >> 5) & (nslots - 1)),
and its bytes in a record of the ring. Records are written at the ring head; the head
evicts whatever records it runs over (FIFO), and a full window evicts its oldest entry
(the one the head will reach first). A slot and its record belong together: before any
record byte is overwritten, the slot pointing at it has been cleared (seq bumped), so a
reader holding stale offsets always fails its seq check.

Readers (get, reader.py): hash, read the home slot (seq, offsets), compare the key bytes,
copy the value, re-read seq: equal and even means the copy is one the writer finished.
Otherwise scan the window, retrying a bounded number of times; a slot stuck odd (its
writer died) reads as a miss. Each process also memoises what it read, served only while
the slot's stripe version is unchanged. On x86 the loads happen in program order (TSO),
which a seqlock needs; elsewhere `verify_reads` (default on non-x86) also checks the
value's checksum.

Writers (put, delete, clear) hold the writer lock (lock.py): one POSIX semaphore with the
holder's pid in the header; a dead holder is taken over after `lock_timeout`, and the
taker clears the slots it left odd (repair()). Every crash point in put leaves the ring
tiled and each slot either stable or odd, so repair never needs more than that.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import posix_ipc
import xxhash

from kvstore.cache import layout as L
from kvstore.cache.errors import CacheError, CacheInUse, CacheLockTimeout, CacheNotFound
from kvstore.cache.lock import WriterLock, pid_alive, self_identity
from kvstore.cache.reader import reader_parts
from kvstore.cache.table import Table

_DEBUG_STALL_ENV = "KVSTORE_CACHE_DEBUG_STALL"  # test hook: stop a writer at "locked", "ring" or "slot_odd"
_X86 = os.uname().machine.lower() in ("x86_64", "amd64", "i386", "i686")


def _check_name(name: str) -> None:
    if not name.startswith("/") or "/" in name[1:] or not 2 <= len(name) <= 200:
        raise ValueError(f"bad shared-memory name {name!r}: want '/' followed by up to 199 chars, no '/'")


def _unlink_names(name: str, *, segment: bool = True) -> None:
    if segment:
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass
    try:
        posix_ipc.unlink_semaphore(name)
    except posix_ipc.ExistentialError:
        pass


Buffer = L.Buffer


def _closed_get(key: Buffer) -> bytes | None:
    raise ValueError("ShmCache is closed")


def _closed_many(keys: list[bytes]) -> list[bytes | None]:
    raise ValueError("ShmCache is closed")


class ShmCache:
    """See the module docstring. Create with create() (the node) or attach() (anyone)."""

    # Set per instance: closures, for speed (see reader.py).
    get: Callable[[Buffer], bytes | None]  # this process's memo, then the table
    peek: Callable[[Buffer], bytes | None]  # the memo alone: no look at the table
    peek_framed: Callable[[list[bytes]], list[bytes | None]]  # peek of each key, as RESP bulk strings
    lookup: Callable[[Buffer], bytes | None]  # the table alone (a hit is memoised)

    def __init__(
        self,
        name: str,
        shm: Any,
        mm: mmap.mmap,
        sem: Any,
        *,
        lock_wait: float = 30.0,
        verify_reads: bool | None = None,
        memo_entries: int = 65536,
        memo_bytes: int = 16 << 20,
    ) -> None:
        self.name = name
        self._shm, self._mm, self._sem = shm, mm, sem
        _, _, lock_timeout, geo = L.Geometry.unpack_from(mm)
        self._geo = geo
        self._table = Table(mm, geo, stall=lambda point: self._stall(point))
        self.verify_reads = (not _X86) if verify_reads is None else verify_reads
        self._lock = WriterLock(
            sem,
            mm,
            shm.fd,
            L.LOCK_OFF,
            timeout=lock_timeout,
            max_wait=lock_wait,
            on_takeover=self._table.repair,
        )
        self._stall_at = os.environ.get(_DEBUG_STALL_ENV)
        self._creator = L.OWNER.unpack_from(mm, L.OWNER_OFF)[0:3:2]  # (pid, start): this incarnation
        self._closed = False
        r = reader_parts(mm, geo, self.verify_reads, memo_entries, memo_bytes)
        self.get, self.peek, self.lookup = r.get, r.peek, r.lookup
        self.peek_framed = r.peek_framed
        self._read_counters, self._release_reader = r.counters, r.release

    # ---------------------------------------------------------------- opening and closing

    @staticmethod
    def name_for(data_dir: str, node: str) -> str:
        """Stable per node and data dir, and short (macOS allows 31 chars)."""
        ident = os.path.realpath(data_dir) + "\0" + node
        return "/kvs-" + xxhash.xxh64_hexdigest(ident.encode())

    @classmethod
    def create(
        cls,
        name: str,
        *,
        size_bytes: int = 64 << 20,
        max_value: int = 4096,
        lock_timeout: float = 0.5,
        window: int = 8,
        lock_wait: float = 30.0,
        verify_reads: bool | None = None,
        memo_entries: int = 65536,
        memo_bytes: int = 16 << 20,
    ) -> ShmCache:
        """The owner's open: a fresh, empty cache under `name`, mode 0600.

        A segment left by a dead owner is rebuilt: emptied in place when its geometry
        matches (processes still attached keep working), else retired and replaced.
        Raises CacheInUse if a live process other than this one created it.
        For the other options, see attach().
        """
        _check_name(name)
        options: dict[str, Any] = dict(
            lock_wait=lock_wait, verify_reads=verify_reads, memo_entries=memo_entries, memo_bytes=memo_bytes
        )
        geo = L.Geometry.compute(size_bytes, max_value, window)
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            _unlink_names(name, segment=False)  # an orphan semaphore may hold any count
        else:
            cache = cls._reuse(name, shm, geo, lock_timeout, options)
            if cache is not None:
                return cache
            _unlink_names(name)
        return cls._fresh(name, geo, lock_timeout, options)

    @classmethod
    def _reuse(
        cls, name: str, shm: Any, geo: L.Geometry, lock_timeout: float, options: dict[str, Any]
    ) -> ShmCache | None:
        if shm.size < L.HDR_SIZE:
            shm.close_fd()
            return None
        mm = mmap.mmap(shm.fd, shm.size)
        try:
            magic, version, _, old = L.Geometry.unpack_from(mm)
            valid = (magic, version) == (L.MAGIC, L.VERSION) and old.size_bytes == shm.size
            if valid:
                pid, retired, start, _ = L.OWNER.unpack_from(mm, L.OWNER_OFF)
                if pid != os.getpid() and not retired and pid_alive(pid, start):
                    raise CacheInUse(f"shared-memory cache {name} belongs to live process {pid}")
            if not valid or old != geo:
                if valid:
                    Table(mm, old, stall=lambda point: None).retire()
                mm.close()
                shm.close_fd()
                return None
            sem = posix_ipc.Semaphore(name, posix_ipc.O_CREAT, 0o600, 1)
        except BaseException:
            mm.close()
            shm.close_fd()
            raise
        cache = cls(name, shm, mm, sem, **options)
        cache._lock.timeout = lock_timeout
        with cache._locked():
            geo.pack_into(mm, L.MAGIC, lock_timeout)
            pid, start = self_identity()
            L.OWNER.pack_into(mm, L.OWNER_OFF, pid, 0, start, L.U64.unpack_from(mm, L.GENERATION_OFF)[0])
            mm[L.COUNTERS_OFF : L.COUNTERS_OFF + 8 * len(L.COUNTERS)] = bytes(8 * len(L.COUNTERS))
            cache._table.reset(count=False)
        return cache

    @classmethod
    def _fresh(cls, name: str, geo: L.Geometry, lock_timeout: float, options: dict[str, Any]) -> ShmCache:
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=geo.size_bytes)
        except posix_ipc.ExistentialError as e:
            raise CacheInUse(f"shared-memory cache {name} was just created by another process") from e
        mm: mmap.mmap | None = None
        try:
            os.fchmod(shm.fd, 0o600)  # whatever the umask
            mm = mmap.mmap(shm.fd, geo.size_bytes)
            try:
                sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 1)
            except posix_ipc.ExistentialError:
                _unlink_names(name, segment=False)
                sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 1)
            sem_path = "/dev/shm/sem." + name[1:]
            if os.path.exists(sem_path):
                os.chmod(sem_path, 0o600)
            geo.pack_into(mm, b"\0" * 8, lock_timeout)
            pid, start = self_identity()
            L.OWNER.pack_into(mm, L.OWNER_OFF, pid, 0, start, 1)
            L.REC.pack_into(mm, geo.ring_off, geo.ring_cap, L.NO_OWNER)  # one dead record spans the ring
            mm[0:8] = L.MAGIC  # last: attach() refuses a segment still being built
        except BaseException:
            if mm is not None:
                mm.close()
            shm.close_fd()
            _unlink_names(name)
            raise
        return cls(name, shm, mm, sem, **options)

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        lock_wait: float = 30.0,
        verify_reads: bool | None = None,
        memo_entries: int = 65536,
        memo_bytes: int = 16 << 20,
    ) -> ShmCache:
        """Map an existing cache (node workers, local clients). CacheNotFound if absent.

        Options, for create() too: lock_wait (seconds a writer waits for a live lock
        holder before CacheLockTimeout, default 30), verify_reads (also check each value's
        checksum; default: off on x86, on elsewhere), memo_entries and memo_bytes (this
        process's memo of validated reads, see reader.py; 0 turns it off).
        """
        _check_name(name)
        options: dict[str, Any] = dict(
            lock_wait=lock_wait, verify_reads=verify_reads, memo_entries=memo_entries, memo_bytes=memo_bytes
        )
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError as e:
            raise CacheNotFound(f"no shared-memory cache {name} (is the node running?)") from e
        mm: mmap.mmap | None = None
        try:
            if shm.size < L.HDR_SIZE:
                raise CacheNotFound(f"shared-memory cache {name} is not initialised yet")
            mm = mmap.mmap(shm.fd, shm.size)
            magic, version, _, _ = L.Geometry.unpack_from(mm)
            if magic != L.MAGIC:
                raise CacheNotFound(f"shared-memory segment {name} is not an initialised kvstore cache")
            if version != L.VERSION:
                raise CacheError(f"shared-memory cache {name} has layout version {version}, not {L.VERSION}")
            if L.OWNER.unpack_from(mm, L.OWNER_OFF)[1]:
                raise CacheNotFound(f"shared-memory cache {name} was retired by its owner")
            try:
                sem = posix_ipc.Semaphore(name)
            except posix_ipc.ExistentialError as e:
                raise CacheNotFound(f"shared-memory cache {name} has no writer semaphore") from e
        except BaseException:
            if mm is not None:
                mm.close()
            shm.close_fd()
            raise
        return cls(name, shm, mm, sem, **options)

    def close(self) -> None:
        """Unmap and close the descriptors; the segment stays for others."""
        if self._closed:
            return
        self._closed = True
        self.get = self.peek = self.lookup = _closed_get
        self.peek_framed = _closed_many
        self._release_reader()
        self._mm.close()
        self._shm.close_fd()
        self._sem.close()

    def unlink(self) -> None:
        """Owner's clean shutdown: retire the segment (attached readers now only miss) and
        remove the names. Works before or after close()."""
        if not self._closed:
            self._retire()
        else:  # reopen it, unless the name now belongs to a newer incarnation
            try:
                again = ShmCache.attach(self.name)
            except CacheNotFound:
                pass  # gone, or already retired
            else:
                with again:
                    if again._creator != self._creator:
                        return
                    again._retire()
        _unlink_names(self.name)

    def _retire(self) -> None:
        try:
            self._lock.acquire(max_wait=2 * self._lock.timeout)
        except CacheLockTimeout:
            self._table.retire()  # a live holder is stuck: retire anyway
            return
        try:
            self._table.retire()
        finally:
            self._lock.release()

    def __enter__(self) -> ShmCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._geo.nslots} slots"
        return f"ShmCache({self.name!r}, {state})"

    @property
    def retired(self) -> bool:
        """True once the owner replaced or removed this segment: reattach to see new writes."""
        return self._table.retired

    # ---------------------------------------------------------------- writing

    def put(self, key: Buffer, value: Buffer) -> None:
        """Cache key -> value; a value over max_value is not cached and drops the old entry."""
        with self._locked():
            self._table.put(key, value)

    def delete(self, key: Buffer) -> None:
        with self._locked():
            self._table.remove(key)

    def put_many(self, items: Iterable[tuple[Buffer, Buffer]]) -> None:
        """put() for each (key, value), under one lock acquisition."""
        with self._locked():
            for key, value in items:
                self._table.put(key, value)

    def delete_many(self, keys: Iterable[Buffer]) -> None:
        """delete() for each key, under one lock acquisition."""
        with self._locked():
            for key in keys:
                self._table.remove(key)

    def clear(self) -> None:
        with self._locked():
            self._table.reset(count=False)
            self._table.bump(L.C_CLEARS)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock.acquire()
        try:
            self._stall("locked")
            yield
        except BaseException:  # e.g. KeyboardInterrupt with a slot odd: mend it as a taker would
            self._table.clear_odd_slots()
            raise
        finally:
            self._lock.release()

    # ---------------------------------------------------------------- introspection

    def evictions(self) -> int:
        """How many live entries were dropped to make room so far (one header load)."""
        return int(L.U64.unpack_from(self._mm, L.COUNTERS_OFF + 8 * L.C_EVICTIONS)[0])

    def stats(self) -> dict[str, Any]:
        """Table-wide counters, plus this process's reader counters (hits, misses, torn_retries)."""
        mm, geo = self._mm, self._geo
        with memoryview(mm) as buf, L.slot_column(buf, geo, 3) as hashes:
            entries = geo.physical_slots - hashes.tolist().count(0)
        out: dict[str, Any] = {"entries": entries, "capacity": geo.physical_slots}
        out.update(self._read_counters())
        for i, counter in enumerate(L.COUNTERS):
            out[counter] = L.U64.unpack_from(mm, L.COUNTERS_OFF + 8 * i)[0]
        creator, retired, _, generation = L.OWNER.unpack_from(mm, L.OWNER_OFF)
        holder, _, acquired_at, _ = self._lock.read_info()
        out.update(
            generation=generation,
            owner_pid=creator,
            retired=bool(retired),
            lock_holder_pid=holder,
            lock_held_s=round(time.time() - acquired_at, 6) if holder else 0.0,
            window=geo.window,
            ring_bytes=geo.ring_cap,
            ring_head=L.U64.unpack_from(mm, L.HEAD_OFF)[0],
            size_bytes=geo.size_bytes,
            max_value=geo.max_value,
            verify_reads=self.verify_reads,
        )
        return out

    # ---------------------------------------------------------------- test hooks

    def _debug_hold_lock(self, seconds: float = 3600.0) -> None:
        """Take the writer lock and keep it (a test SIGKILLs this process meanwhile)."""
        with self._locked():
            print("kvstore-cache: holding lock", flush=True)
            _sleep(seconds)

    def _stall(self, point: str) -> None:
        if self._stall_at == point:
            print(f"kvstore-cache: stalled at {point}", flush=True)
            _sleep(3600.0)


def _sleep(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
