"""Key limits and the fixed encodings the store writes (indexes, internal names).

Raft indexes are stored as 8-byte big-endian integers so that LMDB's plain bytewise
key order is index order: no custom comparator, and any process (or `mdb_dump`) can
read the log without knowing about Python.
"""

from __future__ import annotations

import struct

from kvstore.errors import LimitExceeded

# LMDB's compiled-in maximum key size (mdb_env_get_maxkeysize). A longer key would be
# rejected by LMDB with a cryptic MDB_BAD_VALSIZE, so we refuse it first, with a
# message a user can act on.
MAX_KEY_SIZE = 511

_U64 = struct.Struct(">Q")


def check_key(key: bytes, what: str = "key") -> None:
    """Refuse keys LMDB cannot hold. Never truncate: two long keys would collide."""
    n = len(key)
    if n == 0:
        raise LimitExceeded(f"{what} is empty; keys must be 1 to {MAX_KEY_SIZE} bytes")
    if n > MAX_KEY_SIZE:
        raise LimitExceeded(f"{what} is {n} bytes; the limit is {MAX_KEY_SIZE}")


def pack_index(index: int) -> bytes:
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return _U64.pack(index)


def unpack_index(raw: bytes) -> int:
    return int(_U64.unpack(raw)[0])


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix`.

    None when there is none (empty prefix, or a prefix of all 0xff bytes).
    """
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)
