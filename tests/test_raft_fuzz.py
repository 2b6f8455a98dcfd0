"""Whatever peers send, the core never raises and keeps its own invariants."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.raft import ConfState, Entry, EntryType, Message, MsgType, RaftCore, SnapshotMeta
from kvstore.raft.types import Config

NODES = ("n1", "n2", "n3")

entries = st.lists(
    st.builds(
        Entry,
        index=st.integers(0, 30),
        term=st.integers(0, 8),
        type=st.sampled_from(list(EntryType)),
        data=st.binary(max_size=4),
    ),
    max_size=4,
)

messages = st.builds(
    Message,
    type=st.sampled_from(list(MsgType)),
    src=st.sampled_from(NODES[1:] + ("n9", "")),
    dst=st.sampled_from(("n1", "n1", "n1", "n2")),
    term=st.integers(-1, 8),
    log_term=st.integers(-1, 8),
    index=st.integers(-1, 30),
    entries=entries.map(tuple),
    commit=st.integers(-1, 30),
    reject=st.booleans(),
    reject_hint=st.integers(-1, 30),
    context=st.binary(max_size=3),
    snapshot=st.none() | st.builds(SnapshotMeta, st.integers(0, 30), st.integers(0, 8), st.just(ConfState(NODES))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(messages, st.just("tick"), st.just("propose"), st.just("ready")), max_size=60))
def test_random_input_never_raises(ops):
    c = RaftCore(Config(id="n1", election_tick=3), conf=ConfState(NODES), rng=random.Random(0))
    term = c.term
    for op in ops:
        if op == "tick":
            c.tick()
        elif op == "propose":
            if c.is_leader:
                c.propose(b"x")
        elif op == "ready":
            while c.has_ready():
                rd = c.ready()
                c.advance(rd)
        else:
            c.step(op)
        assert c.term >= term
        term = c.term
        assert c.log.snapshot.index <= c.commit <= c.last_index
        assert c.applied <= c.commit
        assert all(e.index == c.log.first_index + k for k, e in enumerate(c.log.entries))


@st.composite
def plausible(draw) -> Message:
    """Messages that pass validation: contiguous entries, sane terms and indexes."""
    term = draw(st.integers(1, 6))
    index = draw(st.integers(0, 20))
    log_term = draw(st.integers(0, term))
    terms = sorted(draw(st.lists(st.integers(log_term, term), max_size=5)))
    ents = tuple(Entry(index + 1 + k, t, data=b"%d" % k) for k, t in enumerate(terms))
    kind = draw(st.sampled_from(list(MsgType)))
    snap = None
    if kind == MsgType.SNAPSHOT:
        snap = SnapshotMeta(draw(st.integers(1, 25)), draw(st.integers(1, term)), ConfState(NODES))
    return Message(
        kind,
        draw(st.sampled_from(NODES[1:])),
        "n1",
        term,
        log_term=log_term,
        index=index,
        entries=ents,
        commit=draw(st.integers(0, 25)),
        reject=draw(st.booleans()),
        reject_hint=draw(st.integers(0, 25)),
        context=draw(st.sampled_from([b"", b"1", b"2", b"transfer"])),
        snapshot=snap,
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(plausible(), st.just("tick"), st.just("propose"), st.just("ready")), max_size=80))
def test_plausible_input_never_raises(ops):
    test_random_input_never_raises.hypothesis.inner_test(ops)
