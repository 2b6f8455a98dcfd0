"""The simulated network of kvstore.raft.sim: messages in flight and every way to lose them.

Time is counted in steps (several per tick). A message takes 1..max_delay steps, so random
delays reorder messages; it may be dropped (`drop`), duplicated (`dup`), blocked by a
partition (`blocked`: directed links that are down at delivery time), held while its
destination is paused, or rewritten by a scripted test (`filter`).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .types import Message, MsgType


@dataclass(slots=True)
class Flight:
    msg: Message
    payload: tuple[int, int] | None  # snapshot data travelling with a SNAPSHOT message
    lost: bool


class Network:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.flights: list[tuple[int, int, Flight]] = []  # (delivery step, seq, flight)
        self.seq = 0
        self.drop = 0.0
        self.dup = 0.0
        self.max_delay = 1
        self.blocked: set[tuple[str, str]] = set()
        self.paused: dict[str, int] = {}  # node -> step it resumes at (SIGSTOP; messages wait)
        # scripted tests: deliver filter(m) instead of m (None: drop it)
        self.filter: Callable[[Message], Message | None] | None = None

    def send(self, now: int, m: Message, payload: tuple[int, int] | None = None) -> None:
        copies = 2 if self.dup and self.rng.random() < self.dup else 1
        for _ in range(copies):
            lost = bool(self.drop) and self.rng.random() < self.drop
            self._push(now + 1 + int(self.rng.random() * self.max_delay), Flight(m, payload, lost))

    def _push(self, at: int, f: Flight) -> None:
        self.seq += 1
        heapq.heappush(self.flights, (at, self.seq, f))

    def due(self, now: int) -> Iterator[tuple[Flight, Message | None]]:
        """Pop the flights due by `now`: each with the message to deliver, or None when it
        is lost (dropped, or a link down). Messages for a paused node wait."""
        while self.flights and self.flights[0][0] <= now:
            f = heapq.heappop(self.flights)[2]
            m = f.msg
            until = self.paused.get(m.dst, 0)
            if until > now and not f.lost:
                self._push(until, f)  # waits in the socket buffer
                continue
            if f.lost or (m.src, m.dst) in self.blocked:
                yield f, None
                continue
            yield f, self.filter(m) if self.filter is not None else m

    def lose_from(self, node_id: str) -> None:
        """The messages `node_id` sent that are still in flight die (it crashed with them
        in its buffers)."""
        for _, _, f in self.flights:
            if f.msg.src == node_id:
                f.lost = True

    # ---- partitions: which directed links are down

    def partition(self, ids: list[str], *groups: list[str]) -> None:
        """Only nodes in the same group can talk (nodes in no group talk to no one)."""
        side = {n: k for k, g in enumerate(groups) for n in g}
        self.blocked = {(a, b) for a in ids for b in ids if a != b and (side.get(a, -1) != side.get(b, -2))}

    def isolate(self, ids: list[str], node_id: str) -> None:
        self.blocked = {(a, b) for a in ids for b in ids if a != b and node_id in (a, b)}

    def cut(self, pairs: set[tuple[str, str]]) -> None:
        self.blocked = set(pairs)

    def heal(self) -> None:
        self.blocked = set()


def fmt(m: Message) -> str:
    s = f"{m.src}->{m.dst} {m.type.name} t={m.term}"
    if m.type in (MsgType.APPEND, MsgType.VOTE, MsgType.PREVOTE):
        s += f" idx={m.index} lt={m.log_term}"
    if m.entries:
        s += f" ents={m.entries[0].index}..{m.entries[-1].index}"
    if m.type in (MsgType.APPEND, MsgType.HEARTBEAT):
        s += f" commit={m.commit}"
    if m.type in (MsgType.APPEND_RESP, MsgType.READ_INDEX_RESP):
        s += f" idx={m.index}"
    if m.reject:
        s += f" REJECT hint={m.reject_hint} hint_term={m.log_term}"
    if m.context:
        s += f" ctx={m.context!r}"
    if m.snapshot:
        s += f" snap={m.snapshot.index}/{m.snapshot.term}"
    return s
