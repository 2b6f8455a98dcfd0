"""Byte layout of the cache segment: constants, structs, geometry. See shm.py for the picture."""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Any

Buffer = bytes | bytearray | memoryview  # what keys and values may be passed as

MAGIC = b"KVSCACHE"
VERSION = 1
HDR_SIZE = 4096
SLOT_SIZE = 32
SLOT_SHIFT = 5  # log2(SLOT_SIZE): the reader turns a hash into a slot offset with one `&`
MAX_KEY = 1024
NO_OWNER = 0xFFFFFFFF
MAX_SEGMENT = 1 << 32  # slots hold 32-bit offsets

# header, offset 0: magic, version, header size, size_bytes, nslots, window, ring_off,
# ring_cap, max_value, max_key, lock_timeout, nstripes
GEOM = struct.Struct("<8sIIQIIQQIIdI4x")
# offset 96: creator pid, retired flag, creator start time, generation
OWNER_OFF = 96
OWNER = struct.Struct("<IIQQ")
RETIRED_OFF = OWNER_OFF + 4
GENERATION_OFF = OWNER_OFF + 16
LOCK_OFF = 128  # kvstore.cache.lock.LOCK_INFO (32 bytes)
HEAD_OFF = 192
COUNTERS_OFF = 256
COUNTERS = ("puts", "deletes", "evictions", "rejected", "lock_recoveries", "resets", "wraps", "clears")
(C_PUTS, C_DELETES, C_EVICTIONS, C_REJECTED, C_RECOVERIES, C_RESETS, C_WRAPS, C_CLEARS) = range(len(COUNTERS))
STRIPES_OFF = HDR_SIZE
MAX_STRIPES = 4096  # 32 KiB of stripe versions: small enough to stay in a reader's CPU cache

U32 = struct.Struct("@I")
U64 = struct.Struct("@Q")
# slot: seq, key offset, value offset (= key end), value end, checksum of the value, key hash
SLOT = struct.Struct("@QIIIIQ")
SLOT_FIELDS = struct.Struct("@IIIIQ")  # SLOT without the seq, at slot + 8
READ = struct.Struct("@QIII")  # the reader's view: seq, key offset, value offset, value end
READ_SUM = struct.Struct("@QIIII")  # the same plus the checksum
REC = struct.Struct("@II")  # ring record header: total length, owning slot

assert (
    GEOM.size <= OWNER_OFF
    and SLOT.size == SLOT_SIZE == 1 << SLOT_SHIFT
    and SLOT_FIELDS.size == 24
    and READ_SUM.size == 24
)


def window_hashes(window: int) -> struct.Struct:
    """Unpacks the key hashes of `window` consecutive slots in one call."""
    return struct.Struct("@" + "24xQ" * window)


def record_len(klen: int, vlen: int) -> int:
    return REC.size + ((klen + vlen + 7) & ~7)


@dataclass(frozen=True)
class Geometry:
    size_bytes: int
    nslots: int  # a power of two: home slots; the table has nslots + window - 1 physical slots
    window: int
    ring_off: int
    ring_cap: int
    max_value: int
    max_key: int = MAX_KEY
    nstripes: int = MAX_STRIPES  # a power of two; slot i belongs to stripe i & (nstripes - 1)

    @property
    def physical_slots(self) -> int:
        return self.nslots + self.window - 1

    @property
    def slots_off(self) -> int:
        return STRIPES_OFF + 8 * self.nstripes

    @classmethod
    def compute(cls, size_bytes: int, max_value: int, window: int) -> Geometry:
        """About a quarter of the segment for slots, the rest for the ring of records.

        A quarter suits keys plus values of ~100 bytes (one 32-byte slot per ~128-byte
        record); smaller entries run out of slots first, larger ones out of ring first.
        """
        if not 0 < max_value < 1 << 24:
            raise ValueError(f"max_value must be in 1..16 MiB, not {max_value}")
        if not 1 <= window <= 64:
            raise ValueError(f"window must be in 1..64, not {window}")
        if size_bytes >= MAX_SEGMENT:
            raise ValueError(f"size_bytes must be under 4 GiB, not {size_bytes}")
        nslots = 64
        while nslots * 2 * SLOT_SIZE * 4 <= size_bytes:
            nslots *= 2
        nstripes = min(nslots, MAX_STRIPES)
        ring_off = STRIPES_OFF + 8 * nstripes + (nslots + window - 1) * SLOT_SIZE
        ring_cap = (size_bytes - ring_off) & ~7
        need = 4 * record_len(MAX_KEY, max_value)
        if ring_cap < need:
            raise ValueError(
                f"size_bytes={size_bytes} is too small for max_value={max_value}: "
                f"need at least {ring_off + need}"
            )
        return cls(size_bytes, nslots, window, ring_off, ring_cap, max_value, MAX_KEY, nstripes)

    def pack_into(self, buf: Any, magic: bytes, lock_timeout: float) -> None:
        GEOM.pack_into(
            buf, 0, magic, VERSION, HDR_SIZE, self.size_bytes, self.nslots, self.window,
            self.ring_off, self.ring_cap, self.max_value, self.max_key, lock_timeout, self.nstripes,
        )  # fmt: skip

    @classmethod
    def unpack_from(cls, buf: Any) -> tuple[bytes, int, float, Geometry]:
        """(magic, version, lock_timeout, geometry) as stored in a header."""
        (
            magic,
            version,
            _,
            size,
            nslots,
            window,
            ring_off,
            ring_cap,
            max_value,
            max_key,
            lock_timeout,
            nstripes,
        ) = GEOM.unpack_from(buf, 0)
        geo = cls(size, nslots, window, ring_off, ring_cap, max_value, max_key, nstripes)
        return magic, version, lock_timeout, geo


def slot_column(buf: memoryview, geo: Geometry, column: int) -> memoryview:
    """A strided view of one u64 column of every slot (0 = seq, 3 = hash); release it after use."""
    q = buf[geo.slots_off : geo.slots_off + geo.physical_slots * SLOT_SIZE].cast("Q")
    try:
        return q[column :: SLOT_SIZE // 8]
    finally:
        q.release()


def stripe_versions(buf: memoryview, geo: Geometry) -> memoryview:
    """The u64 view of the stripe versions; release it after use."""
    return buf[STRIPES_OFF : geo.slots_off].cast("Q")


def odd(seq: int) -> int:
    """The next odd value after a seq (or a stripe version): 'being changed'."""
    return seq + 2 if seq & 1 else seq + 1


def bulk_clear(buf: memoryview, geo: Geometry) -> None:
    """Empty every slot at C speed, keeping the seqlock protocol for concurrent readers:
    all stripes and slot seqs go odd, the fields go to zero, then all go to a fresh even
    value."""
    zero = array("Q", bytes(8 * geo.physical_slots))
    with stripe_versions(buf, geo) as stripes, slot_column(buf, geo, 0) as seqs:
        odd_stripes = array("Q", [odd(v) for v in stripes.tolist()])
        stripes[:] = odd_stripes
        odd_seqs = array("Q", [odd(s) for s in seqs.tolist()])
        seqs[:] = odd_seqs
        for column in (1, 2, 3):
            with slot_column(buf, geo, column) as col:
                col[:] = zero
        seqs[:] = array("Q", [s + 1 for s in odd_seqs])
        stripes[:] = array("Q", [v + 1 for v in odd_stripes])
