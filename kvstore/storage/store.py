"""`Store`: everything a node keeps on disk, in one LMDB environment.

Why one environment: the applied data, the applied index, the Raft log and the hard
state must move together. With named databases in one environment, a batch of
committed entries and the index it reaches commit in a single transaction (one
fsync), and a log append and the hard state that goes with it do too. After a crash
the node therefore never sees data ahead of or behind its applied index.

Named databases:

    data     user keys -> values (keys 1..MAX_KEY_SIZE bytes)
    log      8-byte big-endian Raft index -> opaque entry blob
    sys      internal: applied index, hard state
    meta     free-form node metadata (cluster id, membership, ...), by name
    staging  scratch space for replace_all; empty except during a snapshot install

Every call runs in its own short transaction, so a Store may be shared by threads.
replace_all reopens the environment (to give back LMDB's heap, see env.py), which
replaces every db handle: code that runs in a txn looks the handles up (self._data,
...) INSIDE the function the txn runs, never before entering it, so that it always
gets the handles of the environment the txn belongs to.
Worker processes open the same path with readonly=True (after fork, never a Store
inherited from the parent); a second Store on the same path in one process is
refused (py-lmdb: LMDB's POSIX locks are per process).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from kvstore.errors import StorageError
from kvstore.storage.codec import MAX_KEY_SIZE, check_key, pack_index, prefix_end, unpack_index
from kvstore.storage.env import Env, LongRead, Txn

T = TypeVar("T")

_APPLIED = b"applied_index"
_HARD_STATE = b"hard_state"
_SNAPSHOT_CHUNK = 512  # items read per gate entry while streaming a snapshot
_STAGING_BATCH_BYTES = 4 << 20  # replace_all: bytes staged per transaction


class WriteTxnView:
    """The WriteView given to `apply` functions: data get/put/delete inside the txn."""

    __slots__ = ("_txn", "_db", "_env", "_live")

    def __init__(self, txn: Txn, db: Any, env: Env) -> None:
        self._txn = txn
        self._db = db
        self._env = env
        self._live = True

    def _check(self) -> None:
        if not self._live:
            raise StorageError("write view used after its transaction ended")

    def get(self, key: bytes) -> bytes | None:
        self._check()
        check_key(key)
        v = self._txn.get(key, db=self._db)
        return None if v is None else bytes(v)

    def put(self, key: bytes, value: bytes) -> None:
        self._check()
        check_key(key)
        try:
            self._txn.put(key, value, db=self._db)
        except lmdb.MapFullError:
            self._env.map_full_seen = True  # noticed even if the caller swallows it
            raise

    def delete(self, key: bytes) -> bool:
        self._check()
        check_key(key)
        try:
            return bool(self._txn.delete(key, db=self._db))
        except lmdb.MapFullError:
            self._env.map_full_seen = True
            raise


class SnapshotView:
    """All data as of one applied index, readable until close(): what a snapshot streams.

    Its read txn pins every page it can see, so while it is open LMDB cannot reuse the
    pages that writes free and the file grows by what is written meanwhile: keep it
    short-lived (snapshots.py closes an idle one after a bounded time). If the map must
    grow while it is open, items() raises SnapshotInterrupted: open a new view.
    """

    def __init__(self, lr: LongRead, index: int,
                 items: Callable[[LongRead, bytes | None], Iterator[tuple[bytes, bytes]]]) -> None:
        self._lr = lr
        self.index = index
        self._items = items

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) in key order, from the first key after `after` (from the start: None)."""
        return self._items(self._lr, after)

    def close(self) -> None:
        self._lr.close()


class Store:
    """One node's durable state. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = 64 << 20,
        max_map_size: int = 0,
        sync: bool = True,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._env = Env(self.path, map_size=map_size, max_map_size=max_map_size, sync=sync, readonly=readonly)
        try:
            self._open_dbs()
            if self._staging is not None:
                self._clear_staging()  # left over by a crash during replace_all
        except BaseException:
            self._env.close()
            raise

    def _open_dbs(self) -> None:
        """(Re)open the db handles: at open, and by Env.reopen with the gate exclusive."""
        self._data, self._log, self._sys, self._meta = (
            self._open_db(name) for name in (b"data", b"log", b"sys", b"meta")
        )
        self._staging = None if self.readonly else self._open_db(b"staging")

    @property
    def closed(self) -> bool:
        """True once closed, or after a reopen (snapshot install) failed."""
        return self._env.closed

    def _open_db(self, name: bytes) -> Any:
        try:
            return self._env.env.open_db(name, create=not self.readonly)
        except lmdb.NotFoundError:
            raise StorageError(
                f"the store at {self.path} has no {name.decode()} database: the node must create it first"
            ) from None
        except lmdb.Error as exc:
            raise self._env.translate(exc, "open") from exc

    @property
    def stale_readers_cleared(self) -> int:
        """Reader slots of dead processes that were cleared when this Store opened."""
        return self._env.stale_readers_cleared

    # -- data -------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        check_key(key)
        # self._data is looked up in the txn, never before (a reopen replaces it).
        return self._env.read(lambda txn: txn.get(key, db=self._data))

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """get() of each key, in one read transaction: one snapshot, and the cost of a
        transaction paid once (the RESP server reads a pipeline's cache misses so, and the
        single GETs that missed in one round of I/O)."""
        for key in keys:
            if not 0 < len(key) <= MAX_KEY_SIZE:
                check_key(key)

        def run(txn: Txn) -> list[bytes | None]:
            get = txn.cursor(db=self._data).get  # no keyword per key: ~30% cheaper than txn.get(k, db=)
            return [get(key) for key in keys]

        return self._env.read(run)

    def put(self, key: bytes, value: bytes) -> None:
        """Write one key outside the Raft log (tests, tools). Durable when it returns."""
        check_key(key)
        self._env.write(lambda txn: txn.put(key, value, db=self._data))

    def delete(self, key: bytes) -> bool:
        check_key(key)
        return self._env.write(lambda txn: bool(txn.delete(key, db=self._data)))

    def scan(
        self,
        prefix: bytes = b"",
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Keys starting with `prefix`, in [start, end), in key order, at most `limit`."""
        if limit is not None and limit <= 0:
            return []
        lo = prefix if start is None or start < prefix else start
        hi = prefix_end(prefix)
        if end is not None and (hi is None or end < hi):
            hi = end
        if hi is not None and lo >= hi:
            return []

        def run(txn: Txn) -> list[tuple[bytes, bytes]]:
            out: list[tuple[bytes, bytes]] = []
            cur = txn.cursor(db=self._data)
            # LMDB cannot seek to a key longer than it can store; seek to the
            # longest prefix it can and skip what sorts before `lo`.
            found = cur.set_range(lo[:MAX_KEY_SIZE]) if lo else cur.first()
            if not found:
                return out
            for k, v in cur.iternext():
                if k < lo:
                    continue
                if (hi is not None and k >= hi) or not k.startswith(prefix):
                    break
                out.append((k, v))
                if limit is not None and len(out) >= limit:
                    break
            return out

        return self._env.read(run)

    def count(self) -> int:
        return self._env.read(lambda txn: int(txn.stat(self._data)["entries"]))

    # -- applying committed entries ----------------------------------------------

    def apply(self, index: int, fn: Callable[[WriteTxnView], T]) -> T:
        """Run fn(view) and record `index` as applied, in one txn and one commit.

        If fn raises, nothing is stored. fn may run again if the map had to grow,
        so it must act only through the view. `index` must exceed the applied index.
        """
        return self.apply_many([(index, fn)])[0]

    def apply_many(self, items: Sequence[tuple[int, Callable[[WriteTxnView], T]]]) -> list[T]:
        """Group commit: apply several entries in one txn; the applied index becomes the last."""
        if not items:
            return []
        indexes = [i for i, _ in items]
        for a, b in zip(indexes, indexes[1:], strict=False):
            if b <= a:
                raise ValueError(f"apply_many indexes must increase: {a} then {b}")
        return self._env.write(lambda txn: self._apply_in(txn, items))

    def _apply_in(self, txn: Txn, items: Sequence[tuple[int, Callable[[WriteTxnView], T]]]) -> list[T]:
        """Apply `items` (increasing indexes) inside `txn` and record the last as applied."""
        applied = self._applied(txn)
        first = items[0][0]
        if first <= applied:
            raise ValueError(f"index {first} was already applied (applied index is {applied})")
        view = WriteTxnView(txn, self._data, self._env)
        try:
            results = [fn(view) for _, fn in items]
        finally:
            view._live = False
        txn.put(_APPLIED, pack_index(items[-1][0]), db=self._sys)
        return results

    def _applied(self, txn: Txn) -> int:
        raw = txn.get(_APPLIED, db=self._sys)
        return 0 if raw is None else unpack_index(raw)

    def applied_index(self) -> int:
        return self._env.read(self._applied)

    # -- Raft log and hard state ------------------------------------------------------

    def log_append(self, entries: Sequence[tuple[int, bytes]], hard_state: bytes | None = None) -> None:
        """Drop every entry >= entries[0] index, write `entries`, set hard_state: one txn."""
        if entries:
            first = entries[0][0]
            if first < 1:
                raise ValueError(f"log indexes start at 1, got {first}")
            for n, (idx, _) in enumerate(entries):
                if idx != first + n:
                    raise ValueError(
                        f"log entries must be consecutive: expected index {first + n}, got {idx}"
                    )
        elif hard_state is None:
            return
        self._env.write(lambda txn: self._append_in(txn, entries, hard_state))

    def _append_in(self, txn: Txn, entries: Sequence[tuple[int, bytes]], hard_state: bytes | None) -> None:
        if entries:
            cur = txn.cursor(db=self._log)
            # A conflicting suffix (an old leader's entries) goes first, so the
            # new entries can be appended in order without a tree search each.
            if cur.set_range(pack_index(entries[0][0])):
                while cur.delete():
                    pass
            cur.putmulti(((pack_index(i), blob) for i, blob in entries), append=True)
        if hard_state is not None:
            txn.put(_HARD_STATE, hard_state, db=self._sys)

    def save_ready(
        self,
        entries: Sequence[tuple[int, bytes]],
        hard_state: bytes | None,
        apply_items: Sequence[tuple[int, Callable[[WriteTxnView], T]]],
        must_sync: bool | None = None,
    ) -> list[T]:
        """One Raft `Ready` in ONE transaction and one fsync: append log entries (dropping
        a conflicting suffix), set the hard state, and apply committed entries.

        must_sync: whether the transaction must be durable before this returns; by
        default when there are entries or a hard state. A caller that knows only the
        commit index changed passes False (as etcd's MustSync): a lost commit index is
        learnt again from the leader, and a lost apply is redone from the log.

        Committed entries are already durable in the log (an earlier Ready, or this
        one), so applying them in the same transaction costs no extra fsync and can
        never get ahead of the log they come from.
        """
        if entries:
            first = entries[0][0]
            for n, (idx, _) in enumerate(entries):
                if idx != first + n or idx < 1:
                    raise ValueError(f"log entries must be consecutive from 1: got {idx} at {n}")
        indexes = [i for i, _ in apply_items]
        for a, b in zip(indexes, indexes[1:], strict=False):
            if b <= a:
                raise ValueError(f"apply indexes must increase: {a} then {b}")
        if not entries and hard_state is None and not apply_items:
            return []

        def run(txn: Txn) -> list[T]:
            self._append_in(txn, entries, hard_state)
            return self._apply_in(txn, apply_items) if apply_items else []

        # Only the log, term and vote must survive a power cut; applied state is rebuilt
        # from the log, so an apply-only Ready skips the meta-page flush.
        if must_sync is None:
            must_sync = bool(entries) or hard_state is not None
        return self._env.write(run, durable=must_sync)

    def log_get(self, lo: int, hi: int, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        """Entries with lo <= index < hi. With max_bytes, stop once the blobs reach it
        (always at least one entry, as etcd's MaxSizePerMsg)."""
        if hi <= lo:
            return []

        def run(txn: Txn) -> list[tuple[int, bytes]]:
            out: list[tuple[int, bytes]] = []
            cur = txn.cursor(db=self._log)
            if not cur.set_range(pack_index(max(lo, 0))):
                return out
            total = 0
            for k, v in cur.iternext():
                idx = unpack_index(k)
                if idx >= hi:
                    break
                total += len(v)
                if max_bytes is not None and out and total > max_bytes:
                    break
                out.append((idx, v))
            return out

        return self._env.read(run)

    def log_bounds(self) -> tuple[int, int]:
        """(first, last) index in the log; (0, 0) when it is empty."""

        def run(txn: Txn) -> tuple[int, int]:
            cur = txn.cursor(db=self._log)
            if not cur.first():
                return (0, 0)
            first = unpack_index(cur.key())
            cur.last()
            return (first, unpack_index(cur.key()))

        return self._env.read(run)

    def log_compact(self, upto: int) -> None:
        """Drop entries with index <= upto (they are covered by a snapshot)."""
        if upto < 1:
            return
        limit = pack_index(upto)

        def run(txn: Txn) -> None:
            cur = txn.cursor(db=self._log)
            if not cur.first():
                return
            while cur.key() and cur.key() <= limit:
                if not cur.delete():
                    break

        self._env.write(run)

    def hard_state(self) -> bytes | None:
        return self._env.read(lambda txn: txn.get(_HARD_STATE, db=self._sys))

    def set_hard_state(self, blob: bytes) -> None:
        self.log_append([], blob)

    # -- metadata ---------------------------------------------------------------

    @staticmethod
    def _meta_key(name: str) -> bytes:
        key = name.encode()
        check_key(key, "meta name")
        return key

    def meta_get(self, name: str) -> bytes | None:
        key = self._meta_key(name)
        return self._env.read(lambda txn: txn.get(key, db=self._meta))

    def meta_set(self, name: str, value: bytes) -> None:
        key = self._meta_key(name)
        self._env.write(lambda txn: txn.put(key, value, db=self._meta))

    def meta_delete(self, name: str) -> bool:
        key = self._meta_key(name)
        return self._env.write(lambda txn: bool(txn.delete(key, db=self._meta)))

    # -- snapshots --------------------------------------------------------------

    @contextmanager
    def read_txn_snapshot(self) -> Iterator[tuple[int, Iterator[tuple[bytes, bytes]]]]:
        """A consistent view for a Raft snapshot: (applied index, all (key, value)).

        The read txn stays open until the block exits, but the store keeps taking
        writes meanwhile. If the map must grow during that time, the iterator raises
        SnapshotInterrupted (a StorageError); start the snapshot again.
        """
        view = self.snapshot_view()
        try:
            yield view.index, view.items()
        finally:
            view.close()

    def snapshot_view(self) -> SnapshotView:
        """read_txn_snapshot's view without the block, for a caller that keeps it across
        calls (a snapshot stream resumed later); the caller must close() it."""
        lr = self._env.long_read()
        try:
            return SnapshotView(lr, lr.run(self._applied), self._snapshot_items)
        except BaseException:
            lr.close()
            raise

    def _snapshot_items(self, lr: LongRead, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        def chunk(txn: Txn) -> list[tuple[bytes, bytes]]:
            # Looked up per chunk: a reopen between chunks kills lr (the next run raises
            # SnapshotInterrupted), and the handle must never outlive its environment.
            cur = txn.cursor(db=self._data)
            if not (cur.first() if after is None else cur.set_range(after)):
                return []
            out: list[tuple[bytes, bytes]] = []
            for k, v in cur.iternext():
                if k == after:
                    continue
                out.append((k, v))
                if len(out) >= _SNAPSHOT_CHUNK:
                    break
            return out

        while True:
            items = lr.run(chunk)
            if not items:
                return
            yield from items
            after = items[-1][0]

    def replace_all(self, items: Iterable[tuple[bytes, bytes]], index: int) -> None:
        """Atomically replace all data with `items` and set the applied index (snapshot install).

        `items` is consumed once, in bounded batches, into the staging database; then
        one txn swaps it in. Readers see the old data or the new, never a mix, and a
        crash before the swap leaves the old data and applied index untouched.

        The swap dirties every page of the new data, and LMDB keeps the buffers of
        dirtied pages on its heap until the environment closes (~120 MB at 1M keys of
        100 bytes), so the environment is then reopened (Env.reopen): open snapshot
        views raise SnapshotInterrupted on their next use, other calls just wait for it.
        """
        if self._staging is None:
            raise StorageError(f"the store at {self.path} is open read-only")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        env = self._env
        with env.write_lock:  # no other write may slip in between staging and swap
            try:
                self._clear_staging()
                batch: list[tuple[bytes, bytes]] = []
                size = 0
                for k, v in items:
                    check_key(k)
                    batch.append((k, v))
                    size += len(k) + len(v)
                    if size >= _STAGING_BATCH_BYTES:
                        self._stage(batch)
                        batch, size = [], 0
                if batch:
                    self._stage(batch)

                def swap(txn: Txn) -> None:
                    staging, data = self._staging, self._data
                    txn.drop(data, delete=False)
                    src = txn.cursor(db=staging)
                    if src.first():
                        # staging is sorted, so this is a sequential append.
                        txn.cursor(db=data).putmulti(src.iternext(), append=True)
                    txn.drop(staging, delete=False)
                    txn.put(_APPLIED, pack_index(index), db=self._sys)

                env.write(swap)
            except BaseException:
                try:
                    self._clear_staging()
                except StorageError:
                    pass  # best effort; cleared again on the next open
                raise
            # After the swap committed: a failure here closes the store (StorageError),
            # the install itself is done and durable.
            env.reopen(self._open_dbs)

    def _stage(self, batch: list[tuple[bytes, bytes]]) -> None:
        self._env.write(lambda txn: txn.cursor(db=self._staging).putmulti(batch))

    def _clear_staging(self) -> None:
        if self._staging is None:
            return
        if self._env.read(lambda txn: int(txn.stat(self._staging)["entries"])):
            self._env.write(lambda txn: txn.drop(self._staging, delete=False))

    # -- maintenance ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        env = self._env

        def run(txn: Txn) -> dict[str, Any]:
            info = env.env.info()
            page = int(env.env.stat()["psize"])
            used_pages = int(info["last_pgno"]) + 1
            try:
                file_size = (self.path / "data.mdb").stat().st_size
            except OSError:
                file_size = 0
            return {
                "path": str(self.path),
                "map_size": int(info["map_size"]),
                "max_map_size": env.max_map_size,
                "page_size": page,
                "used_pages": used_pages,
                "used_bytes": used_pages * page,
                "file_size": file_size,
                "entries": int(txn.stat(self._data)["entries"]),
                "log_entries": int(txn.stat(self._log)["entries"]),
                "applied_index": self._applied(txn),
                "readers": int(info["num_readers"]),
                "max_readers": int(info["max_readers"]),
            }

        return env.read(run)

    def reader_check(self) -> int:
        """Clear reader slots of dead processes now; returns how many were cleared."""
        gate = self._env.gate
        gate.acquire_shared()  # not while a reopen swaps the environment
        try:
            self._env._check_open()
            return int(self._env.env.reader_check())
        except lmdb.Error as exc:
            raise self._env.translate(exc, "reader check") from exc
        finally:
            gate.release_shared()

    def sync(self) -> None:
        """Flush to disk now (only useful with sync=False)."""
        if self.readonly:
            return
        self._env.gate.acquire_shared()
        try:
            self._env._check_open()
            self._env.env.sync(True)
        except lmdb.Error as exc:
            raise self._env.translate(exc, "sync") from exc
        finally:
            self._env.gate.release_shared()

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
