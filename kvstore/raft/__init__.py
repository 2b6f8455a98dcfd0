"""Raft consensus as a deterministic state machine (no I/O), after etcd-io/raft.

The shell's loop:

    core.tick() every tick; core.step(msg) for each message received;
    core.propose(data) / propose_conf_change(cc) / read_index(ctx) / transfer_leader(id);
    while core.has_ready():
        rd = core.ready()
        persist rd.snapshot (install its data), rd.entries, rd.hard_state   # one fsync
        send rd.messages                                                    # only after
        apply rd.committed_entries (CONF_CHANGE: core.apply_conf_change)    # in order
        serve rd.read_states once applied >= their index
        core.advance(rd)

Modules: types (values), log (in-memory log + configuration per index), progress
(per-follower replication state), readindex (linearizable reads), core (RaftCore),
sim (the deterministic cluster simulation the tests drive).
"""

from .core import TRANSFER_CONTEXT, Config, NotLeader, ProposalDropped, RaftCore, bootstrap_entries
from .types import (
    JOIN,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
    apply_change,
)

__all__ = [
    "JOIN",
    "TRANSFER_CONTEXT",
    "Config",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MsgType",
    "NotLeader",
    "ProposalDropped",
    "RaftCore",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotMeta",
    "SoftState",
    "apply_change",
    "bootstrap_entries",
]
