"""The Raft core: bootstrap, the Ready contract, and one test per claim of the Raft paper
(Figure 3). Scenario tests drive whole clusters through kvstore.raft.sim.Cluster, which
checks every safety property after every event (a violation raises simcheck.Violation).
"""

from __future__ import annotations

import random

import pytest

from kvstore.raft import (
    JOIN,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    RaftCore,
    Role,
    bootstrap_entries,
)
from kvstore.raft.sim import Cluster
from kvstore.raft.testkit import VOTERS3, cl_leader, cluster3, core, drain, exchange, leader_of, tick_until

M = MsgType


# ---------------------------------------------------------------- bootstrap and Ready contract


def test_bootstrap_writes_the_configuration_into_the_log():
    c = core()
    rd = c.ready()
    assert rd.hard_state == HardState(term=1, vote=None, commit=6)
    assert [e.index for e in rd.entries] == [1, 2, 3, 4, 5, 6]
    assert rd.entries == bootstrap_entries(VOTERS3)
    assert rd.committed_entries == rd.entries
    assert all(e.type == EntryType.CONF_CHANGE and e.term == 1 for e in rd.entries)
    assert c.conf_state == VOTERS3
    c.advance(rd)
    assert c.applied == 6 and not c.has_ready()


def test_a_joining_node_starts_empty_and_learns_the_configuration_from_the_log():
    c = core("n4", conf=JOIN)
    assert not c.has_ready()
    assert c.conf_state.voters == () and c.last_index == 0
    for _ in range(100):
        c.tick()
    assert c.role == Role.FOLLOWER and not c.has_ready(), "a non-member never campaigns"
    ents = tuple(bootstrap_entries(VOTERS3)) + (Entry(7, 2, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_LEARNER, "n4").encode()),)
    c.step(Message(M.APPEND, "n1", "n4", 2, index=0, log_term=0, entries=ents, commit=7))
    rd = c.ready()
    assert rd.entries == list(ents) and rd.hard_state == HardState(2, None, 7)
    assert c.conf_state == ConfState(("n1", "n2", "n3"), ("n4",)) and c.role == Role.LEARNER
    assert [(m.type, m.index, m.reject) for m in rd.messages] == [(M.APPEND_RESP, 7, False)]


def test_vote_is_in_the_same_ready_as_the_reply_that_depends_on_it():
    c = core()
    drain(c)
    c.step(Message(M.VOTE, "n2", "n1", 2, index=6, log_term=1))
    rd = c.ready()
    assert rd.hard_state == HardState(term=2, vote="n2", commit=6)
    assert [(m.type, m.reject, m.term) for m in rd.messages] == [(M.VOTE_RESP, False, 2)]


def test_candidate_persists_its_term_and_self_vote_with_the_vote_requests():
    c = core(pre_vote=False)
    drain(c)
    for _ in range(20):
        c.tick()
    rd = c.ready()
    assert rd.hard_state == HardState(term=2, vote="n1", commit=6)
    assert sorted((m.type, m.dst) for m in rd.messages) == [(M.VOTE, "n2"), (M.VOTE, "n3")]


def test_follower_entries_are_in_the_ready_with_the_ack():
    c = core("n2")
    drain(c)
    c.step(Message(M.APPEND, "n1", "n2", 2, index=6, log_term=1, entries=(Entry(7, 2),), commit=6))
    rd = c.ready()
    assert rd.entries == [Entry(7, 2)]
    assert [(m.type, m.index) for m in rd.messages] == [(M.APPEND_RESP, 7)]


def test_bad_input_from_peers_is_ignored_and_counted():
    c = core()
    drain(c)
    bad = [
        Message(M.APPEND, "n2", "n1", 2, index=6, log_term=1, entries=(Entry(9, 2),)),  # gap
        Message(M.APPEND, "n2", "n1", 2, index=6, log_term=1, entries=(Entry(7, 5),)),  # term > msg term
        Message(M.SNAPSHOT, "n2", "n1", 2),  # no snapshot
        Message(M.APPEND, "n2", "n9", 2),  # not for us
        Message(M.HEARTBEAT, "n2", "n1", -1),
        Message(M.APPEND_RESP, "n2", "n1", 1, index=10**9),
        Message(99, "n2", "n1", 1),  # type: ignore[arg-type]
    ]
    for m in bad:
        c.step(m)
    assert c.dropped_messages >= 5
    assert c.last_index == 6 and c.term == 1


# ---------------------------------------------------------------- the paper's claims


def test_election_safety_at_most_one_leader_per_term():
    """Vote splits and churn without pre-vote: every term has at most one leader (the
    checker records the leader of every term and fails on a second one)."""
    for seed in range(5):
        cl = Cluster(5, seed=seed, cfg=Config(id="", pre_vote=False, check_quorum=False, election_tick=3))
        cl.net.drop, cl.net.max_delay = 0.2, 8
        rng = random.Random(seed)
        for _ in range(60):
            cl.partition(*[[n for n in cl.nodes if rng.random() < 0.6]])
            cl.run(5)
        assert len(cl.check.leaders) >= 3
    # and a node never grants two votes in one term, even across a restart
    c = core(pre_vote=False)
    drain(c)
    c.step(Message(M.VOTE, "n2", "n1", 2, index=6, log_term=1))
    hs = c.ready().hard_state
    restarted = RaftCore(Config(id="n1"), conf=VOTERS3, hard_state=hs, entries=bootstrap_entries(VOTERS3), rng=random.Random(2))
    restarted.step(Message(M.VOTE, "n3", "n1", 2, index=6, log_term=1))
    assert [(m.type, m.reject) for m in restarted.ready().messages] == [(M.VOTE_RESP, True)]


def test_leader_append_only_ignores_a_conflicting_append_in_its_term():
    cores = cluster3()
    tick_until(cores, lambda: any(c.is_leader for c in cores.values()))
    lead = cores[leader_of(cores)]
    lead.propose(b"x")
    exchange(cores, [])
    before = list(lead.log.entries)
    other = next(n for n in cores if n != lead.id)
    lead.step(Message(M.APPEND, other, lead.id, lead.term, index=5, log_term=1, entries=(Entry(6, lead.term, data=b"evil"),)))
    assert lead.log.entries == before and lead.is_leader
    assert lead.dropped_messages == 1


def test_log_matching_consistency_check_rejects_a_gap_and_a_term_mismatch():
    c = core("n2")
    drain(c)
    c.step(Message(M.APPEND, "n1", "n2", 2, index=8, log_term=2, entries=(Entry(9, 2),)))
    c.step(Message(M.APPEND, "n1", "n2", 2, index=6, log_term=2, entries=(Entry(7, 2),)))  # 6 has term 1
    msgs = c.ready().messages
    assert [(m.reject, m.index) for m in msgs] == [(True, 8), (True, 6)]
    assert c.last_index == 6
    # a delayed, shorter AppendEntries never truncates matching entries
    c.step(Message(M.APPEND, "n1", "n2", 2, index=6, log_term=1, entries=(Entry(7, 2, data=b"a"), Entry(8, 2, data=b"b"))))
    c.step(Message(M.APPEND, "n1", "n2", 2, index=6, log_term=1, entries=(Entry(7, 2, data=b"a"),)))
    assert c.last_index == 8


def test_log_matching_holds_across_all_logs_after_chaos():
    cl = Cluster(5, seed=3, cfg=Config(id="", max_entries_per_msg=2))
    cl.net.drop, cl.net.dup, cl.net.max_delay = 0.1, 0.05, 6
    rng = random.Random(3)
    for t in range(200):
        if t % 15 == 0:
            ids = list(cl.nodes)
            rng.shuffle(ids)
            cl.partition(ids[:2], ids[2:])
        lead = cl.leader()
        if lead:
            cl.propose(lead, b"%d" % t)
        cl.tick()
    logs = {n: {e.index: e for e in cl.core(n).log.entries} for n in cl.nodes}
    for a in logs:
        for b in logs:
            common = [i for i in logs[a] if i in logs[b] and logs[a][i].term == logs[b][i].term]
            for i in common:
                assert all(logs[a][j] == logs[b][j] for j in range(1, i + 1))


def test_leader_completeness_a_stale_log_cannot_win():
    cl = Cluster(3, seed=4)
    lead = cl_leader(cl)
    stale = next(n for n in cl.nodes if n != lead)
    cl.isolate(stale)
    for i in range(5):
        cl.propose(lead, b"c%d" % i)
    cl.run(3)
    committed = cl.core(lead).commit
    assert committed > cl.core(stale).last_index
    cl.crash(lead)
    cl.heal()
    new = cl.elect()
    assert new != stale
    assert cl.core(new).last_index >= committed
    # directly: a voter refuses a candidate whose log is behind its own
    c = core(check_quorum=False)  # no leader lease, so the vote requests are considered
    drain(c)
    c.step(Message(M.APPEND, "n2", "n1", 2, index=6, log_term=1, entries=(Entry(7, 2),), commit=6))
    drain(c)
    c.step(Message(M.VOTE, "n3", "n1", 3, index=6, log_term=1))
    assert [(m.type, m.reject) for m in c.ready().messages] == [(M.VOTE_RESP, True)]
    c.step(Message(M.VOTE, "n3", "n1", 3, index=7, log_term=2))
    assert [(m.type, m.reject) for m in c.ready().messages] == [(M.VOTE_RESP, False)]


def test_state_machine_safety_every_node_applies_the_same_sequence():
    cl = Cluster(5, seed=5, cfg=Config(id="", max_entries_per_msg=3))
    cl.net.drop, cl.net.max_delay, cl.crash_mid_ready = 0.05, 4, 0.01
    rng = random.Random(5)
    for t in range(250):
        if t % 20 == 0:
            cl.isolate(cl.leader() or "n1") if rng.random() < 0.5 else cl.heal()
        if rng.random() < 0.05:
            cl.crash(rng.choice(list(cl.nodes)))
        for n in cl.nodes.values():
            if not n.up and rng.random() < 0.2:
                cl.start(n.id)
        lead = cl.leader()
        if lead:
            cl.propose(lead, b"%d" % t)
        cl.tick()
    cl.heal()
    cl.net.drop = cl.crash_mid_ready = 0
    for n in cl.nodes:
        cl.start(n)
    lead = cl.elect()
    cl.propose(lead, b"last")
    target = cl.core(lead).last_index
    assert cl.run_until(lambda: all(n.applied >= target for n in cl.nodes.values()), 200)
    states = {n.state for n in cl.nodes.values() if n.applied == target}
    assert len(states) == 1  # identical state machines (the checker compared every index too)
    assert target > 100


def test_a_ready_can_be_taken_before_the_previous_one_is_advanced():
    """The node runtime keeps stepping the core while a Ready is being fsynced: the next
    Ready holds only what is new, and advancing both in order leaves the core consistent."""
    c = core(check_quorum=False)
    rd1 = c.ready()
    assert len(rd1.entries) == 6 and len(rd1.committed_entries) == 6
    c.step(Message(M.VOTE, "n2", "n1", 2, index=6, log_term=1))
    rd2 = c.ready()
    assert rd2.entries == [] and rd2.committed_entries == [] and rd2.hard_state == HardState(2, "n2", 6)
    assert c.applied == 0
    c.advance(rd1)
    c.advance(rd2)
    assert c.applied == 6 and not c.has_ready()


def test_config_is_validated():
    for bad in ({"election_tick": 1}, {"heartbeat_tick": 0}, {"max_inflight": 0}, {"max_entries_per_msg": 0}):
        with pytest.raises(ValueError):
            core(**bad)
