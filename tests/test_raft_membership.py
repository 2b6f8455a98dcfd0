"""Membership: learners, promotion, removal (of the leader too), one change at a time."""

from __future__ import annotations

import pytest

from kvstore.raft import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    MsgType,
    ProposalDropped,
    Role,
)
from kvstore.raft.sim import Cluster
from kvstore.raft.testkit import VOTERS3, cl_leader, core, drain, fresh_leader

M = MsgType


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
