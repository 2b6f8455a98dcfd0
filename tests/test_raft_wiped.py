"""A follower whose data was wiped (it lost entries it had acknowledged) is brought back."""

from __future__ import annotations

import random

from kvstore.raft import Config, ConfState, Message, RaftCore

VOTERS = ("a", "b", "c")


def make(name: str, seed: int) -> RaftCore:
    return RaftCore(Config(id=name, election_tick=10, heartbeat_tick=1), conf=ConfState(voters=VOTERS),
                    rng=random.Random(seed))


def run(nodes: dict[str, RaftCore], ticks: int, down: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for _ in range(ticks):
        inbox: list[Message] = []
        for name, n in nodes.items():
            if name in down:
                continue
            n.tick()
            while n.has_ready():
                rd = n.ready()
                inbox += rd.messages
                n.advance(rd)
        while inbox:
            m = inbox.pop(0)
            if m.dst in down or m.src in down:
                continue
            dst = nodes[m.dst]
            dst.step(m)
            while dst.has_ready():
                rd = dst.ready()
                inbox += rd.messages
                dst.advance(rd)


def test_wiped_follower_catches_up() -> None:
    nodes = {n: make(n, i) for i, n in enumerate(VOTERS)}
    run(nodes, 60)
    leader = next(n for n in nodes.values() if n.is_leader)
    for i in range(50):
        leader.propose(f"x{i}".encode())
    run(nodes, 10)
    f = next(n for n in VOTERS if n != leader.id)
    assert nodes[f].commit == leader.commit
    for i in range(50):  # more while f is down
        leader.propose(f"y{i}".encode())
    run(nodes, 5, down={f})
    nodes[f] = make(f, 99)  # its disk was wiped: back with nothing but the bootstrap log
    run(nodes, 60)
    assert nodes[f].commit == leader.commit and nodes[f].last_index == leader.last_index
