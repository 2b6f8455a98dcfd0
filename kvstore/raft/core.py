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

from .election import Elections
from .log import RaftLog
from .progress import ProgressState
from .readindex import ReadIndexQueue
from .replication import Replication
from .state import TRANSFER_CONTEXT
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
    Ready,
    Role,
    SnapshotMeta,
)

__all__ = ["TRANSFER_CONTEXT", "Config", "NotLeader", "ProposalDropped", "RaftCore", "bootstrap_entries"]

_M = MsgType



def bootstrap_entries(conf: ConfState) -> list[Entry]:
    """The log every founding member starts with: identical on all of them."""
    ccs = []
    for v in sorted(conf.voters):
        ccs += [ConfChange(ConfChangeType.ADD_LEARNER, v), ConfChange(ConfChangeType.PROMOTE, v)]
    ccs += [ConfChange(ConfChangeType.ADD_LEARNER, n) for n in sorted(conf.learners)]
    return [Entry(i + 1, 1, EntryType.CONF_CHANGE, cc.encode()) for i, cc in enumerate(ccs)]


class RaftCore(Elections, Replication):
    """One Raft node's consensus logic. See the module docstring and kvstore/raft/__init__.py."""

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
        if min(cfg.max_inflight, cfg.max_entries_per_msg, cfg.max_bytes_per_msg, cfg.max_uncommitted) < 1:
            raise ValueError("max_inflight, max_entries_per_msg, max_bytes_per_msg and max_uncommitted must be >= 1")
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
        self._lead = None
        self._role = Role.FOLLOWER
        self._conf = self.log.conf
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._prs = {}
        self._votes = {}
        self._transferee = None
        self._reads = ReadIndexQueue()
        self._msgs = []
        self._read_states = []
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
            "role": self.role.value,
            "state": self.state.value,
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
        """The shell took a snapshot of its state machine at `index` (an index it applied,
        possibly in the Ready it is still handling): forget the log up to there. Returns
        the snapshot's meta (with the configuration at `index`), which the shell must
        persist with the snapshot. A leader later sends it to followers that need entries
        below it: the data the shell sends with it must be the state at exactly `index`
        (or later, if applying the entries after `index` again is harmless)."""
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
        hs, ss = self._prev_hs, self._prev_ss
        if hs.term != self._term or hs.vote != self._vote or hs.commit != self.log.committed:
            hs = self._hard_state()
        if ss.leader != self._lead or ss.role != self.role:
            ss = self._soft_state()
        rd = Ready(
            soft_state=ss if ss is not self._prev_ss else None,
            hard_state=HardState(hs.term, hs.vote, hs.commit) if hs is not self._prev_hs else None,
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
        if rd.snapshot is not None:
            self.log.mark_persisted(rd.snapshot.index, rd.snapshot.term)
        if rd.entries:
            self.log.mark_persisted(rd.entries[-1].index, rd.entries[-1].term)
            if self._role == Role.LEADER:
                self._prs[self._id].maybe_update(self.log.persisted)
                self._maybe_commit()
        applied = self.log.applied
        if rd.snapshot is not None:
            applied = max(applied, rd.snapshot.index)
        if rd.committed_entries:
            applied = max(applied, rd.committed_entries[-1].index)
        self.log.applied = applied

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

