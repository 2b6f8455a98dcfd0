"""The leader's queue of linearizable reads (ReadIndex, Raft thesis section 6.4).

A read asked at commit index C is safe to serve at C once a quorum of voters has
acknowledged a heartbeat sent after the read arrived: no other leader can have committed
anything newer then. Each read gets a sequence number; a heartbeat carries the newest
one, and a follower's echo of number N acknowledges every read numbered <= N. The
numbers are ours, not the caller's context, so duplicate or reused contexts are harmless.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class PendingRead:
    seq: int
    index: int
    context: bytes
    src: str  # who asked: the leader itself or a follower that forwarded READ_INDEX


class ReadIndexQueue:
    def __init__(self) -> None:
        self.seq = 0
        self.pending: deque[PendingRead] = deque()
        self.acks: dict[str, int] = {}
        # reads that arrived before the leader committed an entry of its own term
        self.waiting: list[tuple[bytes, str]] = []

    def add(self, index: int, context: bytes, src: str) -> int:
        self.seq += 1
        self.pending.append(PendingRead(self.seq, index, context, src))
        return self.seq

    def heartbeat_context(self) -> bytes:
        return str(self.seq).encode() if self.pending else b""

    def ack(self, peer: str, context: bytes) -> None:
        try:
            seq = int(context)
        except ValueError:
            return
        if seq > self.acks.get(peer, 0):
            self.acks[peer] = seq

    def release(self, voters: tuple[str, ...], self_id: str) -> list[PendingRead]:
        """The reads a quorum of `voters` has confirmed, oldest first."""
        quorum = len(voters) // 2 + 1
        out: list[PendingRead] = []
        while self.pending:
            seq = self.pending[0].seq
            n = sum(1 for v in voters if v == self_id or self.acks.get(v, 0) >= seq)
            if n < quorum:
                break
            out.append(self.pending.popleft())
        return out

    def clear(self) -> None:
        self.pending.clear()
        self.acks.clear()
        self.waiting.clear()
