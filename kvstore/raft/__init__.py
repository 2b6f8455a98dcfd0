"""Raft consensus as a deterministic state machine (no I/O), after etcd-io/raft.

The shell's loop (kvstore/node.py):

    core = RaftCore(Config(id=name), conf=..., hard_state=..., entries=..., snapshot=...,
                    applied=store.applied_index(), rng=random.Random())
    core.tick() every tick; core.step(msg) for each message received;
    core.propose(data) / propose_conf_change(cc) / read_index(ctx) / transfer_leader(id);
    while core.has_ready():
        rd = core.ready()
        persist rd.snapshot (install its data), rd.entries, rd.hard_state   # one fsync
        send rd.messages                                                    # only after
        apply rd.committed_entries in order (CONF_CHANGE: core.apply_conf_change)
        serve rd.read_states once applied >= their index
        core.advance(rd)

Readies must be handled in the order they come out.

Starting a node:
- a founding member of a new cluster, nothing on disk: conf=ConfState(voters=all founders)
  (the same on every founder). The core writes that configuration into the log as
  conf-change entries at term 1 (bootstrap_entries), already committed; the first Ready
  carries them to persist and apply.
- a node joining a running cluster, nothing on disk: conf=JOIN. It stays passive until the
  leader (which proposed ADD_LEARNER for it) sends it the log or a snapshot.
- a restart: pass what was persisted (hard_state, the entries after the snapshot, the
  snapshot meta) and the state machine's applied index; `conf` is then ignored.

Membership: single-server changes, one at a time (ADD_LEARNER, PROMOTE, REMOVE). A
configuration takes effect as soon as its entry is in a node's log (Raft thesis 4.1), so
the core derives it from snapshot + log by itself; apply_conf_change() is only an
acknowledgement that returns the configuration in effect. The leader sends to a new member
as soon as the ADD_LEARNER entry is appended, so the transport must accept any peer named
in Message.dst. A removed leader steps down once the removal commits (transfer leadership
first to avoid the election gap). compact() returns the SnapshotMeta (with the
configuration at that index) that the shell persists with its snapshot.

Modules: types (values), log (in-memory log + configuration per index), progress
(per-follower replication state), readindex (linearizable reads), state/election/
replication/core (RaftCore), sim/simcheck/simrun (the deterministic cluster simulation).
"""

from .core import TRANSFER_CONTEXT, RaftCore, bootstrap_entries
from .types import (
    JOIN,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
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
