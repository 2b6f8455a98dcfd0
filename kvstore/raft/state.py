"""The state every part of the Raft core shares, and the role transitions.

RaftCore (core.py) is assembled from this base and two mixins: Elections (election.py)
and Replication (replication.py: the log on both sides, commit, reads). They all work on
the attributes declared here; RaftCore.__init__ sets them.
"""

from __future__ import annotations

import random

from .log import RaftLog
from .progress import Progress
from .readindex import ReadIndexQueue
from .types import Config, ConfState, EntryType, HardState, Message, ReadState, Role, SoftState

TRANSFER_CONTEXT = b"transfer"  # a (pre)vote that must not be ignored: leadership transfer


class RaftState:
    cfg: Config
    log: RaftLog
    _id: str
    _rng: random.Random
    _term: int
    _vote: str | None
    _lead: str | None
    _role: Role
    _conf: ConfState  # the configuration in effect: the newest in the log
    _election_elapsed: int
    _heartbeat_elapsed: int
    _timeout: int  # randomized election timeout
    _prs: dict[str, Progress]  # leader: every member's progress, ours included
    _votes: dict[str, bool]  # (pre)candidate: the answers so far
    _transferee: str | None  # leader: leadership transfer target
    _reads: ReadIndexQueue
    _msgs: list[Message]
    _read_states: list[ReadState]
    _pending_bcast: bool  # leader: new entries or commit index to send out at the next ready()
    _bcast_commit: int  # leader: the commit index last broadcast
    dropped_messages: int

    @property
    def role(self) -> Role:
        """leader, candidate, follower or learner (the contract's names: a pre-candidate
        shows as a candidate; `state` tells them apart)."""
        if self._role == Role.FOLLOWER and self._id in self._conf.learners:
            return Role.LEARNER
        return Role.CANDIDATE if self._role == Role.PRECANDIDATE else self._role

    @property
    def state(self) -> Role:
        """The precise role, PRECANDIDATE included."""
        return self._role

    @property
    def is_leader(self) -> bool:
        return self._role == Role.LEADER

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

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self._lead, self.role)

    # implemented by the mixins
    def _append(self, etype: EntryType, data: bytes) -> int:
        raise NotImplementedError

    def _campaign(self, pre: bool, transfer: bool) -> None:
        raise NotImplementedError

    def _step_follower(self, m: Message) -> None:
        raise NotImplementedError
