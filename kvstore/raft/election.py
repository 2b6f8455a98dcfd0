"""Leader election: pre-vote, votes, becoming leader, check-quorum (paper 5.2, thesis 9.6)."""

from __future__ import annotations

from .progress import Progress
from .state import TRANSFER_CONTEXT, RaftState
from .types import EntryType, Message, MsgType, Role

_M = MsgType


class Elections(RaftState):
    def _become_leader(self) -> None:
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        last = self.log.last_index
        mi = self.cfg.max_inflight
        self._prs = {p: Progress(last + 1, mi) for p in self._conf.members()}
        me = self._prs[self._id] = Progress(last + 1, mi, match=self.log.persisted)
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

