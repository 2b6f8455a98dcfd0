"""The safety properties of Raft (paper, Figure 3), checked as a simulation runs.

Every check is incremental, so a simulation can check after every event:

- Election Safety: at most one leader per term, over the whole history.
- Leader Append-Only: a leader never overwrites or deletes entries in its log.
- Log Matching: two logs holding an entry with the same index and term are identical up
  to it. Checked as "an (index, term) pair always names the same entry with the same
  predecessor term", which implies the property by induction.
- Leader Completeness: a new leader's log holds every entry committed so far; and when a
  leader commits, no log lacking the entry could still win an election.
- State Machine Safety: all nodes apply the same entry at each index (compared through a
  running hash of the applied state, which also covers snapshots).
- Read linearizability: a ReadState's index is >= every index committed before the read
  was requested.
"""

from __future__ import annotations

from .core import RaftCore
from .types import Entry, ReadState


class Violation(AssertionError):
    """A safety property was broken."""


class Checker:
    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}  # term -> the node that led it
        self.entries: dict[tuple[int, int], tuple[int, bytes, int]] = {}  # (index, term) -> entry
        self.committed: list[int] = [0]  # committed[i]: term of committed entry i (0: unknown)
        # commit_terms[i]: the lowest term in which a node reported entry i committed. A
        # leader of term T must hold the entries committed in terms < T; a leader of an
        # older term can still be elected late (its votes were delayed) without them.
        self.commit_terms: list[int] = [0]
        self.applied: list[tuple[int, int]] = [(0, 0)]  # applied[i]: (term, state hash after i)
        self.reads: dict[bytes, int] = {}  # read context -> commit index when it was asked
        self.reads_served = 0
        self.elections = 0

    @property
    def max_committed(self) -> int:
        return len(self.committed) - 1

    def on_leader(self, node: str, core: RaftCore) -> None:
        term = core.term
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise Violation(f"election safety: {other} and {node} both lead term {term}")
        self.elections += 1
        lg = core.log
        snap = lg.snapshot
        if 0 < snap.index <= self.max_committed and self.commit_terms[snap.index] < term:
            if self.committed[snap.index] not in (0, snap.term):
                raise Violation(f"leader completeness: {node}'s snapshot at {snap.index} has term {snap.term}")
        for i in range(snap.index + 1, self.max_committed + 1):
            if self.commit_terms[i] >= term:
                continue
            want, have = self.committed[i], lg.term(i)
            if have is None or (want and have != want):
                raise Violation(
                    f"leader completeness: {node} leads term {term} but its entry {i} has term "
                    f"{have}, entry committed in term {self.commit_terms[i]} has term {want}"
                )

    def on_leader_log(self, node: str, core: RaftCore, last: int, last_term: int) -> None:
        """The leader's log at (last, last_term) earlier in this term must still be there."""
        lg = core.log
        if lg.last_index < last or (last > lg.snapshot.index and lg.term(last) != last_term):
            raise Violation(
                f"leader append-only: {node} (term {core.term}) had entry {last} of term {last_term}, "
                f"now last={lg.last_index} term({last})={lg.term(last)}"
            )

    def on_persist(self, node: str, entries: list[Entry], prev: int | None) -> None:
        """`entries` are written after an entry of term `prev` (as the log was when the
        Ready was taken)."""
        if prev is None:
            raise Violation(f"{node}: Ready entries start at {entries[0].index}, after a gap")
        for e in entries:
            seen = self.entries.setdefault((e.index, e.term), (int(e.type), e.data, prev))
            if seen != (int(e.type), e.data, prev):
                raise Violation(
                    f"log matching: {node} has entry ({e.index}, term {e.term}) = {e.data!r} after term {prev}, "
                    f"another log has {seen[1]!r} after term {seen[2]}"
                )
            prev = e.term

    def on_commit(self, node: str, core: RaftCore, old: int, new: int, term: int) -> None:
        """`node`, in `term`, says entries old+1..new are committed."""
        lg = core.log
        while self.max_committed < old:
            self.committed.append(0)  # committed before we could see its term
            self.commit_terms.append(term)
        for i in range(old + 1, new + 1):
            t = lg.term(i)
            if i <= self.max_committed:
                self.commit_terms[i] = min(self.commit_terms[i], term)
                if t is not None and self.committed[i] and self.committed[i] != t:
                    raise Violation(
                        f"committed entry changed: {node} commits ({i}, term {t}), "
                        f"committed before with term {self.committed[i]}"
                    )
                if t is not None and not self.committed[i]:
                    self.committed[i] = t
            else:
                self.committed.append(t or 0)
                self.commit_terms.append(term)

    def on_leader_commit(
        self, leader: str, index: int, term: int, voters: tuple[str, ...],
        logs: dict[str, list[tuple[int, int, bool]]],
    ) -> None:
        """A leader just committed (index, term). No node lacking it may be able to win an
        election, i.e. be at least as up to date as a majority of voters: that is what makes
        a commit permanent (paper 5.4). `logs`: node -> [(last index, last term, has
        entry)] for its disk and, when up, its memory: a crash now would bring a node back
        with its disk, so an entry counts only where it is durable. This is the Figure 8
        check (and the check of a leader that counts its own unwritten entries): it fires
        the moment an unsafe commit happens, not only when a later leader overwrites it."""
        quorum = len(voters) // 2 + 1
        for n, summaries in logs.items():
            for li, lt, has in summaries:
                if has:
                    continue
                beats = [v for v in voters if v in logs and any((lt, li) >= (vt, vi) for vi, vt, _ in logs[v])]
                if len(beats) >= quorum:
                    raise Violation(
                        f"unsafe commit: {leader} committed ({index}, term {term}) but {n} lacks it and its log "
                        f"(last {li}, term {lt}) is as up to date as voters {beats}: it can win and overwrite it"
                    )

    def on_apply(self, node: str, index: int, term: int, state: int) -> None:
        if index < len(self.applied):
            if self.applied[index] != (term, state):
                raise Violation(
                    f"state machine safety: {node} applied ({index}, term {term}) reaching state {state:#x}, "
                    f"another node applied term {self.applied[index][0]} reaching {self.applied[index][1]:#x}"
                )
        elif index == len(self.applied):
            self.applied.append((term, state))
        else:
            raise Violation(f"{node} applied {index} but nothing applied {len(self.applied)} yet")

    def on_install(self, node: str, index: int, state: int) -> None:
        if index >= len(self.applied) or self.applied[index][1] != state:
            raise Violation(f"{node} installed a snapshot at {index} that no node applied")

    def on_read_request(self, ctx: bytes) -> None:
        self.reads[ctx] = self.max_committed

    def on_read_state(self, node: str, rs: ReadState) -> None:
        need = self.reads.get(rs.context)
        if need is None:
            raise Violation(f"{node}: ReadState for unknown context {rs.context!r}")
        if rs.index < need:
            raise Violation(
                f"read linearizability: {node} got read index {rs.index} for {rs.context!r}, "
                f"but {need} was committed before the read was asked"
            )
        self.reads_served += 1
