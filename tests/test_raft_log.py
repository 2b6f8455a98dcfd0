"""RaftLog (the core's in-memory log) and Progress, on their own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.raft.log import RaftLog
from kvstore.raft.progress import Progress, ProgressState
from kvstore.raft.types import JOIN, ConfChange, ConfChangeType, ConfState, Entry, EntryType, SnapshotMeta

EMPTY = SnapshotMeta(0, 0, JOIN)


def log_of(*terms: int, snap: SnapshotMeta = EMPTY, committed: int = 0) -> RaftLog:
    return RaftLog(snap, [Entry(snap.index + 1 + i, t) for i, t in enumerate(terms)], committed, 0)


def cc(kind: ConfChangeType, node: str, index: int, term: int = 1) -> Entry:
    return Entry(index, term, EntryType.CONF_CHANGE, ConfChange(kind, node).encode())


def test_term_lookup_around_the_snapshot():
    lg = log_of(3, 3, 4, snap=SnapshotMeta(10, 2, JOIN))
    assert lg.first_index == 11 and lg.last_index == 13
    assert [lg.term(i) for i in (9, 10, 11, 13, 14)] == [None, 2, 3, 4, None]
    assert lg.last_term() == 4


def test_find_conflict_by_term():
    lg = log_of(1, 1, 2, 2, 2, 5, 5)  # indices 1..7
    assert lg.find_conflict_by_term(7, 5) == (7, 5)
    assert lg.find_conflict_by_term(7, 4) == (5, 2)
    assert lg.find_conflict_by_term(7, 1) == (2, 1)
    assert lg.find_conflict_by_term(7, 0) == (0, 0)
    assert lg.find_conflict_by_term(100, 3) == (5, 2)  # clamped to the last index
    snap = log_of(6, 6, snap=SnapshotMeta(10, 5, JOIN))
    assert snap.find_conflict_by_term(12, 5) == (10, 5)
    assert snap.find_conflict_by_term(12, 4) == (9, 0)  # somewhere inside the snapshot


def test_maybe_append_checks_consistency_and_truncates_only_conflicts():
    lg = log_of(1, 1, 2)
    assert lg.maybe_append(3, 1, 0, [Entry(4, 2)]) is None  # entry 3 has term 2, not 1
    assert lg.maybe_append(5, 2, 0, [Entry(6, 2)]) is None  # gap
    assert lg.maybe_append(3, 2, 2, [Entry(4, 3), Entry(5, 3)]) == 5
    assert lg.committed == 2 and lg.last_index == 5
    assert lg.maybe_append(3, 2, 9, [Entry(4, 3)]) == 4  # stale and shorter: keeps entry 5
    assert lg.last_index == 5 and lg.committed == 4  # commit limited to what this message verified
    assert lg.maybe_append(2, 1, 4, [Entry(3, 4)]) == -1  # would overwrite a committed entry
    assert lg.maybe_append(4, 3, 4, [Entry(5, 4)]) == 5
    assert [e.term for e in lg.entries] == [1, 1, 2, 3, 4]
    assert lg.unstable == 4  # the first index the shell must (re)write


def test_configuration_follows_the_log_and_reverts_on_truncation():
    base = ConfState(("a", "b", "c"))
    lg = RaftLog(SnapshotMeta(5, 1, base), [], 5, 5)
    lg.append([cc(ConfChangeType.ADD_LEARNER, "d", 6, 2)])
    assert lg.conf == ConfState(("a", "b", "c"), ("d",)) and lg.last_conf_index == 6
    lg.append([Entry(7, 2), cc(ConfChangeType.PROMOTE, "d", 8, 2)])
    assert lg.conf.voters == ("a", "b", "c", "d") and lg.conf_at(7) == ConfState(("a", "b", "c"), ("d",))
    lg.append([Entry(8, 3)])  # the promotion is truncated away
    assert lg.conf == ConfState(("a", "b", "c"), ("d",)) and lg.last_conf_index == 6
    lg.append([Entry(6, 4)])  # and the addition too
    assert lg.conf == base and lg.last_conf_index == 5
    # garbage in a CONF_CHANGE entry is a no-op, never a crash
    lg.append([Entry(7, 4, EntryType.CONF_CHANGE, b"\xff")])
    assert lg.conf == base


def test_compaction_keeps_the_configuration_at_the_snapshot_point():
    base = ConfState(("a", "b", "c"))
    lg = RaftLog(SnapshotMeta(0, 0, base), [Entry(1, 1), cc(ConfChangeType.ADD_LEARNER, "d", 2), Entry(3, 1), cc(ConfChangeType.REMOVE, "d", 4)], 4, 4)
    lg.applying = 3
    with pytest.raises(ValueError):
        lg.compact(4, 1)  # beyond what was handed out to apply
    with pytest.raises(ValueError):
        lg.compact(3, 2)  # wrong term
    meta = lg.compact(3, 1)
    assert meta == SnapshotMeta(3, 1, ConfState(("a", "b", "c"), ("d",)))
    assert lg.first_index == 4 and lg.conf == base and lg.conf_at(3) == meta.conf
    assert lg.compact(2, 1) == meta  # already compacted: no-op


def test_restore_replaces_the_log():
    lg = log_of(1, 1, 2, 2, committed=2)
    snap = SnapshotMeta(10, 3, ConfState(("x",)))
    lg.restore(snap)
    assert lg.last_index == 10 and lg.committed == 10 and lg.conf == ConfState(("x",))
    assert lg.pending_snapshot == snap and lg.unstable_entries() == [] and lg.next_committed() == []


def test_slice_respects_count_and_bytes_but_returns_at_least_one():
    lg = RaftLog(EMPTY, [Entry(i, 1, data=b"x" * 10) for i in range(1, 11)], 0, 0)
    assert len(lg.slice(1, 11)) == 10
    assert len(lg.slice(1, 11, max_count=3)) == 3
    assert len(lg.slice(1, 11, max_bytes=25)) == 2
    assert len(lg.slice(1, 11, max_bytes=1)) == 1


def test_data_bytes_and_the_tail_a_compaction_keeps():
    snap = SnapshotMeta(10, 1, JOIN)
    lg = RaftLog(snap, [Entry(11 + i, 1, data=b"x" * n) for i, n in enumerate([5, 10, 20, 40])], 14, 14)
    assert lg.data_bytes(11, 15) == 75 and lg.data_bytes(12, 14) == 30
    assert lg.data_bytes(1, 12) == 5 and lg.data_bytes(15, 99) == 0  # clamped to what is held
    assert lg.tail_start(14, 100, 1000) == 11  # everything fits
    assert lg.tail_start(14, 2, 1000) == 13  # at most two entries
    assert lg.tail_start(14, 100, 60) == 13  # 40 + 20 = 60 bytes fit, 60 + 10 is over
    assert lg.tail_start(14, 100, 59) == 14
    assert lg.tail_start(14, 100, 39) == 15  # not even the last entry: keep nothing
    assert lg.tail_start(12, 100, 1000) == 11 and lg.tail_start(99, 1, 1000) == 14


def test_restart_clamps_commit_and_applied():
    lg = RaftLog(SnapshotMeta(5, 1, JOIN), [Entry(i, 1) for i in range(3, 9)], committed=20, applied=2)
    assert lg.first_index == 6 and lg.last_index == 8  # entries under the snapshot dropped
    assert lg.committed == 8 and lg.applied == 5
    with pytest.raises(ValueError):
        RaftLog(EMPTY, [Entry(1, 1), Entry(3, 1)], 0, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 4), st.integers(1, 4)), max_size=30))
def test_append_matches_a_list_model(ops):
    """Random appends (each replacing the suffix from its first index) against a plain list."""
    lg = RaftLog(EMPTY, [], 0, 0)
    model: list[int] = []
    handed = 0  # entries persisted by the "shell": the log says which to rewrite
    disk: list[int] = []
    for at, count, term in ops:
        first = min(at, len(model)) + 1
        base_term = max([0] + model[: first - 1])
        ents = [Entry(first + k, max(term, base_term)) for k in range(count)]
        lg.append(ents)
        model = model[: first - 1] + [e.term for e in ents]
        unstable = lg.unstable_entries()
        if unstable:
            disk = disk[: unstable[0].index - 1] + [e.term for e in unstable]
        lg.mark_handed_out(0)
        handed += 1
        assert [e.term for e in lg.entries] == model
        assert disk == model
        for i in range(1, len(model) + 1):
            assert lg.term(i) == model[i - 1]
            assert lg.find_conflict_by_term(i, model[i - 1]) == (i, model[i - 1])


def test_progress_probe_replicate_snapshot_transitions():
    pr = Progress(next_index=11, max_inflight=2)
    assert pr.state == ProgressState.PROBE and not pr.is_paused()
    pr.sent(11)
    assert pr.is_paused()  # one probe at a time
    assert not pr.maybe_decr_to(5, 3)  # stale: not the probe in flight
    assert pr.maybe_decr_to(10, 6) and pr.next == 7 and not pr.is_paused()
    assert pr.maybe_update(8) and pr.match == 8
    pr.become_replicate()
    pr.sent(10)
    pr.sent(12)
    assert pr.next == 13 and pr.is_paused()  # window of 2 full
    pr.free_le(10)
    assert not pr.is_paused()
    assert not pr.maybe_decr_to(8, 0)  # at or below match: stale
    assert pr.maybe_decr_to(12, 0) and pr.next == 9
    pr.become_snapshot(50)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 51 and pr.state == ProgressState.PROBE
