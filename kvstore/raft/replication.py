"""Log replication on both sides, the commit rule, and ReadIndex (paper 5.3-5.4, thesis 6.4).

The leader keeps a Progress per member and sends what each lacks (probe, pipelined
replicate, or snapshot); followers run the consistency check and answer with hints for
fast backtracking. Proposals are batched: they are sent at the next ready().
"""

from __future__ import annotations

from .progress import Progress, ProgressState
from .state import RaftState
from .types import Entry, EntryType, Message, MsgType, NotLeader, ProposalDropped, ReadState, Role

_M = MsgType


class Replication(RaftState):
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
        # Our own copy counts towards a commit once the shell persisted it (advance()).
        if self.cfg._unsafe_count_unpersisted:
            self._prs[self._id].maybe_update(index)
        if etype == EntryType.CONF_CHANGE:
            self._conf_changed()
        self._pending_bcast = True  # sent at the next ready(): one batch for many proposals
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
        # a removed voter may have been the one we waited for
        self._release_reads()
        self._maybe_commit()

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
        """Send new entries, and the new commit index to whoever has not got it yet."""
        commit = self.log.committed
        commit_changed = commit > self._bcast_commit
        self._bcast_commit = commit
        for p, pr in self._prs.items():
            if p != self._id:
                self._send_appends(p, commit_changed and pr.sent_commit < commit)

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
        pr.sent_commit = lg.committed
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

