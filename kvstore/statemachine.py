"""The replicated state machine: write commands, their log encoding, and how they apply.

Every write that enters a node (RESP SET/DEL/MSET, gRPC Put/Delete) becomes one
`Command`, encoded into a Raft log entry, and is applied, in log order, by `apply`
inside one LMDB write transaction. Conditional writes (SET NX/XX/GET) are decided
here, at apply time, so they are atomic across the cluster.

Encoding (all integers big-endian):

    byte 0      opcode: 1 SET, 2 DEL, 3 MSET, 4 BATCH
    SET         flags u8 (1 NX, 2 XX, 4 GET), klen u32, key, vlen u32, value
    DEL         n u32, then n x (klen u32, key)
    MSET        n u32, then n x (klen u32, key, vlen u32, value)
    BATCH       n u32, then n x (len u32, one encoded SET, DEL or MSET)

A leader puts the writes that arrive together into one BATCH entry (writepath.py), so
the Raft log, the AppendEntries messages and the fsyncs carry one entry per batch, not
one per write; its commands apply in order, each with its own result. An empty entry
(the leader's no-op at the start of a term) decodes to None.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

_U32 = struct.Struct(">I")
OP_SET, OP_DEL, OP_MSET, OP_BATCH = 1, 2, 3, 4
F_NX, F_XX, F_GET = 1, 2, 4


class WriteView(Protocol):
    """What `apply` needs from a storage write transaction."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Set:
    key: bytes
    value: bytes
    nx: bool = False
    xx: bool = False
    get: bool = False


@dataclass(frozen=True, slots=True)
class Delete:
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class MSet:
    pairs: tuple[tuple[bytes, bytes], ...]


Command = Set | Delete | MSet


@dataclass(frozen=True, slots=True)
class SetResult:
    applied: bool  # False when NX/XX said no
    old: bytes | None  # the previous value (only meaningful with GET)


Result = SetResult | int | None  # Set -> SetResult, Delete -> count, MSet -> None
SET_DONE = SetResult(True, None)  # the result of every plain SET


def keys_of(cmd: Command) -> list[bytes]:
    if isinstance(cmd, Set):
        return [cmd.key]
    if isinstance(cmd, Delete):
        return list(cmd.keys)
    return [k for k, _ in cmd.pairs]


def encode(cmd: Command) -> bytes:
    if isinstance(cmd, Set):
        flags = (F_NX if cmd.nx else 0) | (F_XX if cmd.xx else 0) | (F_GET if cmd.get else 0)
        return b"".join(
            (bytes((OP_SET, flags)), _U32.pack(len(cmd.key)), cmd.key, _U32.pack(len(cmd.value)), cmd.value)
        )
    if isinstance(cmd, Delete):
        parts = [bytes((OP_DEL,)), _U32.pack(len(cmd.keys))]
        for k in cmd.keys:
            parts += (_U32.pack(len(k)), k)
        return b"".join(parts)
    parts = [bytes((OP_MSET,)), _U32.pack(len(cmd.pairs))]
    for k, v in cmd.pairs:
        parts += (_U32.pack(len(k)), k, _U32.pack(len(v)), v)
    return b"".join(parts)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise ValueError("truncated command")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        if self.pos + 4 > len(self.buf):
            raise ValueError("truncated command")
        (n,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(n)

    def blob(self) -> bytes:
        n = self.u32()
        if self.pos + n > len(self.buf):
            raise ValueError("truncated command")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(b)


def encode_batch(encoded: list[bytes]) -> bytes:
    """One BATCH entry of already encoded commands (see the top of this file)."""
    parts = [bytes((OP_BATCH,)), _U32.pack(len(encoded))]
    for c in encoded:
        parts += (_U32.pack(len(c)), c)
    return b"".join(parts)


_SET_HEAD = struct.Struct(">BBI")  # opcode, flags, klen


def decode_entry(data: bytes) -> list[Command] | None:
    """The commands of a log entry, in order: one, or a BATCH's; None for a no-op."""
    if not data:
        return None
    if data[0] != OP_BATCH:
        cmd = decode(data)
        return None if cmd is None else [cmd]
    n = len(data)
    if n < 5:
        raise ValueError("truncated command")
    (count,) = _U32.unpack_from(data, 1)
    out: list[Command] = []
    pos = 5
    u32 = _U32.unpack_from
    for _ in range(count):
        if pos + 4 > n:
            raise ValueError("truncated command")
        (size,) = u32(data, pos)
        pos += 4
        end = pos + size
        if end > n:
            raise ValueError("truncated command")
        if size == 0:
            raise ValueError("empty command in a batch")
        if data[pos] == OP_SET and size >= 10:  # the common case, without a _Reader
            _, flags, klen = _SET_HEAD.unpack_from(data, pos)
            kend = pos + 6 + klen
            if kend + 4 <= end:
                (vlen,) = u32(data, kend)
                if kend + 4 + vlen == end:
                    out.append(Set(data[pos + 6 : kend], data[kend + 4 : end],
                                   bool(flags & F_NX), bool(flags & F_XX), bool(flags & F_GET)))
                    pos = end
                    continue
        cmd = decode(data[pos:end])
        if cmd is None:
            raise ValueError("empty command in a batch")
        out.append(cmd)
        pos = end
    if pos != n:
        raise ValueError("trailing bytes after command")
    return out


def decode(data: bytes) -> Command | None:
    if not data:
        return None
    r = _Reader(data)
    op = r.u8()
    if op == OP_SET:
        flags = r.u8()
        key = r.blob()
        value = r.blob()
        cmd: Command = Set(key, value, bool(flags & F_NX), bool(flags & F_XX), bool(flags & F_GET))
    elif op == OP_DEL:
        cmd = Delete(tuple(r.blob() for _ in range(r.u32())))
    elif op == OP_MSET:
        n = r.u32()
        cmd = MSet(tuple((r.blob(), r.blob()) for _ in range(n)))
    else:
        raise ValueError(f"unknown command opcode {op}")
    if r.pos != len(data):
        raise ValueError("trailing bytes after command")
    return cmd


def apply(view: WriteView, cmd: Command) -> tuple[Result, list[tuple[bytes, bytes | None]]]:
    """Apply one command; returns its result and the (key, new value or None) changes."""
    if isinstance(cmd, Set):
        old = view.get(cmd.key) if (cmd.nx or cmd.xx or cmd.get) else None
        if (cmd.nx and old is not None) or (cmd.xx and old is None):
            return SetResult(False, old), []
        view.put(cmd.key, cmd.value)
        return SetResult(True, old), [(cmd.key, cmd.value)]
    if isinstance(cmd, Delete):
        n = 0
        changes: list[tuple[bytes, bytes | None]] = []
        for k in dict.fromkeys(cmd.keys):  # DEL a a counts a once, as Redis does
            if view.delete(k):
                n += 1
                changes.append((k, None))
        return n, changes
    for k, v in cmd.pairs:
        view.put(k, v)
    return None, list(dict(cmd.pairs).items())


def apply_all(view: WriteView, cmds: list[Command]) -> tuple[list[Result], list[tuple[bytes, bytes | None]]]:
    """Apply a batch's commands in order: each one's result, and all the changes."""
    results: list[Result] = []
    changes: list[tuple[bytes, bytes | None]] = []
    put = view.put
    for cmd in cmds:
        if type(cmd) is Set and not (cmd.nx or cmd.xx or cmd.get):
            put(cmd.key, cmd.value)
            results.append(SET_DONE)
            changes.append((cmd.key, cmd.value))
        else:
            res, ch = apply(view, cmd)
            results.append(res)
            changes += ch
    return results, changes


_U64 = struct.Struct(">Q")


def encode_result(res: Result) -> bytes:
    """Results travel from the leader to a follower that forwarded the write."""
    if isinstance(res, SetResult):
        return b"S" + bytes((int(res.applied), int(res.old is not None))) + (res.old or b"")
    if isinstance(res, int):
        return b"I" + _U64.pack(res)
    return b"N"


def decode_result(data: bytes) -> Result:
    tag = data[:1]
    if tag == b"S" and len(data) >= 3:
        return SetResult(bool(data[1]), bytes(data[3:]) if data[2] else None)
    if tag == b"I" and len(data) == 9:
        return int(_U64.unpack_from(data, 1)[0])
    if tag == b"N":
        return None
    raise ValueError("malformed command result")
