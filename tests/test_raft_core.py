"""The Raft core, claim by claim (Raft paper, Figure 3) and feature by feature.

Scenario tests drive whole clusters through kvstore.raft.sim.Cluster, which checks every
safety property after every event (a violation raises simcheck.Violation); unit tests
drive single cores by hand.
"""

from __future__ import annotations

import random
from dataclasses import replace

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
    NotLeader,
    ProposalDropped,
    RaftCore,
    Role,
    bootstrap_entries,
)
from kvstore.raft.sim import Cluster
from kvstore.raft.simcheck import Violation

M = MsgType
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
        cl.drop, cl.max_delay = 0.2, 8
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
    cl.drop, cl.dup, cl.max_delay = 0.1, 0.05, 6
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
    cl.drop, cl.max_delay, cl.crash_mid_ready = 0.05, 4, 0.01
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
    cl.drop = cl.crash_mid_ready = 0
    for n in cl.nodes:
        cl.start(n)
    lead = cl.elect()
    cl.propose(lead, b"last")
    target = cl.core(lead).last_index
    assert cl.run_until(lambda: all(n.applied >= target for n in cl.nodes.values()), 200)
    states = {n.state for n in cl.nodes.values() if n.applied == target}
    assert len(states) == 1  # identical state machines (the checker compared every index too)
    assert target > 100


# ---------------------------------------------------------------- elections: pre-vote, check-quorum, stickiness


def test_prevote_keeps_a_partitioned_node_from_inflating_its_term():
    cl = Cluster(3, seed=6)
    lead = cl_leader(cl)
    term = cl.core(lead).term
    lonely = next(n for n in cl.nodes if n != lead)
    cl.isolate(lonely)
    cl.run(100)
    assert cl.core(lonely).term == term
    assert cl.core(lonely).state == Role.PRECANDIDATE and cl.core(lonely).role == Role.CANDIDATE
    cl.heal()
    cl.run(30)
    assert cl.leader() == lead and cl.core(lead).term == term
    assert cl.core(lonely).leader == lead


def test_without_prevote_a_rejoining_node_would_depose_the_leader():
    """The contrast to the test above: the same partition without pre-vote costs a term."""
    cl = Cluster(3, seed=6, cfg=Config(id="", pre_vote=False))
    lead = cl_leader(cl)
    term = cl.core(lead).term
    lonely = next(n for n in cl.nodes if n != lead)
    cl.isolate(lonely)
    cl.run(100)
    assert cl.core(lonely).term > term + 3
    cl.heal()
    cl.run(60)
    assert cl.core(cl.elect()).term > term


def test_check_quorum_an_isolated_leader_steps_down():
    cl = Cluster(3, seed=7)
    lead = cl_leader(cl)
    cl.isolate(lead)
    cl.run(2 * 10 + 2)
    assert not cl.core(lead).is_leader
    with pytest.raises(NotLeader):
        cl.core(lead).propose(b"x")
    # without check-quorum it would lead (uselessly) forever
    cl = Cluster(3, seed=7, cfg=Config(id="", check_quorum=False))
    lead = cl_leader(cl)
    cl.isolate(lead)
    cl.run(100)
    assert cl.core(lead).is_leader


def test_leader_stickiness_a_node_that_cannot_hear_the_leader_does_not_depose_it():
    """One-way failure: f cannot hear the leader but reaches everyone. The others still
    hear the leader and ignore f's (pre-)votes, so the leader stays."""
    cl = Cluster(3, seed=8)
    lead = cl_leader(cl)
    term = cl.core(lead).term
    f = next(n for n in cl.nodes if n != lead)
    cl.cut({(lead, f)})
    cl.run(150)
    assert cl.leader() == lead and cl.core(lead).term == term
    # the same without check-quorum (no lease): f's pre-vote succeeds and it takes over
    cl = Cluster(3, seed=8, cfg=Config(id="", check_quorum=False))
    lead = cl_leader(cl)
    f = next(n for n in cl.nodes if n != lead)
    cl.cut({(lead, f)})
    cl.run(150)
    assert cl.core(f).term > term


def test_vote_requests_in_lease_are_ignored_unless_for_a_transfer():
    cores = cluster3()
    tick_until(cores, lambda: any(c.is_leader for c in cores.values()))
    lead = leader_of(cores)
    f, other = [n for n in cores if n != lead]
    c = cores[f]
    term = c.term
    c.step(Message(M.VOTE, other, f, term + 5, index=100, log_term=term))
    assert c.term == term and not c.ready().messages
    c.step(Message(M.VOTE, other, f, term + 5, index=100, log_term=term, context=b"transfer"))
    assert c.term == term + 5
    assert [(m.type, m.reject) for m in c.ready().messages] == [(M.VOTE_RESP, False)]


def test_randomized_election_timeouts_come_from_the_injected_rng():
    def first_campaign(seed: int) -> int:
        c = RaftCore(Config(id="n1"), conf=VOTERS3, rng=random.Random(seed))
        drain(c)
        for t in range(1, 100):
            c.tick()
            if c.role != Role.FOLLOWER:
                return t
        return -1

    ticks = {first_campaign(s) for s in range(40)}
    assert ticks <= set(range(10, 20)) and len(ticks) > 3
    assert first_campaign(3) == first_campaign(3)


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
        cl.filter = lambda m: None if m.type in replicating else m  # C wins but writes nowhere
        assert cl.run_until(lambda: cl.leader() is not None, 100)
        c = cl.leader()
        assert c is not None and cl.core(c).log.term(x) > 2
        cl.run(1)
        cl.crash(c, drop_sent=True)
        # the returning leader's own-term entries cannot get out; older ones can
        cl.filter = lambda m: replace(m, entries=tuple(en for en in m.entries if en.term <= 3)) if m.type == M.APPEND else m
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
        cl.filter = None
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


# ---------------------------------------------------------------- leadership transfer


def test_leadership_transfer_to_a_lagging_follower():
    cl = Cluster(3, seed=12)
    lead = cl_leader(cl)
    target = next(n for n in cl.nodes if n != lead)
    cl.isolate(target)
    for i in range(10):
        cl.propose(lead, b"%d" % i)
    cl.run(2)
    cl.heal()
    assert cl.transfer(lead, target)
    with pytest.raises(ProposalDropped):
        cl.core(lead).propose(b"during transfer")
    assert cl.run_until(lambda: cl.leader() == target, 10)
    assert cl.core(target).last_index >= cl.core(lead).last_index
    assert not cl.core(lead).is_leader


def test_leadership_transfer_to_a_dead_node_is_abandoned_after_an_election_timeout():
    cl = Cluster(3, seed=13)
    lead = cl_leader(cl)
    target = next(n for n in cl.nodes if n != lead)
    cl.crash(target)
    assert cl.transfer(lead, target)
    with pytest.raises(ProposalDropped):
        cl.core(lead).propose(b"x")
    cl.run(11)
    assert cl.leader() == lead
    assert cl.propose(lead, b"x") is not None
    with pytest.raises(ValueError):
        cl.core(lead).transfer_leader("nobody")
    with pytest.raises(NotLeader):
        cl.core(next(n for n in cl.nodes if n not in (lead, target))).transfer_leader(lead)


# ---------------------------------------------------------------- membership


def test_add_learner_promote_and_remove():
    cl = Cluster(3, seed=14)
    lead = cl_leader(cl)
    assert cl.conf_change(lead, ConfChange(ConfChangeType.ADD_LEARNER, "n4")) is not None
    cl.add_node("n4")
    with pytest.raises(ProposalDropped):  # one change at a time
        cl.core(lead).propose_conf_change(ConfChange(ConfChangeType.PROMOTE, "n4"))
    cl.run(5)
    assert cl.core("n4").role == Role.LEARNER
    assert cl.core("n4").last_index == cl.core(lead).last_index
    cl.crash("n4")  # learners never campaign, and nobody waits for them
    assert cl.propose(lead, b"x") is not None
    cl.start("n4")
    cl.run(5)
    assert cl.conf_change(lead, ConfChange(ConfChangeType.PROMOTE, "n4")) is not None
    cl.run(5)
    assert cl.core("n4").conf_state.voters == ("n1", "n2", "n3", "n4")
    assert cl.core("n4").role == Role.FOLLOWER
    # with four voters the quorum is three
    a, b = [n for n in ("n1", "n2", "n3") if n != lead][:2]
    cl.crash(a)
    cl.crash(b)
    i = cl.propose(lead, b"needs three")
    cl.run(5)
    assert i is not None and cl.core(lead).commit < i
    cl.start(a)
    cl.run(5)
    assert cl.core(lead).commit >= i
    assert cl.conf_change(lead, ConfChange(ConfChangeType.REMOVE, b)) is not None
    cl.run(5)
    assert cl.core(lead).conf_state.voters == tuple(sorted({"n1", "n2", "n3", "n4"} - {b}))
    with pytest.raises(ValueError):
        cl.core(lead).propose_conf_change(ConfChange(ConfChangeType.PROMOTE, "n1"))
    with pytest.raises(ValueError):
        cl.core(lead).propose_conf_change(ConfChange(ConfChangeType.REMOVE, "n9"))


def test_removing_the_leader_makes_it_step_down_once_committed():
    cl = Cluster(3, seed=15)
    lead = cl_leader(cl)
    idx = cl.conf_change(lead, ConfChange(ConfChangeType.REMOVE, lead))
    assert idx is not None
    assert cl.run_until(lambda: not cl.core(lead).is_leader, 10)
    assert cl.core(lead).commit >= idx
    new = cl.elect()
    assert new != lead
    assert cl.propose(new, b"after") is not None
    cl.run(50)
    assert cl.core(lead).role == Role.FOLLOWER and cl.core(lead).term <= cl.core(new).term
    assert lead not in cl.core(new).conf_state.members()


def test_a_new_leader_refuses_conf_changes_until_it_commits_in_its_term():
    cores, cand, other = fresh_leader()
    with pytest.raises(ProposalDropped):
        cand.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "n4"))


def test_a_truncated_conf_change_is_reverted():
    c = core("n2")
    drain(c)
    cc = ConfChange(ConfChangeType.ADD_LEARNER, "n4").encode()
    c.step(Message(M.APPEND, "n1", "n2", 2, index=6, log_term=1, entries=(Entry(7, 2, EntryType.CONF_CHANGE, cc),), commit=6))
    assert c.conf_state.learners == ("n4",)
    c.step(Message(M.APPEND, "n3", "n2", 3, index=6, log_term=1, entries=(Entry(7, 3),), commit=6))
    assert c.conf_state == VOTERS3
    assert c.apply_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "n4")) == VOTERS3


def test_conf_change_encoding_round_trips_and_rejects_garbage():
    for t in ConfChangeType:
        cc = ConfChange(t, "node-7")
        assert ConfChange.decode(cc.encode()) == cc
    for bad in (b"", b"\x01", b"\x09abc"):
        with pytest.raises(ValueError):
            ConfChange.decode(bad)


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
    cl.filter = lambda m: sent.append(m) or m
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
