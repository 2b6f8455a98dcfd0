"""One seed of chaos: a randomized scenario run against a simulated cluster.

`run_seed(seed, nodes)` derives everything from the seed (network faults, timing knobs,
the schedule of partitions, crashes, client requests, membership changes, compaction),
checks every safety property as it goes, then heals the network and checks liveness.
"""

from __future__ import annotations

import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

from .core import Config
from .sim import Cluster
from .simcheck import Violation
from .types import ConfChange, ConfChangeType


@dataclass
class SimResult:
    seed: int
    nodes: int
    ok: bool
    error: str = ""
    ticks: int = 0
    elections: int = 0
    max_committed: int = 0
    reads_served: int = 0
    proposals: int = 0
    seconds: float = 0.0
    flags: str = ""  # extra replay options (the sabotage switches)

    def replay(self) -> str:
        return f".venv/bin/python scripts/raft_sim.py --seed {self.seed} --nodes {self.nodes}{self.flags} -v"


def _partition(cl: Cluster, rng: random.Random) -> None:
    ids = [n.id for n in cl.nodes.values() if not n.retired]
    kind = rng.choice(["heal", "heal", "split", "isolate_leader", "bridge", "ring", "oneway"])
    if kind == "heal":
        cl.heal()
    elif kind == "split":
        rng.shuffle(ids)
        k = rng.randint(1, len(ids) - 1)
        cl.partition(ids[:k], ids[k:])
    elif kind == "isolate_leader":
        lead = cl.leader() or rng.choice(ids)
        cl.isolate(lead)
    elif kind == "bridge" and len(ids) >= 3:
        # two sides that cannot talk, and one node that talks to both
        rng.shuffle(ids)
        bridge, rest = ids[0], ids[1:]
        k = rng.randint(1, len(rest) - 1)
        a, b = set(rest[:k]), set(rest[k:])
        cl.cut({(x, y) for x in ids for y in ids if (x in a and y in b) or (x in b and y in a)})
        cl._log(1, f"bridge {bridge} between {sorted(a)} and {sorted(b)}")
    elif kind == "ring":
        # nodes on a ring, each sees its nearest neighbours: every node sees a majority,
        # but a different one
        rng.shuffle(ids)
        n = len(ids)
        reach = max(1, -(-(n // 2) // 2))
        cut = set()
        for i, x in enumerate(ids):
            for j, y in enumerate(ids):
                d = min((i - j) % n, (j - i) % n)
                if d > reach:
                    cut.add((x, y))
        cl.cut(cut)
    else:  # one-way link failures
        cl.cut({(x, y) for x in ids for y in ids if x != y and rng.random() < 0.3})


def _conf_change(cl: Cluster, rng: random.Random, nodes: int) -> None:
    lead = cl.leader()
    if lead is None:
        return
    conf = cl.core(lead).conf_state
    voters, learners = list(conf.voters), list(conf.learners)
    choice = rng.random()
    if learners and (choice < 0.6 or len(voters) >= nodes + 1):
        if len(voters) < nodes + 1:
            cl.conf_change(lead, ConfChange(ConfChangeType.PROMOTE, rng.choice(learners)))
        else:
            cl.conf_change(lead, ConfChange(ConfChangeType.REMOVE, rng.choice(learners)))
    elif choice < 0.5 and len(voters) < nodes + 1:
        nid = cl.new_node_id()
        if cl.conf_change(lead, ConfChange(ConfChangeType.ADD_LEARNER, nid)) is not None:
            cl.add_node(nid)
    elif len(voters) > max(2, nodes - 1):
        cl.conf_change(lead, ConfChange(ConfChangeType.REMOVE, rng.choice(voters)))


def _retire_removed(cl: Cluster) -> None:
    """The operator shuts down nodes whose removal is committed."""
    lead = cl.leader()
    if lead is None:
        return
    c = cl.core(lead)
    if c.log.last_conf_index > c.commit:
        return
    members = c.conf_state.members()
    for n in list(cl.nodes.values()):
        if not n.retired and n.id not in members and n.id != lead:
            # only nodes that were members once (joiners not yet added have no log)
            if n.snapshot is not None or n.entries:
                cl.retire(n.id)


def chaos(cl: Cluster, rng: random.Random, ticks: int, nodes: int, churn: bool) -> None:
    """`churn`: leaders die young and partitions change fast (elections galore)."""
    gap = (3, 12) if churn else (5, 40)
    next_partition = rng.randint(*gap)
    crash_rate = rng.choice([0.0, 0.005, 0.01, 0.02])
    restart_rate = rng.choice([0.05, 0.1, 0.3])
    propose_rate = rng.choice([0.3, 0.6, 0.9])
    conf_rate = rng.choice([0.02, 0.05, 0.15])
    compact_rate = rng.choice([0.0, 0.02, 0.08])
    read_rate = rng.choice([0.05, 0.2])
    transfer_rate = rng.choice([0.0, 0.01])
    pause_rate = rng.choice([0.0, 0.0, 0.01, 0.03])
    leader_crash_rate = rng.choice([0.05, 0.1]) if churn else rng.choice([0.0, 0.02])
    reads = 0
    for t in range(ticks):
        if t >= next_partition:
            _partition(cl, rng)
            next_partition = t + rng.randint(*gap)
        live = [n.id for n in cl.nodes.values() if n.up]
        lead = cl.leader()
        if live and rng.random() < propose_rate:
            target = lead if lead is not None and rng.random() < 0.8 else rng.choice(live)
            for _ in range(rng.randint(1, 4)):
                cl.propose(target, b"v%d" % cl.proposals)
        if live and rng.random() < read_rate:
            reads += 1
            cl.read(rng.choice(live), b"r%d" % reads)
        if live and rng.random() < pause_rate:
            cl.pause(rng.choice(live), rng.randint(1, 25))
        if live and rng.random() < crash_rate:
            cl.crash(rng.choice(live))
        if lead is not None and rng.random() < leader_crash_rate:
            if rng.random() < 0.7:
                # the leader takes a write, persists it, and dies before sending it anywhere
                cl.propose(lead, b"v%d" % cl.proposals)
                cl.process_readies()
                cl.crash(lead, drop_sent=True)
            else:
                cl.crash(lead)
            lead = None
        for n in cl.nodes.values():
            if not n.up and not n.retired and rng.random() < restart_rate:
                cl.start(n.id)
        if rng.random() < conf_rate:
            _conf_change(cl, rng, nodes)
            _retire_removed(cl)
        if live and rng.random() < compact_rate:
            cl.compact(rng.choice(live))
        lead = cl.leader()
        if lead is not None and rng.random() < transfer_rate:
            others = [v for v in cl.core(lead).conf_state.voters if v != lead]
            if others:
                cl.transfer(lead, rng.choice(others))
        cl.tick()


def check_liveness(cl: Cluster, max_ticks: int) -> int:
    """Heal everything, then the cluster must elect a leader, commit a new entry and have
    every voter apply it. Returns the ticks it took."""
    cl.heal()
    cl.net.drop = cl.net.dup = 0.0
    cl.net.max_delay = 2
    cl.crash_mid_ready = cl.crash_new_leader = 0.0
    for n in cl.nodes.values():
        cl.start(n.id)
    probe: tuple[str, int, int] | None = None
    for t in range(max_ticks):
        cl.tick()
        lead = cl.leader()
        if lead is None:
            continue
        c = cl.core(lead)
        if probe is None or probe[:2] != (lead, c.term):
            index = cl.propose(lead, b"probe")
            probe = None if index is None else (lead, c.term, index)
            continue
        index = probe[2]
        voters = [cl.nodes[v] for v in c.conf_state.voters if v in cl.nodes]
        if c.commit >= index and all(v.applied >= index for v in voters):
            return t
    states = {n.id: (n.core.status() if n.core else "down") for n in cl.nodes.values() if not n.retired}
    raise Violation(f"liveness: no leader committed a new entry within {max_ticks} ticks after healing: {states}")


def run_seed(
    seed: int,
    nodes: int = 3,
    *,
    ticks: int = 100,
    cfg: Config | None = None,
    verbose: int = 0,
    out: TextIO | None = None,
    tweak: Callable[[Cluster], None] | None = None,
) -> SimResult:
    """Run one seed: `ticks` of chaos, then heal and check liveness. `cfg` supplies the
    settings the seed does not choose (e.g. a test-only sabotage flag); `tweak` may adjust
    the cluster before it starts (e.g. switch a check off)."""
    started = time.perf_counter()
    rng = random.Random(f"raft-sim:{nodes}:{seed}")
    churn = rng.random() < 0.3
    base = cfg or Config(id="")
    base = replace(
        base,
        election_tick=rng.choice([4, 6]) if churn else 10,
        heartbeat_tick=1 if churn else rng.choice([1, 2, 3]),
        pre_vote=rng.random() < 0.9,
        check_quorum=rng.random() < 0.9,
        max_inflight=rng.choice([1, 2, 4, 64]),
        max_entries_per_msg=1 if churn else rng.choice([1, 2, 3, 8, 512]),
        max_bytes_per_msg=rng.choice([1, 1 << 20]),
        max_uncommitted=rng.choice([20, 10000]),
    )
    cl = Cluster(nodes, seed=rng.getrandbits(64), cfg=base, verbose=verbose, out=out or sys.stdout)
    cl.net.drop = rng.choice([0.0, 0.01, 0.05, 0.15])
    cl.net.dup = rng.choice([0.0, 0.0, 0.02, 0.1])
    cl.net.max_delay = rng.choice([1, 2, 4, 8, 16])
    cl.crash_mid_ready = rng.choice([0.0, 0.0, 0.002, 0.01])
    cl.crash_new_leader = 0.5 if churn else rng.choice([0.0, 0.1])
    cl.slow_disk = rng.choice([0.0, 0.0, 0.3, 0.8])
    cl.skew = rng.choice([0.0, 0.0, 0.05, 0.2])
    # a disk slower than the network at times (but well inside an election timeout)
    cl.slow_disk_steps = 3 if churn else rng.choice([3, 3, 6, 12])
    cl._log(
        1,
        f"seed {seed}: {nodes} nodes, {'churn, ' if churn else ''}drop={cl.net.drop} dup={cl.net.dup} max_delay={cl.net.max_delay} "
        f"slow_disk={cl.slow_disk}x{cl.slow_disk_steps} skew={cl.skew} crash_mid_ready={cl.crash_mid_ready} "
        f"cfg={base}",
    )
    if tweak is not None:
        tweak(cl)
    flags = (" --unsafe-commit" if base._unsafe_commit_any_term else "") + (
        " --unsafe-vote" if base._unsafe_vote_twice else ""
    ) + (
        " --unsafe-count" if base._unsafe_count_unpersisted else ""
    )
    res = SimResult(seed, nodes, ok=True, flags=flags)
    try:
        chaos(cl, rng, ticks, nodes, churn)
        res.ticks = ticks + check_liveness(cl, 400)
    except Violation as e:
        res.ok, res.error = False, str(e)
    except Exception as e:  # a crash in the core or the simulator fails the seed, replayably
        res.ok, res.error = False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    res.elections = cl.check.elections
    res.max_committed = cl.check.max_committed
    res.reads_served = cl.check.reads_served
    res.proposals = cl.proposals
    res.seconds = time.perf_counter() - started
    return res
