"""What a leader knows about each follower's log, and how fast it may send to it.

PROBE: one AppendEntries at a time until the follower's match point is found (after a
  reject, or when the leader is new). REPLICATE: the match point is known; send
  optimistically, up to `max_inflight` AppendEntries in flight (pipelining). SNAPSHOT:
  the follower needs entries the leader compacted; wait for the snapshot to land.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflights",
        "max_inflight",
        "pending_snapshot",
        "recent_active",
        "sent_commit",
    )

    def __init__(self, next_index: int, max_inflight: int, match: int = 0) -> None:
        self.match = match
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: an AppendEntries is out, wait for its answer or a heartbeat
        self.inflights: deque[int] = deque()  # REPLICATE: last index of each AppendEntries in flight
        self.max_inflight = max(1, max_inflight)
        self.pending_snapshot = 0
        self.recent_active = False  # heard from since the last check-quorum round
        self.sent_commit = 0  # the commit index the last AppendEntries carried

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.probe_sent = False
        self.inflights.clear()

    def maybe_update(self, index: int) -> bool:
        """The follower's log matches ours up to `index`; False if we knew that already."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        """The follower rejected an AppendEntries at `rejected`; its log may match ours up
        to `hint`. False when the rejection is stale (answers an older message)."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1  # the caller switches to PROBE
            return True
        if self.next - 1 != rejected:
            return False
        if hint < self.match:
            # The follower no longer has entries it acknowledged: its data was wiped or
            # replaced. Start over from what it has (a snapshot if we compacted past it).
            # Lowering match never un-commits anything; it only delays later commits.
            self.match = hint
        self.next = max(min(rejected, hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def sent(self, last: int) -> None:
        """An AppendEntries with entries up to `last` (0: none) went out."""
        if self.state == ProgressState.REPLICATE:
            if last:
                self.next = last + 1
                self.inflights.append(last)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def free_le(self, index: int) -> None:
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflights) >= self.max_inflight
        return True

    def __repr__(self) -> str:
        return f"Progress({self.state.name} match={self.match} next={self.next} inflight={len(self.inflights)})"
