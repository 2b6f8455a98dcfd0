"""Deterministic simulation of whole Raft clusters (TigerBeetle/FoundationDB style).

One seed drives everything: the network (drops, delays, reordering, duplicates,
partitions of every shape), crashes and restarts from durable state, clients (proposals,
linearizable reads), membership changes, compaction and snapshot catch-up. The checks of
kvstore.raft.simcheck run after every event; at the end the network heals and the cluster
must elect a leader and commit again (liveness). Replay any seed with
`scripts/raft_sim.py --seed N --nodes 3|5 -v`.

The simulated shell follows the Ready contract to the letter: it persists a Ready's
snapshot, entries and hard state, then sends its messages, then applies, then calls
advance(). A crash loses everything but what was persisted (the state machine is durable
with its applied index, like LMDB). A crash may also hit between persisting and sending.
"""

from __future__ import annotations

import random
import sys
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from .core import Config, NotLeader, ProposalDropped, RaftCore
from .simcheck import Checker, Violation
from .simnet import Network, fmt
from .simnode import SimNode
from .types import (
    JOIN,
    ConfChange,
    ConfState,
    EntryType,
    Message,
    MsgType,
    Ready,
)

STEPS_PER_TICK = 4  # network time resolution: a message takes 1..max_delay steps


class Cluster:
    """A simulated cluster. Tests script it (partition, crash, propose...) or let
    `run_seed` drive it with chaos. Every invariant is checked as it runs."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        cfg: Config | None = None,
        verbose: int = 0,
        out: TextIO | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.out = out or sys.stdout
        self.base_cfg = cfg or Config(id="")
        self.now = 0
        self.net = Network(self.rng)
        self.dirty: dict[str, SimNode] = {}  # nodes that may have a Ready
        self.slow: dict[str, SimNode] = {}  # nodes with Readies still being persisted
        self.check = Checker()
        self.nodes: dict[str, SimNode] = {}
        self.next_id = n + 1
        self.check_permanence = True  # check each leader commit can no longer be overwritten
        self.check_hard_state = True  # check a node's term never goes back nor its vote changes
        self.slow_disk = 0.0  # chance that a Ready takes 1..slow_disk_steps steps to persist (the core keeps going)
        self.slow_disk_steps = 3
        self.skew = 0.0  # chance that a node misses a tick (clock drift)
        self.early_send = True  # send a leader's appends before persisting them (Ready.early_messages)
        self.crash_mid_ready = 0.0  # chance that a node crashes after persisting a Ready, before sending
        self.crash_new_leader = 0.0  # ... the first Ready of a new leader (its no-op never leaves)
        self.proposals = 0
        conf = ConfState(tuple(f"n{i}" for i in range(1, n + 1)))
        for v in conf.voters:
            self.add_node(v, conf)

    # ---------------------------------------------------------------- membership of the sim

    def add_node(self, node_id: str, boot_conf: ConfState = JOIN) -> SimNode:
        node = SimNode(node_id, boot_conf, replace(self.base_cfg, id=node_id))
        self.nodes[node_id] = node
        self.start(node_id)
        return node

    def new_node_id(self) -> str:
        nid = f"n{self.next_id}"
        self.next_id += 1
        return nid

    def core(self, node_id: str) -> RaftCore:
        c = self.nodes[node_id].core
        assert c is not None, f"{node_id} is down"
        return c

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.core is not None]

    def leader(self) -> str | None:
        """The up node that leads the highest term, if any."""
        best = None
        for n in self.up_nodes():
            assert n.core is not None
            if n.core.is_leader and (best is None or n.core.term > self.core(best).term):
                best = n.id
        return best

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.core is not None or node.retired:
            return
        node.core = RaftCore(
            node.cfg,
            conf=node.boot_conf,
            hard_state=None if node.hard_state is None else replace(node.hard_state),
            entries=list(node.entries),
            snapshot=node.snapshot,
            applied=node.applied,
            rng=random.Random(self.rng.getrandbits(32)),
        )
        node.commit_seen = node.hard_state.commit if node.hard_state else 0
        node.lead_term = 0
        self._after_input(node)
        self._log(1, f"{node_id} starts: term={node.core.term} last={node.core.last_index} applied={node.applied}")

    def crash(self, node_id: str, *, drop_sent: bool = False) -> None:
        """Stop a node; with drop_sent, the messages it sent that are still in flight die too."""
        node = self.nodes[node_id]
        if drop_sent:
            self.net.lose_from(node_id)
        if node.core is not None:
            self._log(1, f"{node_id} crashes")
        node.core = None
        node.incoming.clear()
        node.pending.clear()  # what was not yet fsynced is lost
        self.net.paused.pop(node_id, None)

    def retire(self, node_id: str) -> None:
        self.crash(node_id)
        self.nodes[node_id].retired = True

    # ---------------------------------------------------------------- network

    def partition(self, *groups: list[str]) -> None:
        """Only nodes in the same group can talk (nodes in no group talk to no one)."""
        self.net.partition(list(self.nodes), *groups)
        self._log(1, f"partition {groups}")

    def isolate(self, node_id: str) -> None:
        self.net.isolate(list(self.nodes), node_id)
        self._log(1, f"isolate {node_id}")

    def cut(self, pairs: set[tuple[str, str]]) -> None:
        """Block exactly these directed links."""
        self.net.cut(pairs)
        self._log(1, f"cut {sorted(pairs)}")

    def heal(self) -> None:
        self.net.heal()
        self._log(1, "heal")

    def _send(self, src: SimNode, m: Message) -> None:
        payload = None
        if m.type == MsgType.SNAPSHOT:
            assert m.snapshot is not None
            if m.snapshot.index not in src.snap_states:
                raise Violation(f"{src.id} sent snapshot {m.snapshot.index}, which it never persisted")
            payload = (m.snapshot.index, src.snap_states[m.snapshot.index])
        self.net.send(self.now, m, payload)

    def _deliver_due(self) -> None:
        for f, m in self.net.due(self.now):
            dst = self.nodes.get(f.msg.dst)
            ok = m is not None and dst is not None and dst.core is not None
            if self.verbose >= 2:
                self._log(2, f"{'deliver' if ok else 'lose'} {fmt(m or f.msg)}")
            if ok:
                assert m is not None and dst is not None and dst.core is not None
                if f.payload is not None:
                    dst.incoming[f.payload[0], m.snapshot.term if m.snapshot else 0] = f.payload
                dst.core.step(m)
                self._after_input(dst)
            sender = self.nodes.get(f.msg.src)
            if sender is None or sender.core is None:
                continue
            if f.msg.type == MsgType.SNAPSHOT:
                sender.core.report_snapshot(f.msg.dst, ok)  # the shell's snapshot transfer ended
                self._after_input(sender)
            elif not ok and not f.lost and f.msg.type == MsgType.APPEND:
                sender.core.report_unreachable(f.msg.dst)  # the transport noticed the peer is gone
                self._after_input(sender)

    # ---------------------------------------------------------------- time

    def pause(self, node_id: str, ticks: int) -> None:
        """Freeze a node (no ticks, no input, no disk) for `ticks`; messages to it wait."""
        if self.nodes[node_id].up:
            self.net.paused[node_id] = self.now + ticks * STEPS_PER_TICK
            self._log(1, f"{node_id} paused for {ticks} ticks")

    def tick(self) -> None:
        """One tick of every up node, then the network runs for a tick."""
        for nid in [n for n, until in self.net.paused.items() if until <= self.now]:
            del self.net.paused[nid]
            self._after_input(self.nodes[nid])
        for node in self.up_nodes():
            assert node.core is not None
            if node.id in self.net.paused or (self.skew and self.rng.random() < self.skew):
                continue
            node.core.tick()
            self._after_input(node)
        self.process_readies()
        for _ in range(STEPS_PER_TICK):
            self.now += 1
            self._deliver_due()
            self.process_readies()

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()

    def run_until(self, pred: Callable[[], bool], max_ticks: int = 200) -> bool:
        for _ in range(max_ticks):
            if pred():
                return True
            self.tick()
        return pred()

    def elect(self, max_ticks: int = 200) -> str:
        """Run until some node leads; returns it."""
        assert self.run_until(lambda: self.leader() is not None, max_ticks), "no leader elected"
        lead = self.leader()
        assert lead is not None
        return lead

    # ---------------------------------------------------------------- clients

    def propose(self, node_id: str, data: bytes) -> int | None:
        """Propose on `node_id`; None when it is not the leader or refuses."""
        node = self.nodes[node_id]
        if node.core is None:
            return None
        try:
            index = node.core.propose(data)
        except (NotLeader, ProposalDropped):
            return None
        self.proposals += 1
        self._log(1, f"{node_id} proposes {data!r} at {index}")
        self._after_input(node)
        return index

    def read(self, node_id: str, ctx: bytes) -> bool:
        node = self.nodes[node_id]
        if node.core is None:
            return False
        self.check.on_read_request(ctx)
        try:
            node.core.read_index(ctx)
        except NotLeader:
            return False
        self._log(1, f"{node_id} read_index {ctx!r} (committed so far: {self.check.max_committed})")
        self._after_input(node)
        return True

    def transfer(self, node_id: str, target: str) -> bool:
        node = self.nodes[node_id]
        if node.core is None:
            return False
        try:
            node.core.transfer_leader(target)
        except (NotLeader, ValueError):
            return False
        self._log(1, f"{node_id} transfers leadership to {target}")
        self._after_input(node)
        return True

    def conf_change(self, node_id: str, cc: ConfChange) -> int | None:
        node = self.nodes[node_id]
        if node.core is None:
            return None
        try:
            index = node.core.propose_conf_change(cc)
        except (NotLeader, ProposalDropped, ValueError):
            return None
        self._log(1, f"{node_id} proposes {cc.type.name} {cc.node} at {index}")
        self._after_input(node)
        return index

    def compact(self, node_id: str) -> bool:
        node = self.nodes[node_id]
        c = node.core
        if c is None or node.applied <= c.snapshot_meta.index:
            return False
        term = c.log.term(node.applied)
        assert term is not None
        meta = c.compact(node.applied, term)
        node.snapshot = meta
        node.snap_states[meta.index] = node.state
        del node.entries[: meta.index - (node.entries[0].index - 1 if node.entries else meta.index)]
        self._log(1, f"{node_id} compacts up to {meta.index}")
        return True

    # ---------------------------------------------------------------- the shell

    def _after_input(self, node: SimNode) -> None:
        """After anything that may change a node: a Ready to take, maybe a new leader."""
        self.dirty[node.id] = node
        c = node.core
        if c is not None and c.is_leader and node.lead_term != c.term:
            node.lead_term = c.term
            self._log(1, f"{node.id} becomes leader of term {c.term} (last {c.last_index})")
            self.check.on_leader(node.id, c)
            node.lead_last = (c.last_index, c.log.last_term())

    def process_readies(self) -> None:
        """Take the Readies of the nodes that had input, and finish those that are due."""
        dirty, self.dirty = self.dirty, {}
        for node in dirty.values():
            c = node.core
            if c is None or self.net.paused.get(node.id, 0) > self.now:
                if c is not None:
                    self.dirty[node.id] = node
                continue
            while c.has_ready():
                rd = c.ready()
                prev = c.log.term(rd.entries[0].index - 1) if rd.entries else None
                if self.early_send and self._term_vote_durable(node, rd):
                    # like kvstore/node.py: a leader's appends leave before its own write;
                    # a crash before the write loses the entries here, not in flight
                    early, rd.messages = rd.early_messages()
                    for m in early:
                        self._send(node, m)
                if c.is_leader and node.lead_term == c.term:
                    self.check.on_leader_log(node.id, c, *node.lead_last)
                    node.lead_last = (c.last_index, c.log.last_term())
                    if rd.hard_state is not None and self.check_permanence:
                        self._check_commit_is_permanent(node, c, rd.hard_state.commit)
                due = self.now
                if node.pending or (self.slow_disk and self.rng.random() < self.slow_disk):
                    # like kvstore/node.py: the core keeps taking input while this one is
                    # written; Readies still finish in order
                    due = max(self.now + 1 + int(self.rng.random() * self.slow_disk_steps), node.pending[-1][0] if node.pending else 0)
                node.pending.append((due, rd, prev))
                if due > self.now:
                    self.slow[node.id] = node
                    break
                self._finish_readies(node)
                if node.core is not c:
                    break  # crashed while handling it
        if self.slow:
            slow, self.slow = self.slow, {}
            for node in slow.values():
                if node.pending and node.pending[0][0] <= self.now and self.net.paused.get(node.id, 0) <= self.now:
                    self._finish_readies(node)
                if node.pending:
                    self.slow[node.id] = node

    @staticmethod
    def _term_vote_durable(node: SimNode, rd: Ready) -> bool:
        """As kvstore/node.py: early sends only when neither this Ready nor one still being
        written changes the term or vote on disk."""
        hs = node.hard_state
        tv = (hs.term, hs.vote) if hs is not None else (0, None)
        return all(r.hard_state is None or (r.hard_state.term, r.hard_state.vote) == tv
                   for r in [*(p[1] for p in node.pending), rd])

    def _finish_readies(self, node: SimNode) -> None:
        while node.pending and node.pending[0][0] <= self.now and node.core is not None:
            _, rd, prev = node.pending.popleft()
            self._handle_ready(node, node.core, rd, prev)
        if node.core is not None:
            self._after_input(node)  # more may have come meanwhile

    def _handle_ready(self, node: SimNode, c: RaftCore, rd: Ready, prev_term: int | None) -> None:
        chk = self.check
        # 1. persist: snapshot, entries, hard state
        if rd.snapshot is not None:
            s = rd.snapshot
            data = node.incoming.pop((s.index, s.term), None)
            if data is None:
                raise Violation(f"{node.id}: Ready.snapshot {s.index} was never received")
            chk.on_install(node.id, s.index, data[1])
            node.snapshot, node.entries = s, []
            node.snap_states[s.index] = data[1]
            node.applied, node.state = s.index, data[1]
            self._log(1, f"{node.id} installs snapshot {s.index}/{s.term}")
        if rd.entries:
            chk.on_persist(node.id, rd.entries, prev_term)
            base = (node.snapshot.index if node.snapshot else 0) + 1
            first = rd.entries[0].index
            if first - base > len(node.entries) or first < base:
                raise Violation(f"{node.id}: Ready entries at {first} do not follow the log ({base}+{len(node.entries)})")
            del node.entries[first - base :]
            node.entries.extend(rd.entries)
        if rd.hard_state is not None:
            hs = rd.hard_state
            if self.check_hard_state and node.hard_state is not None:
                old = node.hard_state
                if hs.term < old.term or hs.commit < old.commit or (hs.term == old.term and old.vote not in (None, hs.vote)):
                    raise Violation(f"{node.id}: hard state went back from {node.hard_state} to {hs}")
            node.hard_state = hs
            if hs.commit > node.commit_seen:
                chk.on_commit(node.id, c, node.commit_seen, hs.commit, hs.term)
                node.commit_seen = hs.commit
        p = self.crash_mid_ready
        if rd.soft_state is not None and rd.soft_state.role.value == "leader":
            p = max(p, self.crash_new_leader)
        if p and self.rng.random() < p:
            self.crash(node.id)  # persisted, but nothing sent or applied
            return
        # 2. send
        for m in rd.messages:
            self._send(node, m)
        # 3. apply
        for e in rd.committed_entries:
            if e.index != node.applied + 1:
                raise Violation(f"{node.id} applies {e.index} after {node.applied}")
            node.state = zlib.crc32(b"%d:%d:%d:" % (e.index, e.term, e.type) + e.data, node.state)
            node.applied = e.index
            chk.on_apply(node.id, e.index, e.term, node.state)
            if e.type == EntryType.CONF_CHANGE:
                c.apply_conf_change(ConfChange.decode(e.data))
        for rs in rd.read_states:
            chk.on_read_state(node.id, rs)
            self._log(1, f"{node.id} read state {rs.context!r} at {rs.index}")
        if rd.soft_state is not None:
            self._log(1, f"{node.id} is {rd.soft_state.role.value} (leader {rd.soft_state.leader}, term {c.term})")
        c.advance(rd)

    def _check_commit_is_permanent(self, leader: SimNode, c: RaftCore, index: int) -> None:
        """Right when a leader's Ready says `index` is committed (and with the voters it
        counted): could any log without that entry still win an election?"""
        if index <= leader.commit_checked:
            return
        leader.commit_checked = index
        term = c.log.term(index)
        if term is None:
            return  # compacted already: it was checked when committed
        logs = {n.id: n.log_summaries(index, term) for n in self.nodes.values() if not n.retired}
        self.check.on_leader_commit(leader.id, index, term, c.conf_state.voters, logs)

    def _log(self, level: int, text: str) -> None:
        if self.verbose >= level:
            print(f"[{self.now / STEPS_PER_TICK:8.2f}] {text}", file=self.out)

