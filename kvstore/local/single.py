"""A node without replication: the LMDB `Store` and the shared-memory cache, nothing else.

Writes are group-committed: the commands that arrive while one LMDB transaction is
being fsynced all go into the next one (one fsync for the lot), on a dedicated thread so
that reads go on meanwhile. The cache follows the rule every writer of this project
keeps: `cache.delete(keys)` before the commit, `cache.put(new values)` after it, and
only then the answer; so the cache never holds a value older than LMDB.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from kvstore import statemachine
from kvstore.errors import KVError, LimitExceeded, Unknown
from kvstore.local.fast import memo_reads
from kvstore.statemachine import Command, Result

log = logging.getLogger("kvstore.local.single")

MAX_KEY = 511


class StoreLike(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(
        self,
        prefix: bytes = b"",
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]: ...

    def count(self) -> int: ...

    def apply_many(self, items: Sequence[tuple[int, Callable[[Any], Any]]]) -> list[Any]: ...

    def applied_index(self) -> int: ...

    def close(self) -> None: ...


class CacheLike(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> Any: ...

    def delete(self, key: bytes) -> Any: ...

    def close(self) -> None: ...


class SingleNodeBackend:
    """`Backend` over one `Store` (and optionally one `ShmCache`), in the node's process.

    `fill_cache`: reads that miss the cache put what they found into it (safe here,
    because this process is the only writer: a key with a write in flight is skipped):
    every miss until the cache first drops an entry to make room, and from then on a
    key that missed twice within the last `DOOR` misses or so (a doorkeeper, as in
    TinyLFU). Filling costs far more than a read (the writer lock,
    evicting older entries); when the keys read do not fit the cache, filling on every
    miss would only churn it, while a key read again soon still gets in.
    """

    DOOR = 1 << 14

    # A write is answered only once it is in LMDB and the cache, and there is nobody to
    # ask for a read index: local state is always linearizable. Worker processes use this
    # to skip the round trip of a read barrier.
    barrier_free = True
    # Writes apply in the order of the write() calls (FIFO into the group commit), so a
    # connection may have several in flight: a pipeline of writes shares one commit.
    ordered_writes = True

    def __init__(
        self,
        store: StoreLike,
        cache: CacheLike | None = None,
        *,
        node_name: str = "n1",
        fill_cache: bool = True,
        cache_name: str | None = None,
        store_path: str | None = None,
    ) -> None:
        self.node_name = node_name
        self.store = store
        self.cache = cache
        self.cache_name = cache_name
        self.store_path = store_path
        self.fill_cache = fill_cache and cache is not None
        # For the RESP server's fast path (see kvstore/local/fast.py): the cache alone
        # (its memo first, its table while that pays), and the store for the keys it
        # missed, in one read transaction.
        self.cache_get: Callable[[bytes], bytes | None] | None = None
        self.cache_replies: Callable[[list[bytes]], list[bytes | None]] | None = None
        self._real_misses: Callable[[Sequence[bytes]], Any] = lambda keys: None
        if cache is not None:
            self.cache_get, self.cache_replies, self._real_misses = memo_reads(cache)
        self._get_many: Callable[[Sequence[bytes]], list[bytes | None]] = getattr(
            store, "get_many", lambda keys: [store.get(k) for k in keys]
        )
        self._door: set[bytes] = set()  # keys that missed recently
        self._evictions = self._cache_evictions()  # at the start: -1 when not known
        self.applied = store.applied_index()
        self._pending: list[tuple[Command, asyncio.Future[Result]]] = []
        self._inflight: dict[bytes, int] = {}
        self._committer: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kvstore-commit")
        self._owned: list[Any] = []
        self._closed = False

    @classmethod
    def open(
        cls,
        store_path: str,
        *,
        cache_name: str | None = None,
        cache_size: int = 64 << 20,
        node_name: str = "n1",
        sync: bool = True,
        map_size: int = 64 << 20,
    ) -> SingleNodeBackend:
        """Open (create) the Store at `store_path` and, with `cache_name`, a new ShmCache."""
        from kvstore.storage import Store

        store = Store(store_path, sync=sync, map_size=map_size)
        cache = None
        if cache_name is not None:
            from kvstore.cache import ShmCache

            try:
                cache = ShmCache.create(cache_name, size_bytes=cache_size)
            except BaseException:
                store.close()
                raise
        b = cls(store, cache, node_name=node_name, cache_name=cache_name, store_path=store_path)
        b._owned = [store] + ([cache] if cache is not None else [])
        return b

    # -- Backend -------------------------------------------------------------------------

    async def write(self, cmd: Command) -> Result:
        return await self.submit_write(cmd)

    def submit_write(self, cmd: Command) -> asyncio.Future[Result]:
        """Queue a write for the next group commit; the future resolves once it is applied.

        Writes apply in submission order. The RESP server uses this, when a backend has
        it, to keep a pipeline's writes in flight together without a Task for each.
        """
        if self._closed:
            raise KVError("node is shutting down")
        for k in statemachine.keys_of(cmd):
            if not 0 < len(k) <= MAX_KEY:
                raise LimitExceeded(f"key is {len(k)} bytes; keys must be 1 to {MAX_KEY} bytes")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        self._pending.append((cmd, fut))
        if self._committer is None:
            self._committer = loop.create_task(self._commit_loop())
        return fut

    async def read_barrier(self) -> None:
        return None

    def get(self, key: bytes) -> bytes | None:
        cache = self.cache
        if cache is not None:
            v = cache.get(key)
            if v is not None:
                return v
        v = self.store.get(key)
        if v is not None and self.fill_cache:
            self._admit([key], [v])
        return v

    def get_uncached(self, keys: list[bytes]) -> list[bytes | None]:
        """The store's values of keys that missed the cache, in one read transaction."""
        values = self._get_many(keys)
        if self.fill_cache:
            real = self._real_misses(keys)  # not the reads that skipped the table
            if real is None:
                self._admit(keys, values)
            elif real:
                pairs = [(k, v) for k, v in zip(keys, values, strict=True) if k in real]
                self._admit([k for k, _ in pairs], [v for _, v in pairs])
        return values

    def _cache_evictions(self) -> int:
        evictions = getattr(self.cache, "evictions", None)
        return -1 if evictions is None else int(evictions())

    def _admit(self, keys: Sequence[bytes], values: Sequence[bytes | None]) -> None:
        """Cache what was read of keys that missed, as the class docstring says."""
        try:
            room = self._evictions >= 0 and self._cache_evictions() == self._evictions
            if not room:
                self._evictions = -1  # it has evicted (the count only grows): no need to look again
            seen: set[bytes] | None = None  # with room: every key that missed
            if not room:
                door = self._door
                seen = door.intersection(keys)  # set operations: C loops, a miss costs little
                if len(door) >= self.DOOR:
                    door.clear()
                door.update(keys)
                if not seen:
                    return
            inflight = self._inflight
            admitted = [
                (k, v)
                for k, v in zip(keys, values, strict=True)
                if v is not None and k not in inflight and (seen is None or k in seen)
            ]
            if not admitted:
                return
            put_many = getattr(self.cache, "put_many", None)
            if put_many is not None:
                put_many(admitted)
            else:
                for k, v in admitted:
                    self.cache.put(k, v)  # type: ignore[union-attr]
        except Exception:  # a value the cache will not take is simply not cached
            pass

    def scan(self, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self.store.scan(start=start, limit=limit)

    def count(self) -> int:
        return self.store.count()

    def info(self) -> dict[str, dict[str, Any]]:
        repl = {
            "role": "leader",
            "leader": self.node_name,
            "term": 0,
            "commit_index": self.applied,
            "applied_index": self.applied,
            "replication": "none (single node)",
        }
        storage: dict[str, Any] = {"store_path": self.store_path or "", "cache_name": self.cache_name or ""}
        return {"replication": repl, "storage": storage}

    # -- group commit ----------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._commit(loop, batch)
        finally:
            self._committer = None
            if self._pending and not self._closed:  # arrived during the last await
                self._committer = loop.create_task(self._commit_loop())

    async def _commit(
        self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Command, asyncio.Future[Result]]]
    ) -> None:
        cmds = [c for c, _ in batch]
        keys = {k for c in cmds for k in statemachine.keys_of(c)}
        for k in keys:
            self._inflight[k] = self._inflight.get(k, 0) + 1
        try:
            if self.cache is not None:
                for k in keys:
                    self.cache.delete(k)
            index = self.applied + len(cmds)
            try:
                outcomes = await loop.run_in_executor(self._pool, self._apply, index, cmds)
            except Exception as e:
                if len(batch) > 1:  # isolate the command that failed: one txn each
                    for item in batch:
                        await self._commit(loop, [item])
                    return
                _, fut = batch[0]
                if not fut.done():
                    fut.set_exception(e if isinstance(e, KVError) else Unknown(f"write failed: {e}"))
                log.warning("write failed at index %d: %s", index, e)
                return
            self.applied = index
            if self.cache is not None:
                final: dict[bytes, bytes | None] = {}  # a key written n times: cache it once
                for _, changes in outcomes:
                    final.update(changes)
                for k, v in final.items():
                    self._cache_set(k, v)
            for (_, fut), (result, _) in zip(batch, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(result)
        finally:
            for k in keys:
                n = self._inflight[k] - 1
                if n:
                    self._inflight[k] = n
                else:
                    del self._inflight[k]

    def _apply(self, last: int, cmds: list[Command]) -> list[tuple[Result, list[tuple[bytes, bytes | None]]]]:
        # One log index per command, as Raft will give them; one transaction, one fsync.
        first = last - len(cmds) + 1
        items = [(first + i, functools.partial(statemachine.apply, cmd=c)) for i, c in enumerate(cmds)]
        return self.store.apply_many(items)  # type: ignore[no-any-return]

    def _cache_set(self, key: bytes, value: bytes | None) -> None:
        assert self.cache is not None
        try:
            if value is None:
                self.cache.delete(key)
            else:
                self.cache.put(key, value)
        except Exception:
            try:  # never leave an older value behind
                self.cache.delete(key)
            except Exception:
                log.exception("cache delete failed for a key")

    async def aclose(self) -> None:
        """Finish queued writes, then close what `open` opened."""
        while self._committer is not None:
            await asyncio.shield(self._committer)
        self._closed = True
        self._pool.shutdown(wait=True)
        for obj in reversed(self._owned):
            try:
                obj.close()
                if hasattr(obj, "unlink"):
                    obj.unlink()
            except Exception:
                log.exception("closing %r failed", obj)
        self._owned = []
