"""Elections: pre-vote, check-quorum, leader stickiness, randomized timeouts, leadership
transfer."""

from __future__ import annotations

import random

import pytest

from kvstore.raft import (
    Config,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftCore,
    Role,
)
from kvstore.raft.sim import Cluster
from kvstore.raft.testkit import VOTERS3, cl_leader, cluster3, drain, leader_of, tick_until

M = MsgType


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
