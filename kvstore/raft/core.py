"""RaftCore: Raft as a deterministic state machine (after etcd-io/raft).

Ticks, messages and requests go in; a Ready comes out. No sockets, clocks, threads or
storage in here, and the only randomness is the injected random.Random, so a test or a
simulation drives it exactly.

Choices worth knowing (see also docs in kvstore/raft/__init__.py):
- Configuration changes take effect when their entry is appended to the log, committed or
  not (Raft thesis 4.1); truncating the entry reverts it. The core derives the
  configuration from snapshot + log itself, so a restart needs no extra state, and
  `apply_conf_change` is only an acknowledgement hook for the shell. One change at a time:
  a new one is refused until the previous one is committed and the leader has committed an
  entry of its own term (the fix for the single-server-change bug of Ongaro, 2015).
- A new cluster bootstraps its configuration into the log: every founding member writes
  the same conf-change entries at term 1, so a node that joins later learns the whole
  membership history from the log (or a snapshot) like anything else.
- The leader counts its own entries towards commit as soon as they are appended: the
  shell persists a Ready's entries before it sends that Ready's messages, so no follower
  can acknowledge an entry the leader has not made durable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .log import RaftLog
from .progress import Progress, ProgressState
from .readindex import ReadIndexQueue
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
)

TRANSFER_CONTEXT = b"transfer"  # a (pre)vote that must not be ignored: leadership transfer

_M = MsgType


@dataclass
class Config:
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


class NotLeader(Exception):
    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(Exception):
    """The leader refused the proposal for now (transfer or conf change pending, backlog)."""


def bootstrap_entries(conf: ConfState) -> list[Entry]:
    """The log every founding member starts with: identical on all of them."""
    ccs = []
    for v in sorted(conf.voters):
        ccs += [ConfChange(ConfChangeType.ADD_LEARNER, v), ConfChange(ConfChangeType.PROMOTE, v)]
    ccs += [ConfChange(ConfChangeType.ADD_LEARNER, n) for n in sorted(conf.learners)]
    return [Entry(i + 1, 1, EntryType.CONF_CHANGE, cc.encode()) for i, cc in enumerate(ccs)]


class RaftCore:
    def __init__(
        self,
        cfg: Config,
        *,
        conf: ConfState,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: SnapshotMeta | None = None,
        applied: int = 0,
        rng: random.Random,
    ) -> None:
        """Start from durable state (hard_state, entries after the snapshot, snapshot,
        applied index of the shell's state machine), or from nothing.

        `conf` is used only when there is no durable state at all: a non-empty `conf`
        bootstraps a new cluster (all founding members must pass the same one); a node that
        joins an existing cluster passes `JOIN` (empty) and learns the rest from the leader.
        On a restart the configuration comes from `snapshot` and the log.
        """
        if cfg.heartbeat_tick < 1 or cfg.election_tick <= cfg.heartbeat_tick:
            raise ValueError("need 1 <= heartbeat_tick < election_tick")
        self.cfg = cfg
        self._id = cfg.id
        self._rng = rng
        fresh = hard_state is None and not entries and snapshot is None
        base = snapshot or SnapshotMeta(0, 0, JOIN)
        if fresh and conf.voters:
            entries = bootstrap_entries(conf)
            hard_state = HardState(term=1, vote=None, commit=len(entries))
        hs = hard_state or HardState()
        self.log = RaftLog(base, entries, hs.commit, applied)
        self._prev_hs = HardState(hs.term, hs.vote, self.log.committed)
        if fresh:
            self.log.unstable = 1
            self._prev_hs = HardState()
        self._term = hs.term
        self._vote = hs.vote
        self._lead: str | None = None
        self._role = Role.FOLLOWER
        self._conf = self.log.conf
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._prs: dict[str, Progress] = {}
        self._votes: dict[str, bool] = {}
        self._transferee: str | None = None
        self._reads = ReadIndexQueue()
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._pending_bcast = False  # leader: new entries or commit index to send out
        self._bcast_commit = 0  # leader: the commit index last broadcast
        self._prev_ss = self._soft_state()
        self.dropped_messages = 0  # malformed or impossible messages ignored

    # ------------------------------------------------------------------ properties

    @property
    def id(self) -> str:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> str | None:
        return self._vote

    @property
    def role(self) -> Role:
        if self._role == Role.FOLLOWER and self._id in self._conf.learners:
            return Role.LEARNER
        return self._role

    @property
    def is_leader(self) -> bool:
        return self._role == Role.LEADER

    @property
    def leader(self) -> str | None:
        return self._lead

    @property
    def commit(self) -> int:
        return self.log.committed

    @property
    def applied(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def conf_state(self) -> ConfState:
        """The configuration in effect: the newest one in the log, committed or not."""
        return self._conf

    @property
    def snapshot_meta(self) -> SnapshotMeta:
        return self.log.snapshot

    def status(self) -> dict:
        st: dict = {
            "id": self._id,
            "role": self.role.status_name,
            "state": self.role.value,
            "term": self._term,
            "vote": self._vote,
            "leader": self._lead,
            "commit": self.log.committed,
            "applied": self.log.applied,
            "first_index": self.log.first_index,
            "last_index": self.log.last_index,
            "snapshot_index": self.log.snapshot.index,
            "conf": {"voters": list(self._conf.voters), "learners": list(self._conf.learners)},
            "dropped_messages": self.dropped_messages,
        }
        if self._role == Role.LEADER:
            st["progress"] = {
                p: {"match": pr.match, "next": pr.next, "state": pr.state.name.lower(), "active": pr.recent_active}
                for p, pr in sorted(self._prs.items())
            }
            st["transferee"] = self._transferee
        return st

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        self._election_elapsed += 1
        if self._role != Role.LEADER:
            if self._promotable() and self._election_elapsed >= self._timeout:
                self._election_elapsed = 0
                self._campaign(pre=self.cfg.pre_vote, transfer=False)
            return
        self._heartbeat_elapsed += 1
        if self._election_elapsed >= self.cfg.election_tick:
            self._election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(self._term, None)  # lost the quorum: stop serving
                return
            self._transferee = None  # a transfer that did not finish in time is abandoned
        if self._heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._reads.heartbeat_context())

    def step(self, m: Message) -> None:
        """Handle a message from a peer. Bad or impossible input is ignored and counted."""
        if not self._valid(m):
            self.dropped_messages += 1
            return
        if m.term > self._term:
            if m.type in (_M.VOTE, _M.PREVOTE):
                # Leader stickiness: while we hear from a leader, ignore candidates, so a
                # node rejoining from a partition cannot depose a healthy leader.
                in_lease = (
                    self.cfg.check_quorum and self._lead is not None and self._election_elapsed < self.cfg.election_tick
                )
                if in_lease and m.context != TRANSFER_CONTEXT:
                    return
            if m.type == _M.PREVOTE or (m.type == _M.PREVOTE_RESP and not m.reject):
                pass  # pre-votes are for a future term: ours does not change
            elif m.type in (_M.APPEND, _M.HEARTBEAT, _M.SNAPSHOT):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, None)
        elif m.term < self._term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (_M.APPEND, _M.HEARTBEAT):
                # A deposed leader (maybe back from a partition) learns the new term from
                # this and steps down; without it, it could keep disrupting with pre-votes.
                self._send(Message(_M.APPEND_RESP, self._id, m.src, self._term))
            elif m.type == _M.PREVOTE:
                self._send(Message(_M.PREVOTE_RESP, self._id, m.src, self._term, reject=True))
            return
        if m.type in (_M.VOTE, _M.PREVOTE):
            self._handle_vote_request(m)
        elif self._role == Role.LEADER:
            self._step_leader(m)
        elif self._role in (Role.CANDIDATE, Role.PRECANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def propose(self, data: bytes) -> int:
        """Append a command; returns its log index (committed later, maybe never)."""
        self._check_can_propose()
        return self._append(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose one single-server membership change. Raises ProposalDropped while
        another change is uncommitted (or before the leader committed in its term), and
        ValueError for a change that does not fit the current configuration."""
        self._check_can_propose()
        if self.log.last_conf_index > self.log.committed:
            raise ProposalDropped("a configuration change is still pending")
        if self.log.term(self.log.committed) != self._term:
            raise ProposalDropped("the new leader has not committed an entry of its term yet")
        conf = self._conf
        if not cc.node:
            raise ValueError("empty node name")
        if cc.type == ConfChangeType.ADD_LEARNER and cc.node in conf.members():
            raise ValueError(f"{cc.node} is already a member")
        if cc.type == ConfChangeType.PROMOTE and cc.node not in conf.learners:
            raise ValueError(f"{cc.node} is not a learner")
        if cc.type == ConfChangeType.REMOVE:
            if cc.node not in conf.members():
                raise ValueError(f"{cc.node} is not a member")
            if conf.voters == (cc.node,):
                raise ValueError("cannot remove the last voter")
        return self._append(EntryType.CONF_CHANGE, cc.encode())

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Acknowledge a committed CONF_CHANGE entry the shell applied. The change took
        effect when its entry was appended, so this only returns the configuration now in
        effect (which may include a newer, uncommitted change). Calling it is optional."""
        return self._conf

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read: a ReadState(index, ctx) comes out in a later Ready
        (on this node), or never if leadership is lost meanwhile (the shell times out)."""
        if self._role == Role.LEADER:
            self._leader_read(ctx, self._id)
        elif self._lead is not None:
            self._send(Message(_M.READ_INDEX, self._id, self._lead, self._term, context=ctx))
        else:
            raise NotLeader(None)

    def transfer_leader(self, target: str) -> None:
        """Hand leadership to `target`: bring its log up to date, then tell it to campaign
        now. Proposals are refused meanwhile; abandoned after an election timeout."""
        if self._role != Role.LEADER:
            raise NotLeader(self._lead)
        if target == self._id or target == self._transferee:
            return
        if target not in self._conf.voters:
            raise ValueError(f"{target} is not a voter")
        self._transferee = target
        self._election_elapsed = 0
        if self._prs[target].match == self.log.last_index:
            self._send(Message(_M.TIMEOUT_NOW, self._id, target, self._term))
        else:
            self._send_appends(target, True)

    def compact(self, index: int, term: int) -> SnapshotMeta:
        """The shell took a snapshot of its state machine at `index` (<= applied): forget
        the log up to there. Returns the snapshot's meta (with the configuration at
        `index`), which the shell must persist with the snapshot."""
        return self.log.compact(index, term)

    def report_snapshot(self, peer: str, ok: bool) -> None:
        """The shell finished (ok) or gave up (not ok) sending a snapshot to `peer`."""
        pr = self._prs.get(peer) if self._role == Role.LEADER else None
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the follower's answer or a heartbeat before probing

    def report_unreachable(self, peer: str) -> None:
        """A send to `peer` failed: stop pipelining to it until it answers again."""
        pr = self._prs.get(peer) if self._role == Role.LEADER else None
        if pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    # ------------------------------------------------------------------ Ready

    def has_ready(self) -> bool:
        self._flush()
        lg = self.log
        if self._msgs or self._read_states or lg.pending_snapshot is not None:
            return True
        if lg.unstable <= lg.last_index or lg.committed > lg.applying:
            return True
        hs, ss = self._prev_hs, self._prev_ss
        if hs.term != self._term or hs.vote != self._vote or hs.commit != lg.committed:
            return True
        return ss.leader != self._lead or ss.role != self.role

    def ready(self) -> Ready:
        """Everything to persist, send and apply since the last Ready. What it returns is
        considered handed over: call advance() once the shell is done with it."""
        self._flush()
        hs, ss = self._hard_state(), self._soft_state()
        rd = Ready(
            soft_state=ss if ss != self._prev_ss else None,
            hard_state=hs if hs != self._prev_hs else None,
            entries=self.log.unstable_entries(),
            snapshot=self.log.pending_snapshot,
            messages=self._msgs,
            committed_entries=self.log.next_committed(),
            read_states=self._read_states,
        )
        self._prev_hs, self._prev_ss = hs, ss
        self._msgs, self._read_states = [], []
        self.log.mark_handed_out(rd.committed_entries[-1].index if rd.committed_entries else 0)
        return rd

    def advance(self, rd: Ready) -> None:
        """The shell persisted, sent and applied `rd`."""
        applied = self.log.applied
        if rd.snapshot is not None:
            applied = max(applied, rd.snapshot.index)
        if rd.committed_entries:
            applied = max(applied, rd.committed_entries[-1].index)
        self.log.applied = applied

    # ------------------------------------------------------------------ roles

    def _promotable(self) -> bool:
        return self._id in self._conf.voters

    def _random_timeout(self) -> int:
        return self._rng.randint(self.cfg.election_tick, 2 * self.cfg.election_tick - 1)

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = None
        self._lead = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._transferee = None
        self._votes = {}
        self._prs = {}
        self._reads.clear()
        self._pending_bcast = False

    def _become_follower(self, term: int, lead: str | None) -> None:
        self._reset(term)
        self._lead = lead
        self._role = Role.FOLLOWER

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        last = self.log.last_index
        mi = self.cfg.max_inflight
        self._prs = {p: Progress(last + 1, mi) for p in self._conf.members()}
        me = self._prs[self._id] = Progress(last + 1, mi, match=last)
        me.become_replicate()
        me.recent_active = True
        self._bcast_commit = self.log.committed
        self._append(EntryType.NORMAL, b"")  # commits the previous terms' entries (5.4.2)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if not self._promotable():
            return
        if pre:
            self._role = Role.PRECANDIDATE  # term and vote unchanged until we win the pre-vote
            self._lead = None
            self._timeout = self._random_timeout()
            mtype, term = _M.PREVOTE, self._term + 1
        else:
            self._reset(self._term + 1)
            self._role = Role.CANDIDATE
            self._vote = self._id
            mtype, term = _M.VOTE, self._term
        self._votes = {self._id: True}
        if self._poll() > 0:  # a single voter
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        ctx = TRANSFER_CONTEXT if transfer else b""
        li, lt = self.log.last_index, self.log.last_term()
        for v in self._conf.voters:
            if v != self._id:
                self._send(Message(mtype, self._id, v, term, log_term=lt, index=li, context=ctx))

    def _poll(self) -> int:
        """1: won the (pre-)election, -1: lost it, 0: undecided."""
        voters = self._conf.voters
        quorum = len(voters) // 2 + 1
        granted = sum(1 for v in voters if self._votes.get(v) is True)
        rejected = sum(1 for v in voters if self._votes.get(v) is False)
        if granted >= quorum:
            return 1
        return -1 if rejected > len(voters) - quorum else 0

    def _quorum_active(self) -> bool:
        voters = self._conf.voters
        active = 0
        for v in voters:
            pr = self._prs.get(v)
            if v == self._id or (pr is not None and pr.recent_active):
                active += 1
        for p, pr in self._prs.items():
            if p != self._id:
                pr.recent_active = False
        return active >= len(voters) // 2 + 1

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type == _M.PREVOTE
        resp = _M.PREVOTE_RESP if pre else _M.VOTE_RESP
        can_vote = (
            self._vote == m.src
            or (self._vote is None and self._lead is None)
            or (pre and m.term > self._term)
            or (self.cfg._unsafe_vote_twice and not pre and self._role != Role.LEADER)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp, self._id, m.src, m.term))
            if not pre:
                self._election_elapsed = 0
                self._vote = m.src
        else:
            self._send(Message(resp, self._id, m.src, self._term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        if m.type in (_M.APPEND, _M.HEARTBEAT, _M.SNAPSHOT):
            self._become_follower(m.term, m.src)  # someone won this term
            self._step_follower(m)
            return
        pre = self._role == Role.PRECANDIDATE
        if m.type != (_M.PREVOTE_RESP if pre else _M.VOTE_RESP):
            return
        if pre and not m.reject and m.term != self._term + 1:
            return  # a grant from an older pre-vote round
        if m.src not in self._conf.voters or m.src in self._votes:
            return
        self._votes[m.src] = not m.reject
        result = self._poll()
        if result > 0:
            if pre:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
        elif result < 0:
            self._become_follower(self._term, None)

    # ------------------------------------------------------------------ follower

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (_M.APPEND, _M.HEARTBEAT, _M.SNAPSHOT):
            if self._lead not in (None, m.src):
                self.dropped_messages += 1  # two leaders in one term cannot happen
                return
            self._election_elapsed = 0
            self._lead = m.src
            if t == _M.APPEND:
                self._handle_append(m)
            elif t == _M.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif t == _M.TIMEOUT_NOW:
            self._campaign(pre=False, transfer=True)
        elif t == _M.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))
        # anything else (a READ_INDEX sent to a non-leader, stale answers) is dropped

    def _handle_append(self, m: Message) -> None:
        lg = self.log
        if m.index < lg.committed:
            self._send(Message(_M.APPEND_RESP, self._id, m.src, self._term, index=lg.committed))
            return
        last = lg.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is None:
            # Fast backtracking: tell the leader the last index at which our log may match.
            hint, hint_term = lg.find_conflict_by_term(min(m.index, lg.last_index), m.log_term)
            self._send(
                Message(
                    _M.APPEND_RESP,
                    self._id,
                    m.src,
                    self._term,
                    index=m.index,
                    reject=True,
                    reject_hint=hint,
                    log_term=hint_term,
                )
            )
        elif last < 0:
            self.dropped_messages += 1  # would overwrite a committed entry
        else:
            if m.entries:
                self._conf_changed()
            self._send(Message(_M.APPEND_RESP, self._id, m.src, self._term, index=last))

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends commit <= our match index, so it never exceeds our log.
        if m.commit <= self.log.last_index:
            self.log.commit_to(m.commit)
        else:
            self.dropped_messages += 1
        self._send(Message(_M.HEARTBEAT_RESP, self._id, m.src, self._term, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        s = m.snapshot
        assert s is not None  # checked by _valid
        lg = self.log
        if s.index > lg.committed:
            if lg.match_term(s.index, s.term):
                lg.commit_to(s.index)  # we have those entries already
            else:
                lg.restore(s)
                self._conf_changed()
                self._send(Message(_M.APPEND_RESP, self._id, m.src, self._term, index=lg.last_index))
                return
        self._send(Message(_M.APPEND_RESP, self._id, m.src, self._term, index=lg.committed))

    # ------------------------------------------------------------------ leader

    def _check_can_propose(self) -> None:
        if self._role != Role.LEADER:
            raise NotLeader(self._lead)
        if self._transferee is not None:
            raise ProposalDropped(f"leadership transfer to {self._transferee} in progress")
        if self.log.last_index - self.log.committed >= self.cfg.max_uncommitted:
            raise ProposalDropped("too many uncommitted entries")

    def _append(self, etype: EntryType, data: bytes) -> int:
        index = self.log.last_index + 1
        self.log.append([Entry(index, self._term, etype, data)])
        self._prs[self._id].maybe_update(index)
        if etype == EntryType.CONF_CHANGE:
            self._conf_changed()
        self._pending_bcast = True  # sent at the next ready(): one batch for many proposals
        self._maybe_commit()
        return index

    def _conf_changed(self) -> None:
        conf = self.log.conf
        if conf == self._conf:
            return
        self._conf = conf
        if self._role != Role.LEADER:
            return
        members = conf.members()  # a tuple: iteration order must not depend on hashing
        for p in [p for p in self._prs if p not in members and p != self._id]:
            del self._prs[p]
        for p in members:
            if p not in self._prs:
                self._prs[p] = Progress(self.log.last_index + 1, self.cfg.max_inflight)
        if self._transferee is not None and self._transferee not in conf.voters:
            self._transferee = None
        self._maybe_commit()  # a removed voter may have been the one we waited for

    def _maybe_commit(self) -> bool:
        voters = self._conf.voters
        if not voters:
            return False
        matches = sorted((self._prs[v].match if v in self._prs else 0 for v in voters), reverse=True)
        index = matches[len(voters) // 2]
        # Only entries of the leader's own term are committed by counting replicas (5.4.2).
        if index <= self.log.committed or (
            self.log.term(index) != self._term and not self.cfg._unsafe_commit_any_term
        ):
            return False
        self.log.commit_to(index)
        self._pending_bcast = True
        if self._reads.waiting and self.log.term(self.log.committed) == self._term:
            waiting, self._reads.waiting = self._reads.waiting, []
            for ctx, src in waiting:
                self._leader_read(ctx, src)
        if self._id not in voters and self.log.last_conf_index <= self.log.committed:
            # Our own removal is committed: tell the others, then step down (thesis 4.2.2).
            self._bcast_append()
            self._become_follower(self._term, None)
        return True

    def _flush(self) -> None:
        if self._pending_bcast and self._role == Role.LEADER:
            self._bcast_append()
        self._pending_bcast = False

    def _bcast_append(self) -> None:
        commit_changed = self.log.committed > self._bcast_commit
        self._bcast_commit = self.log.committed
        for p in self._prs:
            if p != self._id:
                self._send_appends(p, commit_changed)

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        commit = self.log.committed
        for p, pr in self._prs.items():
            if p != self._id:
                self._send(Message(_M.HEARTBEAT, self._id, p, self._term, commit=min(pr.match, commit), context=ctx))

    def _send_appends(self, to: str, send_if_empty: bool) -> None:
        """Send `to` what it lacks: as many AppendEntries as the pipeline allows."""
        if not self._send_append(to, send_if_empty):
            return
        pr = self._prs[to]
        while pr.state == ProgressState.REPLICATE and pr.next <= self.log.last_index and not pr.is_paused():
            self._send_append(to, False)

    def _send_append(self, to: str, send_if_empty: bool) -> bool:
        pr = self._prs.get(to)
        if pr is None or pr.is_paused():
            return False
        lg = self.log
        prev = pr.next - 1
        prev_term = lg.term(prev)
        if prev_term is None:
            if prev > lg.last_index:
                pr.next = lg.last_index + 1
                return False
            return self._send_snapshot(to, pr)  # the follower needs compacted entries
        ents: list[Entry] = []
        if pr.next <= lg.last_index:
            ents = lg.slice(pr.next, lg.last_index + 1, self.cfg.max_entries_per_msg, self.cfg.max_bytes_per_msg)
        if not ents and not send_if_empty:
            return False
        self._send(
            Message(_M.APPEND, self._id, to, self._term, log_term=prev_term, index=prev, entries=tuple(ents), commit=lg.committed)
        )
        pr.sent(ents[-1].index if ents else 0)
        return True

    def _send_snapshot(self, to: str, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        snap = self.log.snapshot
        self._send(Message(_M.SNAPSHOT, self._id, to, self._term, snapshot=snap))
        pr.become_snapshot(snap.index)
        return True

    def _step_leader(self, m: Message) -> None:
        if m.type == _M.READ_INDEX:
            self._leader_read(m.context, m.src)
            return
        pr = self._prs.get(m.src)
        if pr is None:
            return  # not (or no longer) a member
        if m.type == _M.APPEND_RESP:
            pr.recent_active = True
            self._handle_append_resp(m, pr)
        elif m.type == _M.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.is_paused():
                pr.inflights.popleft()  # an answer may have been lost: let one more through
            if pr.match < self.log.last_index or pr.state == ProgressState.PROBE:
                self._send_appends(m.src, True)
            if m.context:
                self._reads.ack(m.src, m.context)
                self._release_reads()
        elif m.type in (_M.APPEND, _M.HEARTBEAT, _M.SNAPSHOT):
            self.dropped_messages += 1  # another leader in our term cannot happen

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_appends(m.src, True)
            return
        if m.index > self.log.last_index:
            self.dropped_messages += 1
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT:
            if pr.match + 1 >= self.log.first_index:
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.free_le(m.index)
        committed = self._maybe_commit()
        if self._role != Role.LEADER:
            return  # we just committed our own removal
        self._send_appends(m.src, was_paused and not committed)
        if m.src == self._transferee and pr.match == self.log.last_index:
            self._send(Message(_M.TIMEOUT_NOW, self._id, m.src, self._term))

    def _leader_read(self, ctx: bytes, src: str) -> None:
        lg = self.log
        if lg.term(lg.committed) != self._term:
            # Until an entry of our term commits, our commit index may lag the cluster's.
            self._reads.waiting.append((ctx, src))
            return
        if self._conf.voters == (self._id,):
            self._answer_read(lg.committed, ctx, src)
            return
        self._reads.add(lg.committed, ctx, src)
        self._bcast_heartbeat(self._reads.heartbeat_context())

    def _release_reads(self) -> None:
        for r in self._reads.release(self._conf.voters, self._id):
            self._answer_read(r.index, r.context, r.src)

    def _answer_read(self, index: int, ctx: bytes, src: str) -> None:
        if src == self._id:
            self._read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(_M.READ_INDEX_RESP, self._id, src, self._term, index=index, context=ctx))

    # ------------------------------------------------------------------ helpers

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self._lead, self.role)

    def _valid(self, m: Message) -> bool:
        if m.dst != self._id or m.src == self._id or not m.src:
            return False
        if m.term < 0 or m.index < 0 or m.commit < 0 or m.log_term < 0 or m.reject_hint < 0:
            return False
        if m.entries:
            expect, prev_term = m.index + 1, m.log_term
            for e in m.entries:
                if e.index != expect or e.term < prev_term or e.term > m.term:
                    return False
                expect, prev_term = expect + 1, e.term
        if m.type == _M.SNAPSHOT and (m.snapshot is None or m.snapshot.index < 1):
            return False
        return True
