"""A simulated node of kvstore.raft.sim: its "disk", its state machine and its core."""

from __future__ import annotations

from collections import deque

from .core import RaftCore
from .types import Config, ConfState, Entry, HardState, Ready, SnapshotMeta


class SimNode:
    """One node: its durable "disk" and state machine, and its core while it is up."""

    def __init__(self, node_id: str, boot_conf: ConfState, cfg: Config) -> None:
        self.id = node_id
        self.boot_conf = boot_conf
        self.cfg = cfg
        self.core: RaftCore | None = None
        self.retired = False  # removed from the cluster and shut down for good
        # durable state
        self.hard_state: HardState | None = None
        self.snapshot: SnapshotMeta | None = None
        # the state at each snapshot index this node took or installed: the shell sends the
        # data of exactly the snapshot the core names, even if it took a newer one since
        self.snap_states: dict[int, int] = {}
        self.entries: list[Entry] = []  # entries after the snapshot
        self.applied = 0
        self.state = 0  # running hash of every applied entry: the "state machine"
        # bookkeeping for the checks
        self.incoming: dict[tuple[int, int], tuple[int, int]] = {}  # snapshot data received
        self.lead_term = 0
        self.lead_last = (0, 0)
        self.commit_seen = 0
        self.commit_checked = 0
        # Readies taken from the core but not finished yet (the shell is still fsyncing),
        # each with the step it finishes at and the term of the entry before its entries
        self.pending: deque[tuple[int, Ready, int | None]] = deque()

    @property
    def up(self) -> bool:
        return self.core is not None

    def log_summaries(self, index: int, term: int) -> list[tuple[int, int, bool]]:
        """(last index, last term, has entry (index, term)) of each log this node could
        campaign or vote with: its memory when up, and its disk (a crash now would bring
        it back with that)."""
        snap = self.snapshot.index if self.snapshot else 0
        k = index - snap - 1
        has = index <= snap or (k < len(self.entries) and self.entries[k].term == term)
        last_term = self.entries[-1].term if self.entries else (self.snapshot.term if self.snapshot else 0)
        out = [(snap + len(self.entries), last_term, has)]
        if self.core is not None:
            lg = self.core.log
            out.append((lg.last_index, lg.last_term(), index <= lg.snapshot.index or lg.term(index) == term))
        return out
