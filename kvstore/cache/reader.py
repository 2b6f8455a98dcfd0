"""The lock-free read path of ShmCache (the layout is described in shm.py).

Built as closures over local names, not methods: at well under a microsecond per get,
attribute lookups are a noticeable share.

Table read: one xxh3 call, one struct unpack of the home slot, one key compare, one value
slice, one seq re-read: five C calls, where py-lmdb's txn.get() is one, and two random
accesses to a large segment. So each process also keeps a bounded memo of what it read:
key -> (stripe, stripe version, value, framed value). Writers bump a slot's stripe
version (odd while the slot changes, even after) around every change: update, delete,
eviction, clear, reset, retirement. A value is memoised only if its stripe was even and
unchanged around the read, and served from the memo only while that version is still
current, so a memo hit is the table's current value, never a stale one. A memo hit costs
one dict lookup and one 8-byte read from the stripe array (32 KiB, which stays in the
CPU cache). The memo also keeps each value framed as a RESP bulk string
(`$<len>\r\n<value>\r\n`), made once when it is memoised: the RESP server answers a
pipeline of GETs with one join of those (`peek_framed`), where framing each reply again
costs more than the memo lookup.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any, NamedTuple

import xxhash

from kvstore.cache import layout as L

# A slot still unstable after this many looks reads as a miss. A writer keeps a slot odd
# for about a microsecond; one that stays odd longer was descheduled or died, and a miss
# (the caller falls back to the store) beats waiting for it. No sched_yield(): on a busy
# machine one yield can cost a whole scheduling period.
READ_RETRIES = 16

Getter = Callable[[L.Buffer], "bytes | None"]


class Reader(NamedTuple):
    get: Getter  # the memo, then the table
    peek: Getter  # the memo alone (None: not there, or no longer current)
    peek_framed: Callable[[list[bytes]], list[bytes | None]]  # peek of each key, as RESP bulk strings
    lookup: Getter  # the table alone; a hit goes into the memo
    counters: Callable[[], dict[str, int]]  # this process's read counters
    release: Callable[[], None]  # lets go of the mapping (before mm.close())


def reader_parts(mm: mmap.mmap, geo: L.Geometry, verify: bool, memo_entries: int, memo_bytes: int) -> Reader:
    """The reader's functions over the mapping: the memo and the table together and
    apart (see `Reader`)."""
    idx0 = geo.slots_off
    home_mask = (geo.nslots - 1) << L.SLOT_SHIFT  # hash -> byte offset of the home slot
    stripe0 = L.STRIPES_OFF >> 3  # word index of stripe 0
    stripe_mask = geo.nstripes - 1
    slot_size = L.SLOT_SIZE
    x3 = xxhash.xxh3_64_intdigest
    x32 = xxhash.xxh32_intdigest
    read = L.READ.unpack_from
    read_sum = L.READ_SUM.unpack_from
    window = L.window_hashes(geo.window).unpack_from
    # u64 view of stripes and slots: words[i] is one 8-byte load and no tuple, about three
    # times cheaper than an unpack
    with memoryview(mm) as whole:
        words = whole[: idx0 + geo.physical_slots * slot_size].cast("Q")
    memo: dict[Any, tuple[int, int, bytes, bytes]] = {}  # keys: bytes only
    memo_get, memo_pop = memo.get, memo.pop
    use_memo = memo_entries > 0 and memo_bytes > 0
    hits = misses = torn = memo_used = 0

    def remember(key: L.Buffer, stripe: int, version: int, val: bytes) -> None:
        nonlocal memo_used
        if type(key) is not bytes:
            return
        if len(memo) >= memo_entries or memo_used >= memo_bytes:
            memo.clear()  # crude but O(1) amortised, and the table is one read away
            memo_used = 0
        memo[key] = (stripe, version, val, b"$%d\r\n%s\r\n" % (len(val), val))
        memo_used += len(key) + 2 * len(val) + 110

    def slow(key: L.Buffer, h: int) -> bytes | None:
        """Scan the whole window; retry while a matching slot is being written."""
        nonlocal hits, misses, torn
        base = idx0 + (h & home_mask)
        for _ in range(READ_RETRIES):
            hashes = window(mm, base)
            if h not in hashes:
                # No slot of the window has the key's hash: a miss (a slot being written
                # with it right now is a write in flight, which a miss may precede).
                break
            unstable = False
            off = base
            for hh in hashes:
                if hh == h:
                    stripe = stripe0 + (((off - idx0) >> L.SLOT_SHIFT) & stripe_mask)
                    version = words[stripe]
                    seq, d, k, v, c = read_sum(mm, off)
                    if seq & 1:
                        unstable = True
                    elif mm[d:k] == key and key:
                        val = mm[k:v]
                        if words[off >> 3] == seq and (not verify or x32(val) == c):
                            hits += 1
                            if use_memo and not version & 1 and words[stripe] == version:
                                remember(key, stripe, version, val)
                            return val
                        unstable = True
                    elif words[off >> 3] != seq:
                        unstable = True
                off += slot_size
            if not unstable:
                break
            torn += 1
        misses += 1
        return None

    # Both look at the home slot's key hash first (one 8-byte load): when it is another
    # key's, a miss costs one unpack of the window's hashes and no key comparison.

    def table_get(key: L.Buffer) -> bytes | None:
        nonlocal hits, misses
        h = x3(key)
        off = idx0 + (h & home_mask)
        if words[(off >> 3) + 3] == h:
            seq, d, k, v = read(mm, off)
            if mm[d:k] == key and key:  # `and key`: an empty slot matches the empty key
                val = mm[k:v]
                if words[off >> 3] == seq and not seq & 1:
                    hits += 1
                    return val
        elif h not in window(mm, off):
            misses += 1
            return None
        return slow(key, h)

    def table_get_memo(key: L.Buffer) -> bytes | None:
        nonlocal hits, misses
        h = x3(key)
        off = idx0 + (h & home_mask)
        if words[(off >> 3) + 3] == h:
            stripe = stripe0 + ((h >> L.SLOT_SHIFT) & stripe_mask)
            version = words[stripe]
            seq, d, k, v = read(mm, off)
            if mm[d:k] == key and key:
                val = mm[k:v]
                if words[off >> 3] == seq and not seq & 1:
                    hits += 1
                    if not version & 1 and words[stripe] == version:
                        remember(key, stripe, version, val)
                    return val
        elif h not in window(mm, off):
            misses += 1
            return None
        return slow(key, h)

    def checked_get(key: L.Buffer) -> bytes | None:
        return slow(key, x3(key))  # the window scan checks each value's checksum

    fill = checked_get if verify else table_get_memo

    def peek(key: L.Buffer) -> bytes | None:
        nonlocal hits
        try:
            entry = memo_get(key)
        except TypeError:  # bytearray, memoryview: not hashable, not memoised
            return None
        if entry is not None:
            stripe, version, val, _ = entry
            if words[stripe] == version:
                hits += 1
                return val
            memo_pop(key, None)
        return None

    def get(key: L.Buffer) -> bytes | None:
        """peek(key), else fill(key): written out, since a call more costs this loop
        about a third (~190 ns against ~290 per memo hit, measured)."""
        nonlocal hits
        try:
            entry = memo_get(key)
        except TypeError:  # bytearray, memoryview: not hashable, not memoised
            return fill(key)
        if entry is not None:
            stripe, version, val, _ = entry
            if words[stripe] == version:
                hits += 1
                return val
            memo_pop(key, None)
        return fill(key)

    def peek_framed(keys: list[bytes]) -> list[bytes | None]:
        """peek() of each key (bytes only), framed as a RESP bulk string, in one
        comprehension: no call per key. The same rule as peek: only while the stripe
        version is the one memoised."""
        nonlocal hits
        out = [e[3] if (e := memo_get(k)) is not None and words[e[0]] == e[1] else None for k in keys]
        hits += len(out) - out.count(None)
        return out

    def no_memo(key: L.Buffer) -> bytes | None:
        return None

    def no_memo_many(keys: list[bytes]) -> list[bytes | None]:
        return [None] * len(keys)

    def counters() -> dict[str, int]:
        return {"hits": hits, "misses": misses, "torn_retries": torn, "memo_entries": len(memo)}

    def release() -> None:
        memo.clear()
        words.release()

    if use_memo:
        return Reader(get, peek, peek_framed, fill, counters, release)
    plain = checked_get if verify else table_get
    return Reader(plain, no_memo, no_memo_many, plain, counters, release)
