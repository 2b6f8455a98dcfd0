"""The drill checker: linearizability per key, lost writes, availability, and the history record."""

from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kvstore.drills import checker
from kvstore.drills.checker import availability, check, lost_writes, obvious_violation
from kvstore.drills.history import Fault, History, Op, OpKind, Outcome

R, W, D, S = OpKind.READ, OpKind.WRITE, OpKind.DELETE, OpKind.SWAP
OK, FAILED, UNKNOWN = Outcome.OK, Outcome.FAILED, Outcome.UNKNOWN


class H:
    """Hand-written histories: h.w(client, value, t0, t1) etc., times in seconds."""

    def __init__(self) -> None:
        self.h = History(start=0.0)

    def op(
        self,
        kind: OpKind,
        c: int,
        t0: float,
        t1: float | None,
        value: str | None = None,
        result: str | None = None,
        outcome: Outcome = OK,
        key: str = "k",
    ) -> Op:
        op = Op(len(self.h.ops), c, kind, key, value, t0, t1, outcome, result)
        self.h.ops.append(op)
        return op

    def w(self, c: int, v: str, t0: float, t1: float | None, outcome: Outcome = OK, key: str = "k") -> Op:
        return self.op(W, c, t0, t1, value=v, outcome=outcome, key=key)

    def r(
        self, c: int, res: str | None, t0: float, t1: float | None, outcome: Outcome = OK, key: str = "k"
    ) -> Op:
        return self.op(R, c, t0, t1, result=res if outcome == OK else None, outcome=outcome, key=key)

    def d(self, c: int, t0: float, t1: float | None, outcome: Outcome = OK, key: str = "k") -> Op:
        return self.op(D, c, t0, t1, outcome=outcome, key=key)

    def s(
        self,
        c: int,
        v: str,
        old: str | None,
        t0: float,
        t1: float | None,
        outcome: Outcome = OK,
        key: str = "k",
    ) -> Op:
        return self.op(S, c, t0, t1, value=v, result=old if outcome == OK else None, outcome=outcome, key=key)


def lin(h: History) -> bool | None:
    """check() and the bare search (no shortcuts) must agree."""
    v = check(h, budget_s=10)
    for key in h.keys():
        raw, _, _ = checker._check_ops([op for op in h.ops if op.key == key], time.monotonic() + 10, 10**8)
        assert raw == v.keys[key].linearizable, (key, raw, v.keys[key])
    return v.linearizable


# -- hand-written histories ---------------------------------------------------------


def test_empty_and_single_ops() -> None:
    assert check(History()).linearizable is True
    x = H()
    x.r(0, None, 0, 1)
    assert lin(x.h) is True
    x.r(1, "nope", 2, 3)
    assert lin(x.h) is False


def test_sequential_ok() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.r(1, "a", 2, 3)
    x.w(0, "b", 4, 5)
    x.r(1, "b", 6, 7)
    x.d(0, 8, 9)
    x.r(1, None, 10, 11)
    assert lin(x.h) is True


def test_stale_read() -> None:
    x = H()
    wa = x.w(0, "a", 0, 1)
    wb = x.w(0, "b", 2, 3)
    rd = x.r(1, "a", 4, 5)
    assert lin(x.h) is False
    v = check(x.h)
    assert v.keys["k"].counterexample == [wa, wb, rd]


def test_lost_write_seen_by_reads() -> None:
    # b acknowledged, then every read shows a: b was lost
    x = H()
    x.w(0, "a", 0, 1)
    x.r(1, "a", 1.5, 1.8)
    x.w(0, "b", 2, 3)
    x.r(1, "a", 4, 5)
    x.r(2, "a", 6, 7)
    assert lin(x.h) is False


def test_read_of_a_value_never_written() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    rd = x.r(1, "zzz", 2, 3)
    assert lin(x.h) is False
    assert check(x.h).keys["k"].counterexample == [rd]


def test_read_of_a_failed_write() -> None:
    x = H()
    x.w(0, "a", 0, 1, outcome=FAILED)
    x.r(1, "a", 0.5, 3)
    assert lin(x.h) is False


def test_reordered_writes() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.w(0, "b", 2, 3)
    x.r(1, "b", 4, 5)
    x.r(1, "a", 6, 7)  # goes back in time
    assert lin(x.h) is False


def test_read_from_the_future() -> None:
    x = H()
    x.r(1, "a", 0, 1)
    x.w(0, "a", 2, 3)
    assert lin(x.h) is False


def test_concurrent_ops_that_are_fine() -> None:
    x = H()
    x.w(0, "a", 0, 10)
    x.w(1, "b", 0, 10)
    x.r(2, "b", 1, 2)
    x.r(2, "a", 3, 4)  # b then a: both writes still running
    x.r(3, "a", 5, 6)
    x.r(3, "a", 11, 12)
    assert lin(x.h) is True


def test_touching_intervals_count_as_concurrent() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.r(1, None, 1, 2)  # starts exactly when the write returns
    assert lin(x.h) is True


def test_two_readers_disagree_on_the_order() -> None:
    x = H()
    x.w(0, "a", 0, 10)
    x.w(1, "b", 0, 10)
    x.r(2, "a", 1, 2)
    x.r(2, "b", 3, 4)
    x.r(3, "b", 1, 2)
    x.r(3, "a", 3, 4)
    assert obvious_violation(x.h.ops) is None  # only the search can tell
    assert lin(x.h) is False
    assert len(check(x.h).keys["k"].counterexample or []) == 6


def test_swaps() -> None:
    x = H()
    x.s(0, "a", None, 0, 1)
    x.s(1, "b", "a", 2, 3)
    x.r(2, "b", 4, 5)
    assert lin(x.h) is True
    y = H()  # two swaps cannot both take the same old value
    y.w(0, "a", 0, 1)
    y.s(1, "b", "a", 2, 10)
    y.s(2, "c", "a", 2, 10)
    assert lin(y.h) is False
    z = H()  # a swap returning a stale old value
    z.w(0, "a", 0, 1)
    z.w(0, "b", 2, 3)
    z.s(1, "c", "a", 4, 5)
    assert lin(z.h) is False
    q = H()  # concurrent swaps chain in some order
    q.s(0, "a", "b", 0, 10)
    q.s(1, "b", None, 0, 10)
    q.r(2, "a", 11, 12)
    assert lin(q.h) is True


def test_deletes() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.d(1, 2, 3)
    x.r(2, None, 4, 5)
    assert lin(x.h) is True
    y = H()
    y.w(0, "a", 0, 1)
    y.d(1, 2, 3)
    y.r(2, "a", 4, 5)  # the delete was ignored
    assert lin(y.h) is False
    z = H()
    z.w(0, "a", 0, 1)
    z.r(2, None, 2, 3)  # nothing deleted it
    assert lin(z.h) is False
    q = H()
    q.w(0, "a", 0, 1)
    q.d(1, 0.5, 10)  # a concurrent delete may come after the write
    q.r(2, None, 2, 3)
    q.r(2, None, 4, 5)
    assert lin(q.h) is True


def test_delete_touching_a_read_of_none() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.r(1, None, 2, 3)
    x.d(2, 3, 4)  # invoked the instant the read returned: may come first
    assert obvious_violation(x.h.ops) is None
    assert lin(x.h) is True
    y = H()
    y.w(0, "a", 0, 1)
    y.r(1, None, 2, 3)
    y.d(2, 3.5, 4)  # began after the read returned: too late
    assert lin(y.h) is False


def test_repeated_values_may_come_back() -> None:
    x = H()  # "a" is written again after "b": a read of "a" after "b" is not stale
    x.w(0, "a", 0, 1)
    x.w(0, "b", 2, 3)
    x.w(1, "a", 0, 10)
    x.r(2, "a", 4, 5)
    assert obvious_violation(x.h.ops) is None
    assert lin(x.h) is True
    y = H()  # two swaps can both take "a" when "a" is written twice
    y.w(0, "a", 0, 1)
    y.s(1, "b", "a", 2, 3)
    y.w(0, "a", 2, 10)
    y.s(2, "c", "a", 4, 5)
    assert obvious_violation(y.h.ops) is None
    assert lin(y.h) is True
    z = H()  # but a read of a value whose every writer began after it returned still is one
    rd = z.r(1, "a", 0, 1)
    wa1 = z.w(0, "a", 2, 3)
    wa2 = z.w(2, "a", 2, 5)
    assert obvious_violation(z.h.ops) == [rd, wa1, wa2]
    assert lin(z.h) is False
    q = H()  # and a stale read of a value written once, while other values repeat
    wa = q.w(0, "a", 0, 1)
    q.w(0, "b", 2, 3)
    q.w(1, "b", 2, 3)
    rd = q.r(2, "a", 4, 5)
    cex = obvious_violation(q.h.ops) or []
    assert cex[0] is wa and cex[1].value == "b" and cex[2] is rd
    assert lin(q.h) is False


def test_dropping_a_delete_drops_the_reads_of_none_that_touch_it() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    rd = x.r(1, None, 2, 3)
    d = x.d(2, 3, 4)
    assert rd not in checker._without(x.h.ops, {d.id})


def test_failed_ops_are_dropped() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.w(1, "b", 2, 3, outcome=FAILED)
    x.d(1, 3.5, 3.8, outcome=FAILED)
    x.r(2, "a", 4, 5)
    assert lin(x.h) is True


def test_unknown_write_may_or_may_not_show_up() -> None:
    for later_read in ("a", "b"):
        x = H()
        x.w(0, "a", 0, 1)
        x.w(1, "b", 2, 3, outcome=UNKNOWN)
        x.r(2, later_read, 4, 5)
        x.r(2, later_read, 6, 7)
        assert lin(x.h) is True, later_read


def test_unknown_write_can_land_long_after_it_returned() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.w(1, "b", 2, 3, outcome=UNKNOWN)
    x.r(2, "a", 4, 5)
    x.r(2, "b", 100, 101)  # the write was still in flight: fine
    assert lin(x.h) is True
    x.r(2, "a", 102, 103)  # but once seen it cannot vanish
    assert lin(x.h) is False


def test_unknown_write_read_before_its_invocation() -> None:
    x = H()
    x.r(2, "b", 0, 1)
    x.w(1, "b", 2, 3, outcome=UNKNOWN)
    assert lin(x.h) is False


def test_unknown_reads_are_dropped_and_unknown_swaps_are_blind() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.r(1, None, 2, 3, outcome=UNKNOWN)
    x.s(1, "b", None, 4, 5, outcome=UNKNOWN)
    x.r(2, "b", 6, 7)
    assert lin(x.h) is True


def test_unknown_delete() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.d(1, 2, 3, outcome=UNKNOWN)
    x.r(2, "a", 4, 5)
    x.r(2, None, 6, 7)  # applied late
    assert lin(x.h) is True
    x.r(2, "a", 8, 9)  # and a does not come back
    assert lin(x.h) is False


def test_one_unknown_delete_cannot_delete_twice() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.d(1, 1.5, 1.8, outcome=UNKNOWN)
    x.r(2, None, 2, 3)
    x.w(0, "b", 4, 5)
    x.r(2, None, 6, 7)
    assert lin(x.h) is False
    x.d(3, 5.5, 5.6, outcome=UNKNOWN)  # a second one can
    assert lin(x.h) is True


def test_keys_are_independent() -> None:
    x = H()
    x.w(0, "a", 0, 1, key="k1")
    x.r(1, "a", 2, 3, key="k1")
    x.w(0, "b", 0, 1, key="k2")
    x.w(0, "c", 2, 3, key="k2")
    x.r(1, "b", 4, 5, key="k2")
    v = check(x.h)
    assert v.linearizable is False
    assert v.keys["k1"].linearizable is True and v.keys["k2"].linearizable is False
    assert v.violations == ["k2"]
    assert v.to_dict()["keys"]["k2"]["counterexample"]


# -- budget ---------------------------------------------------------------------------


def _hard_history(n_writes: int = 60, seed: int = 1) -> History:
    """Everything concurrent (many orders to try), then two readers that disagree."""
    rng = random.Random(seed)
    x = H()
    for i in range(n_writes):
        x.w(i, f"v{i}", 0, 100)
    for i in range(n_writes):
        x.r(100 + i, f"v{rng.randrange(n_writes)}", 0, 100)
    x.d(500, 101, 102)
    x.w(501, "xa", 103, 110)
    x.w(502, "xb", 103, 110)
    x.r(503, "xa", 104, 105)
    x.r(503, "xb", 106, 107)
    x.r(504, "xb", 104, 105)
    x.r(504, "xa", 106, 107)
    return x.h


def test_budget_gives_unknown_never_true() -> None:
    h = _hard_history()
    t = time.monotonic()
    v = check(h, budget_s=0.3)
    assert time.monotonic() - t < 3.0
    assert v.linearizable is None
    assert v.undecided == ["k"]
    assert check(h, budget_s=30, max_steps=5000).linearizable is None


def test_total_budget_spans_keys() -> None:
    h = _hard_history()
    for op in list(h.ops):
        h.ops.append(
            Op(len(h.ops), op.client, op.kind, "k2", op.value, op.invoke, op.complete, op.outcome, op.result)
        )
    v = check(h, budget_s=0.4)
    assert v.linearizable is None
    assert v.keys["k2"].linearizable is None


# -- generated histories ---------------------------------------------------------------


def simulate(
    specs: list[tuple[int, OpKind, int, int, int, float, str]], keys: int = 2, start: float = 0.0
) -> History:
    """Clients run ops one after another on a correct register; each op takes effect at a
    point inside its interval (an unknown one: at any later time, or never)."""
    h = History(start=start)
    free: dict[int, float] = {}
    effects: list[tuple[float, int, Op]] = []
    for i, (client, kind, key, think, dur, frac, fate) in enumerate(specs):
        t0 = free.get(client, start) + think
        t1 = t0 + dur
        free[client] = t1
        value = f"v{i}" if kind in (W, S) else None
        outcome = {"ok": OK, "failed": FAILED, "unknown": UNKNOWN, "lost": UNKNOWN}[fate]
        op = Op(i, client, kind, f"k{key % keys}", value, t0, t1, outcome, None)
        h.ops.append(op)
        if fate == "ok":
            effects.append((t0 + frac * dur, i, op))
        elif fate == "unknown":
            effects.append((t0 + frac * (dur + 50), i, op))
    state: dict[str, str | None] = {}
    for _, _, op in sorted(effects, key=lambda e: (e[0], e[1])):
        old = state.get(op.key)
        if op.kind == R:
            op.result = old
        elif op.kind == S:
            op.result = old
            state[op.key] = op.value
        elif op.kind == W:
            state[op.key] = op.value
        else:
            state[op.key] = None
        if op.outcome != OK:
            op.result = None
    return h


op_spec = st.tuples(
    st.integers(0, 5),
    st.sampled_from([R, R, W, S, D]),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 8),
    st.floats(0, 1),
    st.sampled_from(["ok"] * 8 + ["failed", "unknown", "lost"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_spec, min_size=1, max_size=80))
def test_histories_of_a_correct_register_are_linearizable(specs: list) -> None:
    h = simulate(specs)
    assert lin(h) is True


def _stale_read_at_end(h: History, key: str = "k0") -> list[Op]:
    end = max((op.complete or op.invoke for op in h.ops), default=0.0) + 200  # unknown ops have landed
    n = len(h.ops)
    new = [
        Op(n, 90, W, key, "old", end, end + 1, OK, None),
        Op(n + 1, 90, W, key, "new", end + 2, end + 3, OK, None),
        Op(n + 2, 91, R, key, None, end + 4, end + 5, OK, "old"),
    ]
    h.ops += new
    return new


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_spec, min_size=0, max_size=80), st.data())
def test_injected_stale_read_is_caught(specs: list, data: st.DataObject) -> None:
    h = simulate(specs)
    reads = [op for op in h.ops if op.kind == R and op.outcome == OK]
    if reads and data.draw(st.booleans()):
        # make an existing read stale: give it the value of a write overwritten before it began
        rd = data.draw(st.sampled_from(reads))
        old = [
            w
            for w in h.ops
            if w.key == rd.key and w.kind in (W, S) and w.outcome == OK and w.complete is not None
            if any(
                m.key == rd.key
                and m.kind != R
                and m.outcome == OK
                and m.invoke > w.complete
                and m.complete is not None
                and m.complete < rd.invoke
                for m in h.ops
            )
        ]
        if old:
            rd.result = data.draw(st.sampled_from(old)).value
            assert lin(h) is False
            return
    _stale_read_at_end(h)
    assert lin(h) is False


def test_counterexample_is_small_in_a_long_history() -> None:
    rng = random.Random(5)
    specs = [
        (
            rng.randrange(6),
            rng.choice([R, R, W, S, D]),
            0,
            rng.randrange(3),
            rng.randrange(1, 8),
            rng.random(),
            "ok",
        )
        for _ in range(200)
    ]
    h = simulate(specs, keys=1)
    assert check(h).linearizable is True
    injected = _stale_read_at_end(h)
    v = check(h)
    cex = v.keys["k0"].counterexample or []
    assert v.linearizable is False and 1 <= len(cex) <= 4
    assert injected[2] in cex


def test_counterexample_found_by_the_search_is_small() -> None:
    rng = random.Random(6)
    specs = [
        (
            rng.randrange(6),
            rng.choice([R, R, W, S, D]),
            0,
            rng.randrange(3),
            rng.randrange(1, 8),
            rng.random(),
            "ok",
        )
        for _ in range(200)
    ]
    h = simulate(specs, keys=1)
    t = max(op.complete or 0.0 for op in h.ops) + 10
    x = H()
    x.h = h
    x.d(400, t, t + 1, key="k0")
    block = [
        x.w(401, "xa", t + 2, t + 9, key="k0"),
        x.w(402, "xb", t + 2, t + 9, key="k0"),
        x.r(403, "xa", t + 3, t + 4, key="k0"),
        x.r(403, "xb", t + 5, t + 6, key="k0"),
        x.r(404, "xb", t + 3, t + 4, key="k0"),
        x.r(404, "xa", t + 5, t + 6, key="k0"),
    ]
    rest = simulate(specs, keys=1, start=t + 20)  # a second stretch after it
    for op in rest.ops:
        op.id = len(h.ops)
        op.value = None if op.value is None else "z" + op.value
        op.result = None if op.result is None else "z" + op.result
        h.ops.append(op)
    x.d(405, t + 10, t + 11, key="k0")
    assert obvious_violation(h.ops) is None
    v = check(h)
    assert v.linearizable is False
    assert sorted(op.id for op in v.keys["k0"].counterexample or []) == sorted(op.id for op in block)


def test_threaded_recording_of_a_locked_register() -> None:
    h = History()
    lock = threading.Lock()
    reg: dict[str, str | None] = {}
    counter = iter(range(10**6))

    def client(c: int) -> None:
        rng = random.Random(c)
        for _ in range(60):
            kind = rng.choice([R, W, S, D])
            key = f"k{rng.randrange(2)}"
            value = f"c{c}-{next(counter)}" if kind in (W, S) else None
            op = h.invoke(c, kind, key, value, node="n1")
            time.sleep(rng.random() * 0.0005)
            with lock:
                old = reg.get(key)
                if kind in (W, S):
                    reg[key] = value
                elif kind == D:
                    reg[key] = None
            time.sleep(rng.random() * 0.0005)
            h.complete(op, OK, old if kind in (R, S) else None)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h.finish()
    assert len(h.ops) == 360 and all(op.complete is not None for op in h.ops)
    assert lin(h) is True
    final = {k: reg.get(k) for k in h.keys()}
    assert lost_writes(h, final) == []


def test_a_few_thousand_ops_with_ten_clients_in_seconds() -> None:
    rng = random.Random(11)
    specs = [
        (
            rng.randrange(10),
            rng.choice([R, R, W, S, D]),
            0,
            0,
            rng.randrange(1, 40),
            rng.random(),
            rng.choice(["ok"] * 18 + ["unknown", "failed"]),
        )
        for _ in range(3000)
    ]
    h = simulate(specs, keys=1)
    t = time.monotonic()
    v = check(h, budget_s=60)
    assert v.linearizable is True
    assert time.monotonic() - t < 20  # typically well under a second; generous for a loaded CI box


# -- a brute-force reference on small histories ---------------------------------------


def brute_force(ops: list[Op]) -> bool:
    """Try every order (optional ops in or out) that respects real time: the definition."""
    ops = [op for op in ops if op.outcome != FAILED and not (op.kind == R and op.outcome != OK)]
    required = [op.outcome == OK and op.complete is not None for op in ops]

    def go(done: frozenset[int], skipped: frozenset[int], state: str | None) -> bool:
        if all(i in done for i in range(len(ops)) if required[i]):
            return True
        for i, op in enumerate(ops):
            if i in done or i in skipped:
                continue
            if any(
                required[j] and j not in done and ops[j].complete < op.invoke  # type: ignore[operator]
                for j in range(len(ops))
            ):
                continue
            known = op.outcome == OK
            if op.kind == R or (op.kind == S and known):
                if op.result != state:
                    continue
            new = state if op.kind == R else (None if op.kind == D else op.value)
            if go(done | {i}, skipped, new):
                return True
        for i in range(len(ops)):  # or leave an optional op out for good
            if not required[i] and i not in done and i not in skipped:
                return go(done, skipped | {i}, state)
        return False

    return go(frozenset(), frozenset(), None)


small_op = st.tuples(
    st.sampled_from([R, W, S, D]),
    st.integers(0, 8),
    st.integers(0, 5),
    st.sampled_from([OK, OK, OK, UNKNOWN, FAILED]),
    st.integers(0, 7),
)


@settings(max_examples=800, deadline=None)
@given(st.lists(small_op, min_size=1, max_size=8), st.booleans())
# a delete invoked the instant a read of None returns may precede it (touching = concurrent)
@example(
    [
        (R, 0, 0, OK, 0),
        (R, 0, 0, OK, 0),
        (R, 0, 0, OK, 0),
        (R, 1, 0, OK, 0),
        (W, 0, 0, OK, 0),
        (D, 1, 0, OK, 0),
    ],
    False,
)
def test_checker_agrees_with_brute_force(specs: list, unique: bool) -> None:
    x = H()
    n = len(specs)
    for i, (kind, t0, dur, outcome, pick) in enumerate(specs):
        value = (f"v{i}" if unique else f"v{pick % 3}") if kind in (W, S) else None
        written = [f"v{j}" if unique else f"v{specs[j][4] % 3}" for j in range(n) if specs[j][0] in (W, S)]
        pool: list[str | None] = [None, *written]
        result = pool[pick % len(pool)] if kind in (R, S) and outcome == OK else None
        x.op(kind, i, float(t0), float(t0 + dur), value=value, result=result, outcome=outcome)
    expected = brute_force(x.h.ops)
    assert lin(x.h) is expected
    if obvious_violation(x.h.ops) is not None:  # repeated values or not: never a false alarm
        assert expected is False


# -- lost writes ---------------------------------------------------------------------


def test_lost_writes() -> None:
    x = H()
    w1 = x.w(0, "a", 0, 1)
    assert lost_writes(x.h, {"k": None}) == [w1]
    assert lost_writes(x.h, {"k": "a"}) == []
    assert lost_writes(x.h, {}) == []  # a key without a final read is not judged
    x.r(1, "a", 2, 3)
    assert lost_writes(x.h, {"k": None}) == []  # observed


def test_lost_writes_overwritten_or_not() -> None:
    x = H()
    x.w(0, "a", 0, 1)
    x.w(0, "b", 2, 3)
    assert lost_writes(x.h, {"k": "b"}) == []  # a was overwritten by b
    y = H()
    y.w(0, "a", 0, 5)
    y.w(1, "b", 1, 2)  # concurrent: may be ordered after a
    assert lost_writes(y.h, {"k": "b"}) == []
    z = H()
    z.w(1, "b", 0, 1)
    wa = z.w(0, "a", 3, 4)  # b was done before a began: a must win
    assert lost_writes(z.h, {"k": "b"}) == [wa]


def test_lost_writes_failed_unknown_swap() -> None:
    x = H()
    wa = x.w(0, "a", 0, 1)
    x.w(1, "b", 2, 3, outcome=FAILED)  # never applied: does not overwrite
    assert lost_writes(x.h, {"k": None}) == [wa]
    x.d(1, 4, 5, outcome=UNKNOWN)  # may have deleted it
    assert lost_writes(x.h, {"k": None}) == []
    y = H()
    y.w(0, "a", 0, 1)
    sb = y.s(1, "b", "a", 2, 3)  # observed a; b itself is never seen
    assert lost_writes(y.h, {"k": None}) == [sb]
    assert lost_writes(y.h, {"k": "b"}) == []
    z = H()
    z.w(0, "a", 0, 1, outcome=UNKNOWN)  # not acknowledged: never "lost"
    assert lost_writes(z.h, {"k": None}) == []


# -- availability -------------------------------------------------------------------


def test_availability() -> None:
    x = H()
    x.h.start = 0.0
    x.w(0, "a", 0.00, 0.05)
    x.r(1, "a", 0.10, 0.15)
    x.w(0, "b", 0.20, 0.25)
    x.w(0, "c", 0.30, 1.00, outcome=UNKNOWN)
    x.w(1, "d", 0.40, 0.50, outcome=FAILED)
    x.w(0, "e", 1.10, 1.15)
    x.r(1, None, 1.2, None, outcome=UNKNOWN)
    x.h.faults = [Fault("kill-leader", 0.3, 0.9, "n1"), Fault("pause", 1.3, None)]
    x.h.end = 1.5
    a = availability(x.h, bucket_s=0.1)
    assert len(a["buckets"]) == 15
    assert sum(b["ok"] for b in a["buckets"]) == 4
    assert sum(b["failed"] for b in a["buckets"]) == 1
    assert sum(b["unknown"] for b in a["buckets"]) == 2
    assert a["buckets"][0]["ok"] == 1 and a["buckets"][0]["p50_ms"] == pytest.approx(50)
    assert a["max_unavailable_ms"] == pytest.approx(900)  # 0.25 -> 1.15
    assert a["max_unavailable_from_s"] == pytest.approx(0.25)
    f1, f2 = a["faults"]
    assert f1["first_write_after_start_ms"] == pytest.approx(850)
    assert f1["first_write_after_end_ms"] == pytest.approx(250)
    assert f2["first_write_after_start_ms"] is None and f2["end_s"] is None
    assert a["ops"] == {"ok": 4, "failed": 1, "unknown": 2}


def test_availability_without_writes() -> None:
    h = History(start=0.0, end=2.0)
    a = availability(h)
    assert a["max_unavailable_ms"] == pytest.approx(2000)
    assert a["faults"] == [] and len(a["buckets"]) == 20


# -- the history record ---------------------------------------------------------------


def test_history_round_trips(tmp_path) -> None:
    h = simulate([(0, W, 0, 0, 2, 0.5, "ok"), (1, R, 0, 0, 3, 0.5, "ok"), (1, S, 1, 0, 2, 0.5, "unknown")])
    h.faults.append(Fault("partition", 0.5, 1.5, "n1 | n2,n3"))
    h.finish()
    for text in (h.to_json(), h.to_jsonl()):
        back = History.from_json(text)
        assert back.ops == h.ops and back.faults == h.faults
        assert back.start == h.start and back.end == h.end
    p = h.save(tmp_path / "h.jsonl")
    assert History.load(p).ops == h.ops
    assert History.load(h.save(tmp_path / "h.json")).faults == h.faults


def test_history_recording_helpers() -> None:
    h = History()
    i = h.invoke(3, "write", "k", "v1", node="n2")
    f = h.fault_start("kill", "n1")
    h.complete(i, "ok")
    h.fault_end(f)
    j = h.invoke(4, OpKind.READ, "k")
    h.complete(j, Outcome.UNKNOWN, error="timeout")
    h.finish()
    assert h.ops[i].kind == W and h.ops[i].outcome == OK and h.ops[i].node == "n2"
    assert h.ops[j].error == "timeout" and h.ops[j].latency is not None
    assert h.faults[0].end is not None and h.duration >= 0
    assert h.counts() == {"ok": 1, "failed": 0, "unknown": 1}
