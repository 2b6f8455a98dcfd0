"""The writer's side of the cache table: find, insert, evict, clear, repair.

Every method runs with the writer lock held (see ShmCache._locked); readers run
concurrently, so each slot change follows the seqlock protocol (seq odd, fields, seq
even), and no record byte is overwritten while a slot still points at it.
The layout is described in shm.py.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

import xxhash

from kvstore.cache import layout as L

Buffer = L.Buffer
_hash = xxhash.xxh3_64_intdigest
_checksum = xxhash.xxh32_intdigest


class Corrupt(Exception):
    """The ring does not parse; the writer resets the table (it is only a cache)."""


class Table:
    def __init__(self, mm: mmap.mmap, geo: L.Geometry, stall: Callable[[str], None]) -> None:
        self._mm = mm
        self._geo = geo
        self._mask = geo.nslots - 1
        self._winh = L.window_hashes(geo.window)
        self._slots_off = geo.slots_off
        self._stall = stall  # test hook: may stop the process at a named point

    @property
    def retired(self) -> bool:
        return bool(L.U32.unpack_from(self._mm, L.RETIRED_OFF)[0])

    def retire(self) -> None:
        """Mark the segment dead and empty it, so processes still mapping it only see misses."""
        L.U32.pack_into(self._mm, L.RETIRED_OFF, 1)
        with memoryview(self._mm) as buf:
            L.bulk_clear(buf, self._geo)

    def put(self, key: Buffer, value: Buffer) -> None:
        """Insert or replace; a value over max_value (or an empty, long or 0-hash key) only
        removes the old entry."""
        h = _hash(key)
        klen, vlen = len(key), len(value)
        if vlen > self._geo.max_value or not 0 < klen <= self._geo.max_key or h == 0:
            found, _ = self.find(key, h)
            if found >= 0:
                self.clear_slot(found)
            self.bump(L.C_REJECTED)
            return
        if self.retired:
            return
        found, free = self.find(key, h)
        slot = found if found >= 0 else free
        if slot < 0:
            slot = self.oldest((h >> L.SLOT_SHIFT) & self._mask)
            self.bump(L.C_EVICTIONS)
        size = L.record_len(klen, vlen)
        try:
            pos = self.alloc(size, slot)
        except Corrupt:
            self.reset()
            pos = self.alloc(size, slot)
        self.write_slot(slot, pos, key, value, h)
        self.bump(L.C_PUTS)

    def slot_off(self, slot: int) -> int:
        return self._slots_off + slot * L.SLOT_SIZE

    def find(self, key: Buffer, h: int) -> tuple[int, int]:
        """(slot holding `key` or -1, first empty slot of its window or -1). Under the lock."""
        mm = self._mm
        base = (h >> L.SLOT_SHIFT) & self._mask
        found = free = -1
        for j, hh in enumerate(self._winh.unpack_from(mm, self.slot_off(base))):
            if hh == h and found < 0:
                _, d, k, _, _, _ = L.SLOT.unpack_from(mm, self.slot_off(base + j))
                if mm[d:k] == key:
                    found = base + j
            elif hh == 0 and free < 0:
                free = base + j
        return found, free

    def oldest(self, base: int) -> int:
        """The window's entry whose record the ring head will reach first."""
        geo = self._geo
        head = L.U64.unpack_from(self._mm, L.HEAD_OFF)[0]
        ages = []
        for s in range(base, base + geo.window):
            d = L.U32.unpack_from(self._mm, self.slot_off(s) + 8)[0]
            ages.append(((d - L.REC.size - geo.ring_off - head) % geo.ring_cap, s))
        return min(ages)[1]

    def remove(self, key: Buffer, h: int | None = None) -> None:
        found, _ = self.find(key, _hash(key) if h is None else h)
        if found >= 0:
            self.clear_slot(found)
        self.bump(L.C_DELETES)

    def alloc(self, size: int, owner: int) -> int:
        """Claim `size` bytes at the ring head for slot `owner`; returns the ring position.

        Order matters for crash safety: evict (clear the slots of overrun records), then
        re-tile what is left of the last overrun record, then write the new record's header,
        and only then move the head. A crash between any two steps leaves a tiled ring.
        """
        mm, ro, cap = self._mm, self._geo.ring_off, self._geo.ring_cap
        head = L.U64.unpack_from(mm, L.HEAD_OFF)[0]
        if head > cap or head & 7:
            raise Corrupt(f"ring head {head}")
        if head + size > cap:  # wrap: the tail end becomes one dead record
            self.evict_range(head, cap)
            if cap > head:
                L.REC.pack_into(mm, ro + head, cap - head, L.NO_OWNER)
            L.U64.pack_into(mm, L.HEAD_OFF, 0)
            self.bump(L.C_WRAPS)
            head = 0
        end = head + size
        stop = self.evict_range(head, end)
        if stop > end:
            L.REC.pack_into(mm, ro + end, stop - end, L.NO_OWNER)
        self._stall("ring")
        L.REC.pack_into(mm, ro + head, size, owner)
        L.U64.pack_into(mm, L.HEAD_OFF, end)
        return head

    def evict_range(self, start: int, end: int) -> int:
        """Clear the slots of the records overlapping [start, end); returns where the last ends."""
        mm, ro, cap = self._mm, self._geo.ring_off, self._geo.ring_cap
        nphys = self._geo.physical_slots
        pos = start
        while pos < end:
            length, owner = L.REC.unpack_from(mm, ro + pos)
            if length < L.REC.size or length & 7 or pos + length > cap:
                raise Corrupt(f"ring record at {pos} has length {length}")
            if owner < nphys:
                off = self.slot_off(owner)
                if L.U32.unpack_from(mm, off + 8)[0] == ro + pos + L.REC.size:
                    self.clear_slot(owner)
                    self.bump(L.C_EVICTIONS)
            pos += length
        return pos

    def write_slot(self, slot: int, pos: int, key: Buffer, value: Buffer, h: int) -> None:
        mm = self._mm
        d = self._geo.ring_off + pos + L.REC.size
        k = d + len(key)
        v = k + len(value)
        mm[d:k] = key  # a fresh record: no slot points here yet, so no seqlock needed
        mm[k:v] = value
        self._change_slot(slot, d, k, v, _checksum(value), h)

    def clear_slot(self, slot: int) -> None:
        self._change_slot(slot, 0, 0, 0, 0, 0)

    def _change_slot(self, slot: int, d: int, k: int, v: int, checksum: int, h: int) -> None:
        """Seqlock write of one slot, nested in a seqlock write of its stripe (for memos)."""
        mm = self._mm
        stripe = L.STRIPES_OFF + 8 * (slot & (self._geo.nstripes - 1))
        version = L.odd(L.U64.unpack_from(mm, stripe)[0])
        L.U64.pack_into(mm, stripe, version)
        off = self.slot_off(slot)
        seq = L.odd(L.U64.unpack_from(mm, off)[0])
        L.U64.pack_into(mm, off, seq)
        if h:
            self._stall("slot_odd")
        L.SLOT_FIELDS.pack_into(mm, off + 8, d, k, v, checksum, h)
        L.U64.pack_into(mm, off, seq + 1)
        L.U64.pack_into(mm, stripe, version + 1)

    def reset(self, *, count: bool = True) -> None:
        """Empty the table: every slot, then the ring. Under the lock."""
        with memoryview(self._mm) as buf:
            L.bulk_clear(buf, self._geo)
        L.REC.pack_into(self._mm, self._geo.ring_off, self._geo.ring_cap, L.NO_OWNER)
        L.U64.pack_into(self._mm, L.HEAD_OFF, 0)
        self.bump_at(L.GENERATION_OFF)
        if count:
            self.bump(L.C_RESETS)

    def repair(self) -> None:
        """After taking the lock over from a dead writer: clear the slots it left odd.

        Called by the writer lock, with the lock held; a put's crash points leave nothing
        else to mend (see alloc), but a ring that does not parse at its head is reset.
        """
        self.clear_odd_slots()
        head = L.U64.unpack_from(self._mm, L.HEAD_OFF)[0]
        cap = self._geo.ring_cap
        length = L.REC.unpack_from(self._mm, self._geo.ring_off + head)[0] if head < cap else 8
        if head > cap or head & 7 or length < 8 or length & 7 or head + length > cap:
            self.reset()
        self.bump_at(L.GENERATION_OFF)
        self.bump(L.C_RECOVERIES)

    def clear_odd_slots(self) -> None:
        """Clear every slot a writer left half-written, then close any stripe left open."""
        with memoryview(self._mm) as buf, L.slot_column(buf, self._geo, 0) as seqs:
            odd = [i for i, s in enumerate(seqs.tolist()) if s & 1]
        for slot in odd:
            self.clear_slot(slot)
        with memoryview(self._mm) as buf, L.stripe_versions(buf, self._geo) as stripes:
            for i, version in enumerate(stripes.tolist()):
                if version & 1:
                    stripes[i] = version + 1

    def bump(self, counter: int) -> None:
        self.bump_at(L.COUNTERS_OFF + 8 * counter)

    def bump_at(self, off: int) -> None:
        L.U64.pack_into(self._mm, off, L.U64.unpack_from(self._mm, off)[0] + 1)
