"""The values that flow in and out of the Raft core: entries, messages, states, Ready.

Nothing here does I/O. The shell (kvstore/node.py) encodes these for gRPC and LMDB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class EntryType(IntEnum):
    NORMAL = 0  # a NORMAL entry with empty data is the no-op a new leader appends
    CONF_CHANGE = 1  # data is ConfChange.encode()


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()

    def members(self) -> tuple[str, ...]:
        return self.voters + self.learners


#: The configuration a node joining an existing cluster starts with: it learns the real
#: one from the leader's log (or snapshot). Only the first members of a new cluster start
#: with a non-empty configuration (see RaftCore's bootstrap).
JOIN = ConfState(voters=())


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf: ConfState


class ConfChangeType(IntEnum):
    ADD_LEARNER = 0
    PROMOTE = 1  # learner -> voter
    REMOVE = 2


@dataclass(frozen=True)
class ConfChange:
    type: ConfChangeType
    node: str

    def encode(self) -> bytes:
        return bytes([int(self.type)]) + self.node.encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Raises ValueError on anything that is not an encoded ConfChange."""
        if len(data) < 2:
            raise ValueError("conf change too short")
        return cls(ConfChangeType(data[0]), data[1:].decode())


def apply_change(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after `cc`. Changes that do not fit `conf` leave it unchanged,
    so replaying a log over any configuration never fails."""
    voters, learners = set(conf.voters), set(conf.learners)
    if cc.type == ConfChangeType.ADD_LEARNER:
        if cc.node not in voters:
            learners.add(cc.node)
    elif cc.type == ConfChangeType.PROMOTE:
        if cc.node in learners:
            learners.discard(cc.node)
            voters.add(cc.node)
    elif cc.type == ConfChangeType.REMOVE:
        voters.discard(cc.node)
        learners.discard(cc.node)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


class MsgType(IntEnum):
    PREVOTE = 0
    PREVOTE_RESP = 1
    VOTE = 2
    VOTE_RESP = 3
    APPEND = 4
    APPEND_RESP = 5
    HEARTBEAT = 6
    HEARTBEAT_RESP = 7
    SNAPSHOT = 8
    TIMEOUT_NOW = 9
    READ_INDEX = 10
    READ_INDEX_RESP = 11


@dataclass(slots=True)
class Message:
    """One Raft message. Field use per type:

    (PRE)VOTE: index/log_term = candidate's last entry; context=b"transfer" for a
      leadership-transfer election (overrides leader stickiness).
    APPEND: index/log_term = the entry before `entries`; commit = leader's commit.
    APPEND_RESP: index = the follower's last index known to match (accept), or the rejected
      `index` with reject_hint/log_term = where the follower's log may match (reject).
    HEARTBEAT: commit = min(leader commit, follower match); context = read-index round.
    HEARTBEAT_RESP: context echoed.
    SNAPSHOT: snapshot = the leader's snapshot meta (the shell ships the data).
    READ_INDEX: context = the requester's ctx. READ_INDEX_RESP: index = read index, context.
    """

    type: MsgType
    src: str
    dst: str
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: SnapshotMeta | None = None


@dataclass(slots=True)
class ReadState:
    """A linearizable read `context` may be served once the applied index >= `index`."""

    index: int
    context: bytes


class Role(StrEnum):
    """RaftCore.role and SoftState.role are one of FOLLOWER, CANDIDATE, LEADER, LEARNER,
    whose value (and lower-cased name) is the status name of the contract. PRECANDIDATE
    (campaigning in the pre-vote phase) only shows in RaftCore.state."""

    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"  # a follower that is a non-voting member
    PRECANDIDATE = "precandidate"

    @property
    def status_name(self) -> str:
        """The contract's role name: leader, follower, candidate or learner."""
        return "candidate" if self is Role.PRECANDIDATE else self.value


@dataclass(slots=True)
class SoftState:
    leader: str | None
    role: Role


_EARLY = frozenset({MsgType.APPEND, MsgType.HEARTBEAT})


@dataclass(slots=True)
class Ready:
    """What the shell must do, in this order:

    1. persist `snapshot` (install its data), then `entries` (they replace every stored
       entry from entries[0].index on) and `hard_state`, durably (one fsync);
    2. send `messages`;
    3. apply `committed_entries` in order (for CONF_CHANGE entries call
       RaftCore.apply_conf_change); serve `read_states` once applied >= their index;
    4. call RaftCore.advance(ready).

    A leader's AppendEntries and heartbeats may go out before step 1 finishes (see
    `early_messages`): the leader counts its own entries towards a commit only once
    advance() says they were persisted (thesis 10.2.1), so a follower never learns a
    commit index that a crash of the leader's disk could undo.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)

    def early_messages(self) -> tuple[list[Message], list[Message]]:
        """Split `messages` into (those that may be sent while this Ready is still being
        persisted, the rest). Early: a leader's APPEND and HEARTBEAT, whose term was made
        durable before the votes that elected it were asked for. Every answer to a peer
        (votes, append responses) and anything else waits for the persist."""
        early: list[Message] = []
        late: list[Message] = []
        for m in self.messages:
            (early if m.type in _EARLY else late).append(m)
        return early, late


@dataclass
class Config:
    """A node's Raft settings (times in ticks)."""

    id: str
    election_tick: int = 10  # followers wait a random election_tick..2*election_tick-1 ticks
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 64  # AppendEntries in flight per follower
    max_entries_per_msg: int = 512
    max_bytes_per_msg: int = 1 << 20
    max_uncommitted: int = 10000  # proposals beyond this many uncommitted entries are dropped
    # Test-only sabotage, to prove the simulation catches real bugs. Never set in production.
    _unsafe_commit_any_term: bool = False  # count replicas of older-term entries (Figure 8)
    _unsafe_vote_twice: bool = False  # grant a second vote in the same term
    _unsafe_count_unpersisted: bool = False  # a leader counts its own entries before they are written


class NotLeader(Exception):
    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(Exception):
    """The leader refused the proposal for now (transfer or conf change pending, backlog)."""

