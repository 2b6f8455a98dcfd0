"""Judging a recorded history: linearizability, lost writes, availability.

Linearizability is checked per key (P-compositionality: a history of independent
registers is linearizable iff each key's sub-history is), with the Wing & Gong search
as refined by Lowe and used by Porcupine: walk a linked list of call/return entries in
time order, linearize a pending call whenever the model allows it ("just in time"),
backtrack when a return is reached whose call is not yet linearized, and memoize the
(linearized set, register value) pairs already explored.

The model is a register per key: a read returns the value (None when absent), a write
sets it, a delete sets None, a swap returns the old value and sets the new one.

Outcomes: FAILED ops were never applied and are dropped. UNKNOWN ops may take effect
at any time after their invocation, or never: they get return time +infinity and are
optional (the search succeeds once every OK op is linearized). An unknown read tells
nothing and is dropped; an unknown swap is a blind write (its old value is unknown);
an unknown write or swap whose value nobody observed is dropped too, since taking it
out of any linearization leaves the rest valid (no one reads its value).

A search that runs past its budget answers None ("unknown"), never True.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from typing import Any

from kvstore.drills.history import MUTATIONS, History, Op, OpKind, Outcome

DEFAULT_MAX_STEPS = 20_000_000  # per key
_CHECK_CLOCK_EVERY = 2048

_READ, _WRITE, _SWAP = 0, 1, 2


@dataclass
class KeyVerdict:
    key: str
    linearizable: bool | None
    ops: int  # operations that took part in the search
    explored: int  # search steps
    counterexample: list[Op] | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "linearizable": self.linearizable,
            "ops": self.ops,
            "explored": self.explored,
            "elapsed_s": round(self.elapsed_s, 6),
            "counterexample": None
            if self.counterexample is None
            else [op.to_dict() for op in self.counterexample],
        }


@dataclass
class Verdict:
    linearizable: bool | None
    keys: dict[str, KeyVerdict]
    elapsed_s: float
    ops: int = 0
    budget_s: float = 0.0
    violations: list[str] = field(default_factory=list)  # keys found non-linearizable
    undecided: list[str] = field(default_factory=list)  # keys whose search ran out of budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "linearizable": self.linearizable,
            "elapsed_s": round(self.elapsed_s, 6),
            "ops": self.ops,
            "budget_s": self.budget_s,
            "violations": self.violations,
            "undecided": self.undecided,
            "keys": {k: kv.to_dict() for k, kv in self.keys.items()},
        }


class _OutOfBudget(Exception):
    pass


# -- the search ---------------------------------------------------------------


def _prepare(ops: list[Op]) -> list[Op]:
    """The ops of one key that take part in the search (see the module docstring)."""
    observed = {
        op.result
        for op in ops
        if op.outcome == Outcome.OK and op.kind in (OpKind.READ, OpKind.SWAP) and op.result is not None
    }
    keep = []
    for op in ops:
        if op.outcome == Outcome.FAILED:
            continue
        if op.outcome == Outcome.UNKNOWN:
            if op.kind == OpKind.READ:
                continue
            if op.kind in (OpKind.WRITE, OpKind.SWAP) and op.value not in observed:
                continue
        keep.append(op)
    return keep


@dataclass
class _Result:
    ok: bool
    steps: int
    frontier: float = -math.inf  # latest return time that forced a backtrack


def _search(ops: list[Op], deadline: float, max_steps: int) -> _Result:
    """Is this single-key history linearizable? Raises _OutOfBudget when past the budget.

    Besides the memo, a few rules cut the search; each keeps at least one valid
    linearization when there is one:
    - a read that can go now goes now, and no other move is tried from there: reads
      leave the register alone, and everything that had to precede it already has;
    - values are unique, so a value other than None never comes back once overwritten:
      overwriting it while a required reader of it is pending is a dead end;
    - an optional op that leaves the register as it was can be left out; so can an
      optional mutation not followed at once by a reader of its value (what comes next
      overwrites it blindly): after one, only a read or a swap may come;
    - optional deletes are interchangeable (same effect, no return time): they go in
      invocation order, only as a last resort before a backtrack, and a configuration
      reached with fewer of them used makes the same one with more used redundant.
    """
    n = len(ops)
    if n == 0:
        return _Result(True, 0)
    # Entries: 0 = head sentinel, 1..2n = calls and returns in time order, 2n+1 = tail.
    timed: list[tuple[float, int, int]] = []  # (time, 0 for call / 1 for return, op index)
    for i, op in enumerate(ops):
        optional = op.outcome != Outcome.OK or op.complete is None
        timed.append((op.invoke, 0, i))
        timed.append((math.inf if optional or op.complete is None else op.complete, 1, i))
    timed.sort()  # at equal times calls first: touching intervals count as concurrent
    size = 2 * n + 2
    tail = size - 1
    nxt = list(range(1, size)) + [tail]
    prv = [0] + list(range(0, size - 1))
    opidx = [-1] * size
    when = [0.0] * size
    match = [-1] * size  # call entry -> its return entry; -1 for return entries
    call_of = [0] * n
    for pos, (t, is_ret, i) in enumerate(timed, start=1):
        opidx[pos] = i
        when[pos] = t
        if is_ret:
            match[call_of[i]] = pos
        else:
            call_of[i] = pos

    kind: list[int] = []
    value: list[str | None] = []
    result: list[str | None] = []
    is_req: list[bool] = []
    for op in ops:
        known = op.outcome == Outcome.OK
        if op.kind == OpKind.READ:
            kind.append(_READ)
        elif op.kind == OpKind.SWAP and known:
            kind.append(_SWAP)
        else:
            kind.append(_WRITE)  # blind: write, delete, swap whose old value is unknown
        value.append(None if op.kind == OpKind.DELETE else op.value)
        result.append(op.result)
        is_req.append(known and op.complete is not None)
    required = sum(is_req)
    pending_readers: dict[str | None, int] = {}
    reads_state = [False] * n
    written = [v for v in value if v is not None]
    for i in range(n if len(set(written)) == len(written) else 0):  # only sound for unique values
        if is_req[i] and kind[i] != _WRITE and result[i] is not None:
            pending_readers[result[i]] = pending_readers.get(result[i], 0) + 1
            reads_state[i] = True
    is_opt_delete = [not is_req[i] and ops[i].kind == OpKind.DELETE for i in range(n)]
    opt_deletes = sorted((i for i in range(n) if is_opt_delete[i]), key=lambda i: call_of[i]) + [-1]
    used = 0  # optional deletes linearized: always opt_deletes[:used]
    for d in opt_deletes[:-1]:  # they never go by the scan: out of the list, which stays short
        for e in (call_of[d], match[call_of[d]]):
            nxt[prv[e]] = nxt[e]
            prv[nxt[e]] = prv[e]

    flag_bit = 1 << n  # in the memo key: "the last op was an optional mutation"
    state: str | None = None
    must_read = False
    linearized = 0  # bitset over op indices (optional deletes left out: `used` counts them)
    seen: dict[tuple[int, str | None], int] = {}  # configuration -> least `used` it was reached with
    stack: list[tuple[int, str | None, bool, bool]] = []  # (call entry, state, must_read, last resort)
    steps = 0
    frontier = -math.inf
    entry = nxt[0]
    while required:
        steps += 1
        if steps % _CHECK_CLOCK_EVERY == 0 and (steps > max_steps or time.monotonic() > deadline):
            raise _OutOfBudget(steps)
        ret = match[entry]
        if ret >= 0:  # a call entry: try to linearize it now
            i = opidx[entry]
            k = kind[i]
            if k == _WRITE:
                new_state = value[i]
                if must_read or is_opt_delete[i] or (new_state == state and not is_req[i]):
                    entry = nxt[entry]
                    continue
            elif result[i] == state:
                new_state = state if k == _READ else value[i]
            else:
                entry = nxt[entry]
                continue
            if k != _READ and state is not None and pending_readers.get(state, 0) > reads_state[i]:
                entry = nxt[entry]
                continue
            new_must_read = k == _WRITE and not is_req[i]
            bits = linearized | (1 << i)
            memo = (bits | flag_bit if new_must_read else bits, new_state)
            if seen.get(memo, n + 1) > used:
                seen[memo] = used
                stack.append((entry, state, must_read, k == _READ))
                state = new_state
                must_read = new_must_read
                linearized = bits
                required -= is_req[i]
                if reads_state[i]:
                    pending_readers[result[i]] -= 1
                nxt[prv[entry]] = nxt[entry]  # lift the call and its return out of the list
                prv[nxt[entry]] = prv[entry]
                nxt[prv[ret]] = nxt[ret]
                prv[nxt[ret]] = prv[ret]
                entry = nxt[0]
                continue
            if k != _READ:
                entry = nxt[entry]
                continue
            # an available read already explored from here: this configuration fails
        else:  # a return whose call is not linearized yet
            if when[entry] > frontier:
                frontier = when[entry]
            d = opt_deletes[used]
            if (
                d >= 0
                and call_of[d] < entry
                and not must_read
                and state is not None
                and not pending_readers.get(state)
            ):
                memo = (linearized | flag_bit, None)
                if seen.get(memo, n + 1) > used + 1:  # last resort: an optional delete
                    seen[memo] = used + 1
                    stack.append((call_of[d], state, must_read, True))
                    state = None
                    must_read = True
                    used += 1
                    entry = nxt[0]
                    continue
        last_resort = True
        while last_resort:  # undo the last move; if it was the last resort, its parent fails too
            if not stack:
                return _Result(False, steps, frontier)
            entry, state, must_read, last_resort = stack.pop()
            i = opidx[entry]
            ret = match[entry]
            if is_opt_delete[i]:
                used -= 1
                continue
            linearized &= ~(1 << i)
            required += is_req[i]
            if reads_state[i]:
                pending_readers[result[i]] += 1
            nxt[prv[ret]] = ret
            prv[nxt[ret]] = ret
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
        entry = nxt[entry]
    return _Result(True, steps)


def _check_ops(ops: list[Op], deadline: float, max_steps: int) -> tuple[bool | None, int, float]:
    """(verdict, steps, frontier) for one key's ops; verdict None when past the budget."""
    try:
        r = _search(_prepare(ops), deadline, max_steps)
    except _OutOfBudget as e:
        return None, int(e.args[0]), math.inf
    return r.ok, r.steps, r.frontier


# -- violations that need no search ------------------------------------------------


def _clears(op: Op) -> bool:
    """A mutation that leaves the key absent: a delete (or a write of None)."""
    return op.kind == OpKind.DELETE or (op.kind in MUTATIONS and op.value is None)


def obvious_violation(ops: list[Op]) -> list[Op] | None:
    """A violation of one key's history that reads-from alone proves, or None.

    Five patterns are violations whatever the order of the rest (each returns the few
    ops that show it). Touching intervals count as concurrent throughout, as in the
    search: `a` precedes `b` in real time only when `a` returned strictly before `b` began.
    - a read of a value no one wrote (or whose every write failed);
    - a read of a value all of whose writers began only after the read returned;
    - a read of None after a write returned with no delete that could come between;
    and, only when the value read has a single writer (values need not be unique
    across the key: this is checked per value), since then that value never comes back
    once overwritten:
    - a stale read: its writer returned, then another write, delete or swap ran
      entirely, then the read began;
    - two swaps that both took that same old value.
    """
    ops = [op for op in ops if op.outcome != Outcome.FAILED]
    writers: dict[str, list[Op]] = {}
    for op in ops:
        if op.kind in (OpKind.WRITE, OpKind.SWAP) and op.value is not None:
            writers.setdefault(op.value, []).append(op)
    readers = sorted(
        (
            op
            for op in ops
            if op.outcome == Outcome.OK and op.complete is not None and op.kind in (OpKind.READ, OpKind.SWAP)
        ),
        key=lambda op: (op.invoke, op.id),
    )
    # required mutations by invocation, with the earliest return among those invoked later
    muts = sorted(
        (op for op in ops if op.kind in MUTATIONS and op.outcome == Outcome.OK and op.complete is not None),
        key=lambda op: op.invoke,
    )
    m_invoke = [m.invoke for m in muts]
    suffix_min: list[Op | None] = [None] * (len(muts) + 1)
    for j in range(len(muts) - 1, -1, -1):
        nxt_best = suffix_min[j + 1]
        suffix_min[j] = muts[j] if nxt_best is None or muts[j].complete < nxt_best.complete else nxt_best  # type: ignore[operator]
    # required writes of a value by return time, with the latest invocation so far
    sets = sorted((m for m in muts if not _clears(m)), key=lambda m: m.complete or 0.0)
    s_complete = [m.complete or 0.0 for m in sets]
    prefix_latest: list[Op] = []
    for m in sets:
        prefix_latest.append(
            m if not prefix_latest or m.invoke > prefix_latest[-1].invoke else prefix_latest[-1]
        )
    # deletes (required or not) by invocation, with the latest (possible) return so far
    dels = sorted((op for op in ops if _clears(op)), key=lambda op: op.invoke)
    d_invoke = [d.invoke for d in dels]
    d_latest: list[float] = []
    for d in dels:
        end = math.inf if d.outcome != Outcome.OK or d.complete is None else d.complete
        d_latest.append(max(end, d_latest[-1]) if d_latest else end)

    took: dict[str, Op] = {}
    for r in readers:
        assert r.complete is not None
        if r.result is not None:
            ws = writers.get(r.result)
            if not ws:
                return [r]
            if all(w.invoke > r.complete for w in ws):
                return [r, *ws]
            if len(ws) > 1:  # the value may come back: the patterns below do not hold
                continue
            w = ws[0]
            if w.outcome == Outcome.OK and w.complete is not None:
                later = suffix_min[bisect.bisect_right(m_invoke, w.complete)]
                if later is not None and later.complete is not None and later.complete < r.invoke:
                    return [w, later, r]
            if r.kind == OpKind.SWAP:
                if r.result in took:
                    return [w, took[r.result], r]
                took[r.result] = r
        else:
            j = bisect.bisect_left(s_complete, r.invoke)  # the writes that returned before r began
            if j == 0:
                continue
            w = prefix_latest[j - 1]  # the latest-starting of them: a delete must follow it
            k = bisect.bisect_right(d_invoke, r.complete)  # the deletes that began by r's return
            if k == 0 or d_latest[k - 1] < w.invoke:
                return [w, r]
    return None


# -- counterexample minimization ------------------------------------------------


def _end(op: Op) -> float:
    return math.inf if op.complete is None else op.complete


def _without(ops: list[Op], drop: set[int]) -> list[Op]:
    """`ops` minus `drop` and whatever read from a dropped op.

    Keeping every remaining read's possible sources (every writer of a value: dropping
    one drops all its readers; every delete that could precede a read of None, touching
    intervals included) makes a violation of the subset a violation of the whole
    history: a linearization of the whole, restricted to the subset, would linearize
    the subset.
    """
    drop = set(drop)
    readers: dict[str, list[Op]] = {}
    none_readers: list[Op] = []  # by return time, latest last
    for op in ops:
        if op.outcome == Outcome.OK and op.kind in (OpKind.READ, OpKind.SWAP):
            if op.result is None:
                none_readers.append(op)
            else:
                readers.setdefault(op.result, []).append(op)
    none_readers.sort(key=_end)
    queue = [op for op in ops if op.id in drop]
    while queue:
        gone = queue.pop()
        if gone.kind in (OpKind.WRITE, OpKind.SWAP) and gone.value is not None:
            for r in readers.pop(gone.value, []):
                if r.id not in drop:
                    drop.add(r.id)
                    queue.append(r)
        elif _clears(gone):  # every read of None that could follow it (touching counts)
            while none_readers and _end(none_readers[-1]) >= gone.invoke:
                r = none_readers.pop()
                if r.id not in drop:
                    drop.add(r.id)
                    queue.append(r)
    return [op for op in ops if op.id not in drop]


def _with_sources(ops: list[Op], keep: set[int]) -> list[Op]:
    """The closed subset around `keep`: the writers of the values kept ops read are added,
    then whatever lost its possible sources is dropped."""
    writers: dict[str, list[Op]] = {}
    for op in ops:
        if op.kind in (OpKind.WRITE, OpKind.SWAP) and op.value is not None:
            writers.setdefault(op.value, []).append(op)
    keep = set(keep)
    todo = [op for op in ops if op.id in keep]
    while todo:  # a swap added as a writer reads too
        op = todo.pop()
        if op.kind not in (OpKind.READ, OpKind.SWAP) or op.result is None:
            continue
        for w in writers.get(op.result, []):
            if w.id not in keep:
                keep.add(w.id)
                todo.append(w)
    return _without(ops, {op.id for op in ops} - keep)


def _scan_windows(
    ops: list[Op], deadline: float, max_steps: int, size: int = 200
) -> tuple[list[Op] | None, int]:
    """Look for a failing closed subset among overlapping windows of consecutive ops.

    Finds violations the whole search could not decide in time; proves nothing else.
    """
    ops = sorted(_prepare(ops), key=lambda op: (op.invoke, op.id))
    steps = 0
    for start in range(0, max(1, len(ops) - size // 2), size // 2):
        if time.monotonic() >= deadline:
            break
        cand = _with_sources(ops, {op.id for op in ops[start : start + size]})
        ok, n, _ = _check_ops(cand, deadline, max_steps)
        steps += n
        if ok is False:
            return cand, steps
    return None, steps


def _window(ops: list[Op], frontier: float, deadline: float, max_steps: int) -> list[Op]:
    """A failing subset around the point where the search got stuck: the ops near it
    (on both sides: the pruning looks ahead to pending readers), plus the writers of the
    values they read; widened until it fails."""
    lat = sorted(
        op.complete - op.invoke for op in ops if op.complete is not None and op.outcome == Outcome.OK
    )
    width = 4 * (lat[len(lat) // 2] if lat else 0.0) or 1e-3
    while time.monotonic() < deadline:
        keep = {
            op.id
            for op in ops
            if op.invoke <= frontier + width
            and (op.complete is None or op.outcome != Outcome.OK or op.complete >= frontier - width)
        }
        if len(keep) >= len(ops):
            break
        cand = _with_sources(ops, keep)
        if _check_ops(cand, deadline, max_steps)[0] is False:
            return cand
        width *= 4
    return ops


def minimize(
    ops: list[Op], deadline: float, max_steps: int = 200_000, frontier: float | None = None
) -> list[Op]:
    """A small subset of a non-linearizable single-key history that is still not linearizable.

    Starts from a window around `frontier` (where the search got stuck), then delta
    debugging: drop chunks (halving their size) while the rest still fails. Stops at the
    deadline with the smallest failing subset found so far.
    """
    cur = _prepare(ops)
    if frontier is not None and frontier < math.inf:
        cur = _window(cur, frontier, deadline, max_steps)
    chunk = max(1, len(cur) // 2)
    while time.monotonic() < deadline:
        removed = False
        i = 0
        while i < len(cur) and time.monotonic() < deadline:
            cand = _without(cur, {op.id for op in cur[i : i + chunk]})
            if len(cand) < len(cur) and _check_ops(cand, deadline, max_steps)[0] is False:
                cur = cand
                removed = True
            else:
                i += chunk
        if not removed:
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
        else:
            chunk = max(1, min(chunk, len(cur) // 2))
    return sorted(cur, key=lambda op: (op.invoke, op.id))


# -- the public checks ------------------------------------------------------------


def check(
    history: History,
    *,
    budget_s: float = 10.0,
    key_budget_s: float | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    minimize_s: float = 2.0,
) -> Verdict:
    """Is the whole history linearizable? True / False / None (out of budget).

    `budget_s` bounds the whole search, `key_budget_s` (default: all of it) and
    `max_steps` each key's; each violation's counterexample is then shrunk for at most
    `minimize_s` seconds.
    """
    t0 = time.monotonic()
    total_deadline = t0 + budget_s
    by_key: dict[str, list[Op]] = {}
    for op in history.ops:
        by_key.setdefault(op.key, []).append(op)
    keys: dict[str, KeyVerdict] = {}
    frontiers: dict[str, float] = {}
    for key in sorted(by_key):
        ops = by_key[key]
        start = time.monotonic()
        n = len(_prepare(ops))
        if start >= total_deadline:
            keys[key] = KeyVerdict(key, None, n, 0)
            continue
        cex = obvious_violation(ops)
        if cex is not None:
            keys[key] = KeyVerdict(key, False, n, 0, sorted(cex, key=lambda op: (op.invoke, op.id)))
            continue
        deadline = total_deadline if key_budget_s is None else min(total_deadline, start + key_budget_s)
        # the whole search gets most of the time; if it cannot decide, windows may still
        # show a violation
        ok, steps, frontiers[key] = _check_ops(ops, start + 0.7 * (deadline - start), max_steps)
        cex = None
        if ok is None:
            cex, more = _scan_windows(ops, deadline, max_steps)
            steps += more
            if cex is not None:
                ok, frontiers[key] = False, math.inf
        keys[key] = KeyVerdict(key, ok, n, steps, cex, elapsed_s=time.monotonic() - start)
    violations = [k for k, kv in keys.items() if kv.linearizable is False]
    undecided = [k for k, kv in keys.items() if kv.linearizable is None]
    for k in violations:
        kv = keys[k]
        if kv.explored:  # found by the search: shrink what it saw
            kv.counterexample = minimize(
                kv.counterexample or by_key[k], time.monotonic() + minimize_s, frontier=frontiers[k]
            )
    overall: bool | None = False if violations else (None if undecided else True)
    return Verdict(
        overall,
        keys,
        time.monotonic() - t0,
        ops=len(history.ops),
        budget_s=budget_s,
        violations=violations,
        undecided=undecided,
    )


def lost_writes(history: History, final_reads: dict[str, str | None]) -> list[Op]:
    """Acknowledged writes that vanished.

    `final_reads` holds a linearizable read of each key taken after the faults healed;
    it shows the last mutation of the key. An OK write or swap is lost when its value
    was never observed (no read returned it, no swap returned it as the old value, the
    final read does not show it) and that last mutation cannot have been ordered after
    it: the last mutation is the unique writer of the final value, or, when the final
    value is None, some delete; "can be ordered after" means it had not completed when
    this write was invoked (or its outcome is unknown). Counting only ops invoked after
    this write completed would flag a write that a concurrent one overwrote; counting any
    later op would excuse a write whose key ends with an older value. Keys missing from
    `final_reads` are not judged.
    """
    observed: dict[str, set[str]] = {}
    mutations: dict[str, list[Op]] = {}
    for op in history.ops:
        if op.outcome == Outcome.OK and op.kind in (OpKind.READ, OpKind.SWAP) and op.result is not None:
            observed.setdefault(op.key, set()).add(op.result)
        if op.kind in MUTATIONS and op.outcome != Outcome.FAILED:
            mutations.setdefault(op.key, []).append(op)

    def may_follow(o: Op, w: Op) -> bool:
        return o is not w and (o.complete is None or o.outcome == Outcome.UNKNOWN or o.complete > w.invoke)

    lost = []
    for key, muts in mutations.items():
        if key not in final_reads:
            continue
        seen = observed.get(key, set())
        final = final_reads[key]
        last = (
            next((o for o in muts if o.kind != OpKind.DELETE and o.value == final), None) if final else None
        )
        for w in muts:
            if w.outcome != Outcome.OK or w.kind not in (OpKind.WRITE, OpKind.SWAP):
                continue
            if w.value in seen or w.value == final:
                continue
            if final is None:
                explained = any(o.kind == OpKind.DELETE and may_follow(o, w) for o in muts)
            elif last is not None:
                explained = may_follow(last, w)
            else:  # a final value no one wrote: a linearizability violation, not this check's
                explained = any(may_follow(o, w) for o in muts)
            if not explained:
                lost.append(w)
    return sorted(lost, key=lambda op: (op.invoke, op.id))


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def availability(history: History, bucket_s: float = 0.1) -> dict[str, Any]:
    """How the cluster served through the run.

    `buckets`: per `bucket_s` slice (by completion time; ops that never returned by
    invocation time): counts of ok / failed / unknown and the p50 / p99 latency (ms) of
    OK ops. `max_unavailable_ms`: the longest stretch without a successful write (OK
    write, delete or swap), counting from the start and up to the end of the run.
    `faults`: for each fault, the time from its start (and from its end) to the first
    successful write completed after it, in ms (None when there was none).
    """
    t0, t1 = history.start, history.stop
    nb = max(1, math.ceil((t1 - t0) / bucket_s - 1e-9))
    buckets: list[dict[str, Any]] = [
        {"t": round(b * bucket_s, 6), "ok": 0, "failed": 0, "unknown": 0} for b in range(nb)
    ]
    lat: list[list[float]] = [[] for _ in range(nb)]
    for op in history.ops:
        t = op.invoke if op.complete is None else op.complete
        b = min(nb - 1, max(0, int((t - t0) / bucket_s)))
        buckets[b][str(op.outcome)] += 1
        if op.outcome == Outcome.OK and op.complete is not None:
            lat[b].append((op.complete - op.invoke) * 1000.0)
    for bucket, xs in zip(buckets, lat, strict=True):
        bucket["p50_ms"] = _percentile(xs, 0.5)
        bucket["p99_ms"] = _percentile(xs, 0.99)
    writes = sorted(
        op.complete
        for op in history.ops
        if op.kind in MUTATIONS and op.outcome == Outcome.OK and op.complete is not None
    )
    marks = [t0, *writes, max(t1, writes[-1] if writes else t1)]
    gap_at = max(range(len(marks) - 1), key=lambda j: marks[j + 1] - marks[j])
    faults = []
    for f in history.faults:
        after_start = next((w for w in writes if w >= f.start), None)
        after_end = None if f.end is None else next((w for w in writes if w >= f.end), None)
        faults.append(
            {
                "name": f.name,
                "detail": f.detail,
                "start_s": round(f.start - t0, 6),
                "end_s": None if f.end is None else round(f.end - t0, 6),
                "first_write_after_start_ms": None
                if after_start is None
                else (after_start - f.start) * 1000.0,
                "first_write_after_end_ms": None
                if after_end is None or f.end is None
                else (after_end - f.end) * 1000.0,
            }
        )
    all_lat = [x for xs in lat for x in xs]
    return {
        "bucket_s": bucket_s,
        "duration_s": t1 - t0,
        "ops": history.counts(),
        "successful_writes": len(writes),
        "max_unavailable_ms": (marks[gap_at + 1] - marks[gap_at]) * 1000.0,
        "max_unavailable_from_s": marks[gap_at] - t0,
        "latency_ms": {
            "p50": _percentile(all_lat, 0.5),
            "p99": _percentile(all_lat, 0.99),
            "max": max(all_lat, default=None),
        },
        "faults": faults,
        "buckets": buckets,
    }
