"""Raft core messages <-> protobuf, and the durable encodings of entries and hard state."""

from __future__ import annotations

import struct

from kvstore.raft import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    SnapshotMeta,
)
from kvstore.rpc.pb import raft_pb2 as pb

_ENTRY_HDR = struct.Struct(">QB")  # term, type
_HS = struct.Struct(">QQ")  # term, commit; then the vote's name


def conf_to_pb(c: ConfState) -> pb.ConfState:
    return pb.ConfState(voters=list(c.voters), learners=list(c.learners))


def conf_from_pb(c: pb.ConfState) -> ConfState:
    return ConfState(voters=tuple(c.voters), learners=tuple(c.learners))


def snap_to_pb(s: SnapshotMeta) -> pb.SnapshotMeta:
    return pb.SnapshotMeta(index=s.index, term=s.term, conf=conf_to_pb(s.conf))


def snap_from_pb(s: pb.SnapshotMeta) -> SnapshotMeta:
    return SnapshotMeta(index=s.index, term=s.term, conf=conf_from_pb(s.conf))


def msg_to_pb(m: Message) -> pb.RaftMessage:
    out = pb.RaftMessage(
        type=int(m.type), to=m.dst, term=m.term, log_term=m.log_term, index=m.index,
        entries=[pb.Entry(index=e.index, term=e.term, type=int(e.type), data=e.data) for e in m.entries],
        commit=m.commit, reject=m.reject, reject_hint=m.reject_hint, context=m.context,
    )
    setattr(out, "from", m.src)  # "from" is a Python keyword
    if m.snapshot is not None:
        out.snapshot.CopyFrom(snap_to_pb(m.snapshot))
        out.has_snapshot = True
    return out


def msg_from_pb(p: pb.RaftMessage) -> Message:
    return Message(
        type=MsgType(p.type), src=getattr(p, "from"), dst=p.to, term=p.term, log_term=p.log_term,
        index=p.index,
        entries=tuple(Entry(index=e.index, term=e.term, type=EntryType(e.type), data=e.data) for e in p.entries),
        commit=p.commit, reject=p.reject, reject_hint=p.reject_hint, context=p.context,
        snapshot=snap_from_pb(p.snapshot) if p.has_snapshot else None,
    )


def entry_blob(e: Entry) -> bytes:
    return _ENTRY_HDR.pack(e.term, int(e.type)) + e.data


def entry_from_blob(index: int, blob: bytes) -> Entry:
    term, typ = _ENTRY_HDR.unpack_from(blob)
    return Entry(index=index, term=term, type=EntryType(typ), data=bytes(blob[_ENTRY_HDR.size:]))


def hard_state_blob(hs: HardState) -> bytes:
    return _HS.pack(hs.term, hs.commit) + (hs.vote or "").encode()


def hard_state_from_blob(blob: bytes) -> HardState:
    term, commit = _HS.unpack_from(blob)
    vote = blob[_HS.size:].decode()
    return HardState(term=term, vote=vote or None, commit=commit)


def snap_blob(s: SnapshotMeta) -> bytes:
    return snap_to_pb(s).SerializeToString()


def snap_from_blob(blob: bytes) -> SnapshotMeta:
    p = pb.SnapshotMeta()
    p.ParseFromString(blob)
    return snap_from_pb(p)
