"""The drill scenarios: which faults, in what order, for how long.

A scenario is a function of a `DrillContext`: it injects faults while the workload
runs, until `ctx.fault_until`, and leaves the cluster in any state (the runner heals
the network, thaws and restarts nodes afterwards). Each fault is recorded with
`ctx.fault(name, detail)`. Choices (which node, which split, how long) come from
`ctx.rng`, seeded by `--seed`, so a drill replays the same plan.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kvstore.drills.faults import DrillCluster, FaultLog, Network
from kvstore.drills.history import History


class ScenarioSkipped(Exception):
    """The scenario cannot run here (a feature it needs is missing); the message says why."""


@dataclass
class DrillContext:
    cluster: DrillCluster
    net: Network
    history: History
    faults: FaultLog
    rng: random.Random
    duration: float
    fault_until: float  # monotonic: start no new fault after this
    stop: threading.Event = field(default_factory=threading.Event)
    say: Callable[[str], None] = lambda msg: None

    # -- time --

    @property
    def hold(self) -> float:
        """How long a fault lasts: long enough for an election (200-400 ms) and then some."""
        return min(4.0, max(1.0, 0.3 * self.duration))

    @property
    def settle(self) -> float:
        """Time between faults for the cluster to find its feet."""
        return min(2.0, max(0.4, 0.12 * self.duration))

    def time_left(self) -> float:
        return self.fault_until - time.monotonic()

    def sleep(self, s: float) -> None:
        """Sleep, but wake at once when the drill is stopping."""
        self.stop.wait(max(0.0, s))

    def more(self, first: bool, need: float) -> bool:
        """Start another round? Always the first one; then while `need` seconds remain."""
        if self.stop.is_set():
            return False
        return first or self.time_left() >= need

    @contextlib.contextmanager
    def fault(self, name: str, detail: str = "") -> Iterator[None]:
        label = f"{name} {detail}".strip()
        self.say(label)
        t0 = time.monotonic()
        with self.faults.window(name, detail):
            yield
        self.say(f"{name} over after {time.monotonic() - t0:.1f}s")

    def leader(self, timeout: float = 10.0) -> str | None:
        ld = self.cluster.leader(timeout, self.stop)
        if ld is None and not self.stop.is_set():
            self.say(f"no leader within {timeout:.0f}s")
        return ld


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    run: Callable[[DrillContext], None]
    network: bool = False  # injects network faults (the --net mode matters)
    spares: int = 0  # extra nodes in the config, not voters at the start
    available: Callable[[], str | None] = lambda: None  # why it cannot run, or None


# -- single faults, each one round ----------------------------------------------------


def _kill_leader(ctx: DrillContext) -> None:
    leader = ctx.leader()
    if leader is None:
        return
    with ctx.fault("kill-leader", leader):
        ctx.cluster.kill(leader)
        ctx.sleep(ctx.hold)
        ctx.cluster.start(leader)


def _kill_follower(ctx: DrillContext) -> None:
    leader = ctx.leader()
    victim = ctx.rng.choice(ctx.cluster.followers(leader))
    with ctx.fault("kill-follower", victim):
        ctx.cluster.kill(victim)
        ctx.sleep(ctx.hold)
        ctx.cluster.start(victim)


def _kill_majority(ctx: DrillContext) -> None:
    leader = ctx.leader()
    members = list(ctx.cluster.members)
    majority = len(members) // 2 + 1
    others = [n for n in members if n != leader]
    ctx.rng.shuffle(others)
    victims = ([leader] if leader else []) + others
    victims = sorted(victims[:majority])
    with ctx.fault("kill-majority", ",".join(victims)):
        for v in victims:
            ctx.cluster.kill(v)
        ctx.sleep(ctx.hold)
        order = list(victims)
        ctx.rng.shuffle(order)
        for v in order:  # restart one by one, a little apart: quorum comes back mid-way
            ctx.cluster.start(v)
            ctx.sleep(ctx.rng.uniform(0.05, 0.3))


def _crash_restart(ctx: DrillContext) -> None:
    victim = ctx.rng.choice(ctx.cluster.members)
    down_for = ctx.rng.uniform(0.05, 0.6)
    with ctx.fault("crash-restart", f"{victim} down {down_for * 1000:.0f} ms"):
        ctx.cluster.kill(victim)
        ctx.sleep(down_for)
        ctx.cluster.start(victim)


def _pause_leader(ctx: DrillContext) -> None:
    leader = ctx.leader()
    if leader is None:
        return
    with ctx.fault("pause-leader", leader):
        ctx.cluster.pause(leader)
        ctx.sleep(ctx.hold)
        ctx.cluster.resume(leader)


def _partition_leader(ctx: DrillContext) -> None:
    leader = ctx.leader()
    if leader is None:
        return
    with ctx.fault("partition-leader", f"{leader} | rest"):
        ctx.net.isolate(leader)
        ctx.sleep(ctx.hold)
        ctx.net.heal_all()


def _partition_halves(ctx: DrillContext) -> None:
    nodes = list(ctx.cluster.members)
    ctx.rng.shuffle(nodes)
    minority, majority = sorted(nodes[: len(nodes) // 2]), sorted(nodes[len(nodes) // 2:])
    with ctx.fault("partition-halves", f"{','.join(minority)} | {','.join(majority)}"):
        ctx.net.partition([minority, majority])
        ctx.sleep(ctx.hold)
        ctx.net.heal_all()


def _bridge(ctx: DrillContext) -> None:
    nodes = list(ctx.cluster.members)
    ctx.rng.shuffle(nodes)
    bridge, rest = nodes[0], nodes[1:]
    a, b = sorted(rest[: len(rest) // 2]), sorted(rest[len(rest) // 2:])
    with ctx.fault("bridge", f"{','.join(a)} | {','.join(b)} via {bridge}"):
        ctx.net.bridge(a, b, bridge)
        ctx.sleep(ctx.hold)
        ctx.net.heal_all()


def _ring(ctx: DrillContext) -> None:
    order = list(ctx.cluster.members)
    ctx.rng.shuffle(order)
    with ctx.fault("majorities-ring", "->".join(order)):
        ctx.net.ring(order)
        ctx.sleep(ctx.hold)
        ctx.net.heal_all()


def _flaky(ctx: DrillContext) -> None:
    if not getattr(ctx.net, "can_shape", True):
        raise ScenarioSkipped(f"flaky-network: skipped: {ctx.net.describe()}")
    delay = ctx.rng.uniform(5, 40)
    jitter = ctx.rng.uniform(5, 40)
    loss = ctx.rng.uniform(0.01, 0.08)
    with ctx.fault("flaky-network", f"delay {delay:.0f}±{jitter:.0f} ms, loss {loss:.0%}"):
        ctx.net.set_delay(delay, jitter)
        ctx.net.set_loss(loss)
        ctx.sleep(ctx.hold)
        ctx.net.heal_all()


# -- scenarios: rounds of one fault, or a mix ----------------------------------------


def _repeat(one: Callable[[DrillContext], None], gap: Callable[[DrillContext], float] | None = None
            ) -> Callable[[DrillContext], None]:
    def run(ctx: DrillContext) -> None:
        first = True
        while ctx.more(first, ctx.hold):
            first = False
            one(ctx)
            ctx.sleep(gap(ctx) if gap else ctx.settle)

    return run


def _crash_restart_loop(ctx: DrillContext) -> None:
    first = True
    while ctx.more(first, 0.7):
        first = False
        _crash_restart(ctx)
        ctx.sleep(ctx.rng.uniform(0.2, 0.8))


MIXED_FAULTS: list[tuple[str, Callable[[DrillContext], None]]] = [
    ("kill-leader", _kill_leader),
    ("kill-follower", _kill_follower),
    ("crash-restart", _crash_restart),
    ("pause-leader", _pause_leader),
    ("partition-leader", _partition_leader),
    ("partition-halves", _partition_halves),
    ("bridge", _bridge),
    ("majorities-ring", _ring),
    ("flaky-network", _flaky),
]


def _mixed(ctx: DrillContext) -> None:
    first = True
    while ctx.more(first, ctx.hold):
        first = False
        shaping = getattr(ctx.net, "can_shape", True)
        _name, fn = ctx.rng.choice([f for f in MIXED_FAULTS if shaping or f[1] is not _flaky])
        fn(ctx)
        ctx.sleep(ctx.rng.uniform(0.5, 1.5) * ctx.settle)


# -- membership ---------------------------------------------------------------------


def _membership_unavailable() -> str | None:
    from kvstore.cluster import manage

    missing = [f for f in ("add_node", "remove_node") if not hasattr(manage, f)]
    if missing:
        return (f"kvstore.cluster.manage has no {' / '.join(missing)} (`kvstore cluster add-node / remove-node`) "
                "yet; membership-churn needs them to add and remove nodes")
    return None


def _change_member(ctx: DrillContext, op: str, node: str) -> None:
    """What `kvstore cluster add-node|remove-node NODE` does, in this process."""
    from kvstore.cluster import manage
    from kvstore.errors import KVError

    try:
        if op == "add":
            manage.add_node(ctx.cluster.data_dir, node)
        else:
            manage.remove_node(ctx.cluster.data_dir, node)
    except KVError as e:
        if "not implemented" in str(e):
            raise ScenarioSkipped(f"membership-churn: skipped: {op}-node: {e}") from None
        raise


def _membership_churn(ctx: DrillContext) -> None:
    """Add a spare node; remove another member (`remove-node` retires its data for good).

    Spares are defined in the config from the start (not voters), so the network under
    test already has their links; a removed member is never added back (it would come
    back under a new address, outside the drill's network). So a drill makes as many
    rounds as it has spares.
    """
    cl = ctx.cluster
    first = True
    while cl.spares and ctx.more(first, 2 * ctx.settle + 1.0):
        first = False
        new = cl.spares[0]
        with ctx.fault("add-node", new):
            cl.start(new)  # with the drill's network environment; add-node then finds it running
            _change_member(ctx, "add", new)
            cl.spares.remove(new)
            cl.members.append(new)
        ctx.sleep(ctx.settle)
        if ctx.stop.is_set() or ctx.time_left() < 1.0:
            return
        leader = ctx.leader()
        old = ctx.rng.choice([n for n in cl.members if n != new])
        with ctx.fault("remove-node", old + (" (the leader)" if old == leader else "")):
            _change_member(ctx, "remove", old)
            cl.members.remove(old)
            cl.retired.append(old)
            cl.stop(old)  # remove-node stopped it already; make sure
        ctx.sleep(ctx.settle)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("kill-leader", "SIGKILL the leader, restart it after a while; again while time remains",
                 _repeat(_kill_leader)),
        Scenario("kill-follower", "SIGKILL a random follower, restart it after a while; again",
                 _repeat(_kill_follower)),
        Scenario("kill-majority", "SIGKILL a majority (the leader among them): writes stop; then restart them",
                 _repeat(_kill_majority)),
        Scenario("crash-restart", "SIGKILL a random node mid-write and restart it at once, again and again",
                 _crash_restart_loop),
        Scenario("pause-leader", "SIGSTOP the leader past an election, then SIGCONT it: a stale leader wakes up",
                 _repeat(_pause_leader)),
        Scenario("partition-leader", "cut the leader off from every other node, then heal",
                 _repeat(_partition_leader), network=True),
        Scenario("partition-halves", "split the nodes into a minority and a majority, then heal",
                 _repeat(_partition_halves), network=True),
        Scenario("bridge", "two sides that cannot talk to each other, both talking to one bridge node",
                 _repeat(_bridge), network=True),
        Scenario("majorities-ring", "each node hears a majority, and no two nodes hear the same one",
                 _repeat(_ring), network=True),
        Scenario("flaky-network", "every link slow (delay with jitter) and lossy (stalls and resets)",
                 _repeat(_flaky), network=True),
        Scenario("membership-churn", "add a node, remove another (the leader, sometimes); again",
                 _membership_churn, spares=3, available=_membership_unavailable),
        Scenario("mixed", "random faults from all of the above, chosen by the seed",
                 _mixed, network=True),
    ]
}


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; `kvstore drill list` shows them") from None
