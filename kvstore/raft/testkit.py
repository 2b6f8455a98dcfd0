"""Helpers to drive Raft cores by hand in tests (tests/test_raft_*.py).

The chaos simulation of whole clusters is kvstore.raft.sim / kvstore.raft.simrun; this
module holds the small lock-step tools: build a core, drain its Readies, deliver messages
instantly, tick until something happens.
"""

from __future__ import annotations

import random

from kvstore.raft import Config, ConfState, Message, RaftCore, Role
from kvstore.raft.sim import Cluster

VOTERS3 = ConfState(("n1", "n2", "n3"))


def core(node_id: str = "n1", conf: ConfState = VOTERS3, **kw) -> RaftCore:
    cfg_kw = {k: kw.pop(k) for k in list(kw) if k in Config.__dataclass_fields__}
    return RaftCore(Config(id=node_id, **cfg_kw), conf=conf, rng=random.Random(node_id), **kw)


def drain(c: RaftCore) -> list[Message]:
    """Take one Ready, pretend the shell did its job, return the messages."""
    msgs: list[Message] = []
    while c.has_ready():
        rd = c.ready()
        msgs += rd.messages
        c.advance(rd)
    return msgs


def exchange(cores: dict[str, RaftCore], msgs: list[Message], drop=lambda m: False) -> list[Message]:
    """Deliver messages instantly until the network is quiet; returns everything delivered."""
    seen = []
    queue = list(msgs)
    for c in cores.values():
        queue += drain(c)
    while queue:
        m = queue.pop(0)
        if drop(m) or m.dst not in cores:
            continue
        seen.append(m)
        cores[m.dst].step(m)
        queue += drain(cores[m.dst])
    return seen


def tick_until(cores: dict[str, RaftCore], pred, limit: int = 500) -> list[Message]:
    seen: list[Message] = []
    for _ in range(limit):
        if pred():
            return seen
        for c in cores.values():
            c.tick()
        seen += exchange(cores, [])
    assert pred()
    return seen


def cluster3(**cfg) -> dict[str, RaftCore]:
    cores = {n: core(n, **cfg) for n in VOTERS3.voters}
    for c in cores.values():
        drain(c)
    return cores


def fresh_leader() -> tuple[dict[str, RaftCore], RaftCore, str]:
    """n1 just won an election with n2's vote; its no-op is not acknowledged yet."""
    cores = cluster3(pre_vote=False)
    lead = cores["n1"]
    while lead.state != Role.CANDIDATE:
        lead.tick()
    for m in drain(lead):
        if m.dst == "n2":
            cores["n2"].step(m)
    for m in drain(cores["n2"]):
        lead.step(m)
    assert lead.is_leader and lead.commit < lead.last_index
    return cores, lead, "n2"


def leader_of(cores: dict[str, RaftCore]) -> str:
    leaders = [n for n, c in cores.items() if c.is_leader]
    assert len(leaders) == 1, leaders
    return leaders[0]


def cl_leader(cl: Cluster, max_ticks: int = 200) -> str:
    lead = cl.elect(max_ticks)
    cl.run(3)  # let everyone catch up
    return lead
