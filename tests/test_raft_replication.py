"""Replication: fast backtracking, batching, pipelining, the commit rule (Figure 8),
learners and commit, ReadIndex, snapshots, restarts, limits, status."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvstore.raft import (
    JOIN,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    HardState,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    Role,
    bootstrap_entries,
)
from kvstore.raft.sim import Cluster
from kvstore.raft.simcheck import Violation
from kvstore.raft.testkit import (
    VOTERS3,
    cl_leader,
    cluster3,
    core,
    drain,
    exchange,
    fresh_leader,
    leader_of,
    tick_until,
)

M = MsgType


# ---------------------------------------------------------------- replication


def test_fast_backtracking_skips_a_whole_conflicting_term_at_once():
    boot = bootstrap_entries(VOTERS3)
    common = [Entry(i, 2) for i in range(7, 17)]
    lead_log = boot + common + [Entry(i, 5) for i in range(17, 117)]
    foll_log = boot + common + [Entry(i, 3) for i in range(17, 217)]
    hs = HardState(5, "n1", 16)
    a = core("n1", hard_state=hs, entries=lead_log)
    b = core("n2", hard_state=hs, entries=foll_log)
    c = core("n3", hard_state=hs, entries=lead_log)
    cores = {"n1": a, "n2": b, "n3": c}
    seen = tick_until(cores, lambda: a.is_leader or b.is_leader or c.is_leader)
    assert not b.is_leader  # n2's log is behind in terms
    lead = leader_of(cores)
    for _ in range(3):
        for x in cores.values():
            x.tick()
        seen += exchange(cores, [])
    rejects = [m for m in seen if m.type == M.APPEND_RESP and m.reject and m.src == "n2"]
    assert 1 <= len(rejects) <= 2, rejects  # not ~200
    assert b.log.entries == cores[lead].log.entries


def test_batching_many_proposals_travel_in_one_append():
    cores = cluster3()
    tick_until(cores, lambda: any(c.is_leader for c in cores.values()))
    exchange(cores, [])
    lead = cores[leader_of(cores)]
    first = lead.last_index + 1
    for i in range(100):
        lead.propose(b"p%d" % i)
    rd = lead.ready()
    assert [e.index for e in rd.entries] == list(range(first, first + 100))  # one fsync for all
    apps = [m for m in rd.messages if m.type == M.APPEND]
    assert len(apps) == 2 and all(len(m.entries) == 100 for m in apps)
    lead.advance(rd)


def test_pipelining_is_bounded_by_max_inflight_and_entries_per_message():
    cores = cluster3(max_inflight=3, max_entries_per_msg=10)
    tick_until(cores, lambda: any(c.is_leader for c in cores.values()))
    exchange(cores, [])
    lead = cores[leader_of(cores)]
    for i in range(100):
        lead.propose(b"p%d" % i)
    apps = [m for m in lead.ready().messages if m.type == M.APPEND]
    per_peer = {d: [m for m in apps if m.dst == d] for d in {m.dst for m in apps}}
    assert all(len(ms) == 3 and all(len(m.entries) == 10 for m in ms) for ms in per_peer.values())
    # acks free the window
    f = apps[0].dst
    lead.step(Message(M.APPEND_RESP, f, lead.id, lead.term, index=apps[0].entries[-1].index))
    more = [m for m in lead.ready().messages if m.type == M.APPEND and m.dst == f]
    assert len(more) == 1


def test_a_rejected_append_switches_the_follower_back_to_probing():
    cores = cluster3()
    tick_until(cores, lambda: any(c.is_leader for c in cores.values()))
    exchange(cores, [])
    lead = cores[leader_of(cores)]
    f = next(n for n in cores if n != lead.id)
    assert lead.status()["progress"][f]["state"] == "replicate"
    lost = [lead.propose(b"a")]
    drain(lead)  # lost in the network
    lead.propose(b"b")
    exchange(cores, [])
    assert lead.status()["progress"][f]["match"] == lead.last_index
    assert lost[0] < lead.last_index


def test_commit_rule_figure_8_old_term_entries_are_not_committed_by_counting():
    """Raft paper Figure 8, five nodes. An entry X of term 2 reaches a minority; a term-3
    leader C writes Y at the same index but nothing leaves it; the first leader returns
    (term 4) and copies X to a majority while its own term-4 entries cannot get out. X must
    not count as committed: C can still win and overwrite it."""

    def scenario(unsafe: bool, check_permanence: bool = True) -> tuple[int, int, Cluster]:
        cl = Cluster(5, seed=8, cfg=Config(id="", max_entries_per_msg=1, _unsafe_commit_any_term=unsafe))
        cl.check_permanence = check_permanence
        l1 = cl_leader(cl)
        b, c, d, e = [n for n in cl.nodes if n != l1]
        cl.partition([l1, b], [c, d, e])
        x = cl.propose(l1, b"X")
        assert x is not None
        cl.run(2)
        assert cl.core(b).log.term(x) == cl.core(l1).term
        cl.crash(l1)
        cl.crash(b)
        replicating = (M.APPEND, M.HEARTBEAT, M.SNAPSHOT)
        cl.net.filter = lambda m: None if m.type in replicating else m  # C wins but writes nowhere
        assert cl.run_until(lambda: cl.leader() is not None, 100)
        c = cl.leader()
        assert c is not None and cl.core(c).log.term(x) > 2
        cl.run(1)
        cl.crash(c, drop_sent=True)
        # the returning leader's own-term entries cannot get out; older ones can
        cl.net.filter = lambda m: replace(m, entries=tuple(en for en in m.entries if en.term <= 3)) if m.type == M.APPEND else m
        cl.start(l1)
        cl.start(b)
        cl.heal()
        assert cl.run_until(lambda: cl.leader() in (l1, b), 100)
        w = cl.leader()
        assert w is not None
        cl.run(3)
        commit = cl.core(w).commit
        holders = sum(1 for n in cl.nodes.values() if n.up and n.core is not None and n.core.log.term(x) == 2)
        cl.crash(l1, drop_sent=True)
        cl.crash(b, drop_sent=True)
        cl.net.filter = None
        cl.start(c)
        assert cl.run_until(lambda: cl.leader() == c, 100)
        return commit, holders, cl

    commit, holders, cl = scenario(unsafe=False)
    assert holders >= 3  # X is on a majority...
    assert commit < 7 + 5  # ... but was never committed, so C may overwrite it
    # With the rule broken, the checker flags the commit the moment it happens (C could
    # still win)...
    with pytest.raises(Violation, match="unsafe commit: .* committed \\(12, term 2\\)"):
        scenario(unsafe=True)
    # ...and without that check, when C does win and the committed entry is gone.
    with pytest.raises(Violation, match="leader completeness"):
        scenario(unsafe=True, check_permanence=False)


def test_a_learner_does_not_count_for_commit():
    cl = Cluster(3, seed=9)
    lead = cl_leader(cl)
    cl.conf_change(lead, ConfChange(ConfChangeType.ADD_LEARNER, "n4"))
    cl.add_node("n4")
    cl.run(5)
    assert cl.core("n4").role == Role.LEARNER
    voters = [n for n in ("n1", "n2", "n3") if n != lead]
    cl.crash(voters[0])
    cl.run(1)
    commit = cl.core(lead).commit
    cl.crash(voters[1])
    index = cl.propose(lead, b"x")
    assert index is not None
    cl.run(5)
    assert cl.core("n4").last_index >= index  # the learner has it...
    assert cl.core(lead).commit == commit  # ...but the leader alone is no quorum of 3


# ---------------------------------------------------------------- reads


def test_read_index_on_the_leader_and_forwarded_from_a_follower():
    cl = Cluster(3, seed=10)
    lead = cl_leader(cl)
    f = next(n for n in cl.nodes if n != lead)
    cl.propose(lead, b"w")
    cl.run(1)
    served = cl.check.reads_served
    assert cl.read(lead, b"on-leader")
    assert cl.read(f, b"on-follower")
    cl.run(3)
    assert cl.check.reads_served == served + 2  # each checked >= commit at request time


def test_read_index_waits_for_the_new_leader_to_commit_in_its_term():
    cores, cand, other = fresh_leader()
    noop = cand.last_index
    assert cand.commit < noop
    cand.read_index(b"early")
    rd = cand.ready()
    assert not rd.read_states and not any(m.type == M.HEARTBEAT for m in rd.messages)
    cand.advance(rd)
    cand.step(Message(M.APPEND_RESP, other, cand.id, cand.term, index=noop))
    drain(cand)
    cand.step(Message(M.HEARTBEAT_RESP, other, cand.id, cand.term, context=b"1"))
    rd = cand.ready()
    assert [(r.index, r.context) for r in rd.read_states] == [(noop, b"early")]


def test_a_deposed_leader_cannot_serve_a_read():
    cl = Cluster(3, seed=11)
    old = cl_leader(cl)
    cl.isolate(old)
    cl.run(1)
    assert cl.read(old, b"stale?")  # it still believes it leads
    assert cl.run_until(lambda: cl.leader() not in (None, old), 100)
    new = cl.leader()
    assert new is not None
    cl.propose(new, b"newer")
    cl.run(5)
    cl.heal()
    cl.run(5)
    # the checker would have failed on a stale ReadState; none was produced
    assert not cl.core(old).is_leader
    with pytest.raises(NotLeader):
        core("n1", conf=JOIN).read_index(b"x")


# ---------------------------------------------------------------- snapshots, restarts, limits


def test_snapshot_catch_up_of_a_follower_that_fell_behind_compaction():
    cl = Cluster(3, seed=16)
    lead = cl_leader(cl)
    slow = next(n for n in cl.nodes if n != lead)
    cl.crash(slow)
    for i in range(30):
        cl.propose(lead, b"%d" % i)
        cl.tick()
    assert cl.compact(lead)
    snap = cl.core(lead).snapshot_meta
    assert snap.index > cl.nodes[slow].applied and snap.conf == VOTERS3
    sent = []
    cl.net.filter = lambda m: sent.append(m) or m
    cl.start(slow)
    assert cl.run_until(lambda: cl.nodes[slow].applied == cl.core(lead).commit, 30)
    assert any(m.type == M.SNAPSHOT and m.dst == slow for m in sent)
    assert cl.nodes[slow].snapshot is not None and cl.nodes[slow].snapshot.index == snap.index
    assert cl.nodes[slow].state == cl.nodes[lead].state
    # and the snapshot state survives a restart
    cl.crash(slow)
    cl.start(slow)
    assert cl.core(slow).snapshot_meta == snap and cl.core(slow).conf_state == VOTERS3


def test_compaction_keeps_the_configuration_at_the_snapshot_index():
    cl = Cluster(3, seed=17)
    lead = cl_leader(cl)
    cl.conf_change(lead, ConfChange(ConfChangeType.ADD_LEARNER, "n4"))
    cl.add_node("n4")
    cl.run(5)
    assert cl.compact(lead)
    assert cl.core(lead).snapshot_meta.conf == ConfState(("n1", "n2", "n3"), ("n4",))
    with pytest.raises(ValueError):
        cl.core(lead).compact(cl.core(lead).last_index + 5, 1)


def test_restart_from_durable_state_only():
    cl = Cluster(3, seed=18)
    lead = cl_leader(cl)
    for i in range(10):
        cl.propose(lead, b"%d" % i)
    cl.run(3)
    before = {n: (cl.core(n).term, cl.core(n).vote, cl.core(n).log.entries[:]) for n in cl.nodes}
    commit = cl.core(lead).commit
    for n in list(cl.nodes):
        cl.crash(n)
    for n in list(cl.nodes):
        cl.start(n)
        c = cl.core(n)
        assert (c.term, c.vote, c.log.entries) == before[n]
        assert c.applied == cl.nodes[n].applied and c.commit >= c.applied
    new = cl.elect()
    assert cl.core(new).term > before[lead][0]
    i = cl.propose(new, b"after restart")
    cl.run(3)
    assert i is not None and cl.core(new).commit >= i > commit


def test_crash_between_persist_and_send_loses_nothing_acknowledged():
    cl = Cluster(3, seed=19)
    cl.crash_mid_ready = 0.05
    for t in range(300):
        lead = cl.leader()
        if lead:
            cl.propose(lead, b"%d" % t)
        for n in cl.nodes.values():
            if not n.up:
                cl.start(n.id)
        cl.tick()
    assert cl.check.max_committed > 50  # and no checker failure on the way


def test_proposals_are_refused_with_a_leader_hint_or_when_the_backlog_is_full():
    cl = Cluster(3, seed=20, cfg=Config(id="", max_uncommitted=5))
    lead = cl_leader(cl)
    f = next(n for n in cl.nodes if n != lead)
    with pytest.raises(NotLeader) as ei:
        cl.core(f).propose(b"x")
    assert ei.value.leader == lead
    cl.isolate(lead)
    for i in range(5):
        cl.core(lead).propose(b"%d" % i)
    with pytest.raises(ProposalDropped):
        cl.core(lead).propose(b"one too many")


def test_status_reports_role_progress_and_configuration():
    cl = Cluster(3, seed=21)
    lead = cl_leader(cl)
    st = cl.core(lead).status()
    assert st["role"] == "leader" and st["leader"] == lead and st["term"] >= 2
    assert set(st["progress"]) == {"n1", "n2", "n3"}
    assert all(p["match"] == st["last_index"] for p in st["progress"].values())
    assert st["conf"] == {"voters": ["n1", "n2", "n3"], "learners": []}
    f = next(n for n in cl.nodes if n != lead)
    assert cl.core(f).status()["role"] == "follower" and "progress" not in cl.core(f).status()
