"""Fast handlers: the commonest requests answered with no dispatch around them.

A fast handler takes the request and the session's protocol and returns the encoded
reply, or None for anything unusual (wrong arity, a key over the limits): the
connection then runs that request, and everything after it, the general way, which
produces the same reply or error as ever. So a fast handler only has to be right for
the requests it accepts; it never has to reproduce an error message.

`reads` handlers read local state: the connection uses them only where a read may run
right away (READONLY, or a backend whose local state is always current). `sync`
handlers touch no state.

Reads of a backend that has `cache_get` and `get_uncached` (see backend.py) look in the
shared-memory cache first and leave their cache misses for one `get_uncached` call per
batch of requests (one LMDB read transaction for a whole pipeline): a GET that missed
puts an empty placeholder in the batch's replies, and `resolve` fills it in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kvstore.local.cmdbase import FastHandler
from kvstore.local.framing import plain_gets
from kvstore.local.resp import NULL3, PONG, QUEUED_NULL2, Limits

PENDING = b""  # the placeholder reply of a GET that missed the cache (no reply is empty)
# Cache misses read per store transaction, at most. Also bounds the reply bytes a batch
# gathers before it knows their size (a value is at most Limits.max_value, and values
# over the cache's max_value always miss): the connection takes this path only while
# its client reads (its write buffer is under the high-water mark), and stops at
# _FLUSH_AT bytes of known replies.
MAX_PENDING = 16
# Bulk-string headers of short values, made once: `_HEAD[n] + v + CRLF` costs about
# half of `b"$%d\r\n%s\r\n" % (n, v)`.
_HEAD = [b"$%d\r\n" % n for n in range(1024)]
_CRLF = b"\r\n"
# Reply bytes a batch of GETs answered at once may gather (see FastPath.gets); the
# connection writes at most about this much before it looks at its client again.
MAX_BATCH_REPLY = 256 << 10


def bulk(v: bytes) -> bytes:
    n = len(v)
    if n < 1024:
        return _HEAD[n] + v + _CRLF
    return b"$%d\r\n%s\r\n" % (n, v)  # one copy of a long value, not two


# In-process reads (the node's RESP server and its workers) and the shared table. Its
# worth to them is the memo in front of it (a dict lookup): a read that misses the memo
# costs as much in the table as in LMDB, or more once the keys read span more memory
# than the CPU caches hold (measured with 100-byte values, per GET: 200,000 keys all in
# the table, 5.0-5.8 µs through the table against 4.0-4.5 µs from LMDB; 1,000,000 keys,
# 38% of them in the table, 6.5-7.2 against 3.1). So once fewer than half the reads are
# memo hits for LOW windows in a row (as many reads as the memo holds: it had its chance
# to fill), reads skip the table and go to the store, but for one memo miss in PROBE
# that still looks there (and memoises what it finds); one window with half its reads
# memo hits brings the table back.
WINDOW = 8192
LOW = 8
PROBE = 16


def memo_reads(
    cache: Any,
) -> tuple[
    Callable[[bytes], bytes | None],
    Callable[[list[bytes]], list[bytes | None]],
    Callable[[Sequence[bytes]], Any],
]:
    """(cache_get, cache_replies, real_misses) for reads in a node's own processes (see
    above).

    cache_get(key) -> the cached value, or None: read the store. cache_replies(keys):
    what cache_get would answer for each key, but as RESP bulk-string replies (None:
    read the store), with the same policy and counts: the memo in one comprehension
    (ShmCache.peek_framed, which keeps replies ready), the rest one by one.
    real_misses(keys), for keys answered None: those that were looked for in the table
    and not found there (the ones worth caching), or None for all of them. A cache
    without a memo (no `peek`/`lookup`) is always read whole."""
    peek = getattr(cache, "peek", None)
    lookup = getattr(cache, "lookup", None)
    if peek is None or lookup is None:
        whole = cache.get
        return (
            whole,
            lambda keys: [None if v is None else bulk(v) for v in map(whole, keys)],
            lambda keys: None,
        )
    peek_framed = getattr(cache, "peek_framed", None)
    if peek_framed is None:
        peek_framed = lambda keys: [None if v is None else bulk(v) for v in map(peek, keys)]  # noqa: E731
    use_table = True
    seen = memo_hits = probes = low = 0
    probed: set[bytes] = set()  # probes that missed, while the table is skipped

    def cache_get(key: bytes) -> bytes | None:
        nonlocal use_table, seen, memo_hits, probes, low
        v = peek(key)
        if v is not None:
            memo_hits += 1
        elif use_table:
            v = lookup(key)
        else:
            probes += 1
            if probes >= PROBE:
                probes = 0
                v = lookup(key)
                if v is None and len(probed) < 1024:
                    probed.add(key)
        seen += 1
        if seen >= WINDOW:
            low = 0 if memo_hits * 2 >= seen else low + 1
            use_table = low < LOW
            seen = memo_hits = 0
        return v  # type: ignore[no-any-return]

    def cache_replies(keys: list[bytes]) -> list[bytes | None]:
        nonlocal use_table, seen, memo_hits, probes, low
        out: list[bytes | None] = peek_framed(keys)
        n = len(out)
        missed = out.count(None)
        memo_hits += n - missed
        if not missed:
            pass
        elif use_table:
            for i, r in enumerate(out):
                if r is None and (v := lookup(keys[i])) is not None:
                    out[i] = bulk(v)
        elif probes + missed < PROBE:
            probes += missed
        else:
            for i, r in enumerate(out):
                if r is None:
                    probes += 1
                    if probes >= PROBE:
                        probes = 0
                        k = keys[i]
                        v = lookup(k)
                        if v is not None:
                            out[i] = bulk(v)
                        elif len(probed) < 1024:
                            probed.add(k)
        seen += n
        if seen >= WINDOW:
            low = 0 if memo_hits * 2 >= seen else low + 1
            use_table = low < LOW
            seen = memo_hits = 0
        return out

    def real_misses(keys: Sequence[bytes]) -> Any:
        if use_table and not probed:
            return None
        found = probed.intersection(keys)
        probed.clear()
        return found

    return cache_get, cache_replies, real_misses


class FastPath:
    """The fast handlers of one server (see the module docstring)."""

    def __init__(self, backend: Any, limits: Limits) -> None:
        max_key = limits.max_key
        max_reply = limits.max_reply
        backend_get: Callable[[bytes], bytes | None] = backend.get
        uncached: Callable[[list[bytes]], list[bytes | None]] | None = getattr(backend, "get_uncached", None)
        cache_get: Callable[[bytes], bytes | None] | None = getattr(backend, "cache_get", None)
        # cache_replies(keys): cache_get of each key as a bulk-string reply (None: a miss)
        cache_replies: Callable[[list[bytes]], list[bytes | None]] | None = getattr(
            backend, "cache_replies", None
        )
        if cache_replies is None and cache_get is not None:
            cache_replies = lambda keys: [None if v is None else bulk(v) for v in map(cache_get, keys)]  # noqa: E731
        self.get_uncached = uncached
        self.pending: list[bytes] = []  # keys of this batch's GETs that missed the cache
        pending = self.pending
        head, crlf = _HEAD, _CRLF

        def ping(a: list[bytes], proto: int) -> bytes | None:
            return PONG if len(a) == 1 else None

        def get_each(a: list[bytes], proto: int) -> bytes | None:  # backend.get per GET
            if len(a) != 2:
                return None
            k = a[1]
            if not 0 < len(k) <= max_key:
                return None
            v = backend_get(k)
            if v is None:
                return NULL3 if proto == 3 else QUEUED_NULL2
            return bulk(v)

        def get_cached(a: list[bytes], proto: int) -> bytes | None:  # the cache, misses batched
            if len(a) != 2:
                return None
            k = a[1]
            if not 0 < len(k) <= max_key:
                return None
            v = cache_get(k)  # type: ignore[misc]
            if v is None:
                pending.append(k)
                return PENDING
            return bulk(v)

        def get_batched(a: list[bytes], proto: int) -> bytes | None:  # no cache: all batched
            if len(a) != 2 or not 0 < len(a[1]) <= max_key:
                return None
            pending.append(a[1])
            return PENDING

        def mget(a: list[bytes], proto: int) -> bytes | None:
            n = len(a)
            if n < 2:
                return None
            keys = a[1:]
            for k in keys:
                if not 0 < len(k) <= max_key:
                    return None
            if uncached is None:
                values = [backend_get(k) for k in keys]
            elif cache_get is None:
                values = uncached(keys)
            else:
                values = [cache_get(k) for k in keys]
                missed = [k for k, v in zip(keys, values, strict=True) if v is None]
                if missed:
                    found = iter(uncached(missed))
                    values = [next(found) if v is None else v for v in values]
            if sum(len(v) for v in values if v is not None) > max_reply:
                return None
            nil = NULL3 if proto == 3 else QUEUED_NULL2
            return b"*%d\r\n" % (n - 1) + b"".join([nil if v is None else bulk(v) for v in values])

        def gets(keys: list[bytes], proto: int) -> bytes | None:
            """The replies of `GET k` for each of keys (all within the key limits), in one
            bytes; None when they would exceed MAX_BATCH_REPLY bytes or the store read
            failed (the connection then takes these requests the general way, which
            reads them again and answers any error). Loops without a call per key where
            it can: the memo in one comprehension, the cache misses in one store read
            per MAX_PENDING of them. A single GET that missed the cache gets PENDING:
            the connection hands it to RespServer.defer_read, which reads the misses of
            every connection of a round of I/O in one store transaction."""
            if len(keys) == 1:  # one GET (a client that waits for each reply): no loops
                v = cache_get(keys[0]) if cache_get is not None else None
                if v is None:  # the connection defers it (RespServer.defer_read)
                    return PENDING
                return bulk(v) if len(v) <= MAX_BATCH_REPLY else None
            out: list[bytes | None] = cache_replies(keys) if cache_replies is not None else [None] * len(keys)
            missed = out.count(None)
            if missed:
                nil = NULL3 if proto == 3 else QUEUED_NULL2
                try:
                    if missed == len(out) <= MAX_PENDING:  # all missed (many keys, few cached)
                        out = [
                            nil if v is None else head[n] + v + crlf if (n := len(v)) < 1024 else bulk(v)  # bulk(), inline
                            for v in uncached(keys)  # type: ignore[misc]
                        ]
                    else:
                        where = [i for i, r in enumerate(out) if r is None]
                        for lo in range(0, missed, MAX_PENDING):
                            if lo and sum(map(len, filter(None, out))) > MAX_BATCH_REPLY:
                                return None
                            part = where[lo : lo + MAX_PENDING]
                            for i, v in zip(part, uncached([keys[i] for i in part]), strict=True):  # type: ignore[misc]
                                out[i] = nil if v is None else bulk(v)
                except Exception:
                    return None
            reply = b"".join(out)  # type: ignore[arg-type]
            return reply if len(reply) <= MAX_BATCH_REPLY else None

        # Only over a store that reads a batch's misses at once (the others: fast handlers).
        self.gets: Callable[[list[bytes], int], bytes | None] | None = gets if uncached is not None else None
        self.recognise = plain_gets(max_key)
        get = get_each if uncached is None else get_batched if cache_get is None else get_cached
        self.sync: dict[bytes, FastHandler] = {}
        self.reads: dict[bytes, FastHandler] = {}
        for name, fn, local in (("PING", ping, False), ("GET", get, True), ("MGET", mget, True)):
            for key in (name.encode(), name.lower().encode()):
                self.reads[key] = fn
                if not local:
                    self.sync[key] = fn

    def resolve(self, out: list[bytes], proto: int, start: int = 0) -> int:
        """Fill in the placeholders in out[start:] from one get_uncached call for the
        pending keys; return the bytes added, or -1 if the read failed (placeholders
        left as they are: the connection runs those requests the general way, which
        answers the error)."""
        keys = self.pending
        try:
            values = self.get_uncached(keys)  # type: ignore[misc]
        except Exception:
            return -1
        finally:
            keys.clear()
        nil = NULL3 if proto == 3 else QUEUED_NULL2
        added = 0
        it = iter(values)
        for i in range(start, len(out)):
            if not out[i]:
                v = next(it)
                r = out[i] = nil if v is None else bulk(v)
                added += len(r)
        return added
