"""The in-memory Raft log: a snapshot point plus the entries after it.

It also knows the configuration at every index: a configuration takes effect as soon
as its entry is in the log (Raft thesis, section 4.1), so truncating the entry reverts it.
It tracks which entries were handed to the shell to persist (`unstable`) and which
committed entries were handed out to apply (`applying`), never touching storage itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import ConfChange, ConfState, Entry, EntryType, SnapshotMeta, apply_change


def conf_of(entry: Entry, conf: ConfState) -> ConfState:
    try:
        return apply_change(conf, ConfChange.decode(entry.data))
    except ValueError:
        return conf  # not a conf change we understand: a no-op, never a crash


class RaftLog:
    def __init__(self, snapshot: SnapshotMeta, entries: Sequence[Entry], committed: int, applied: int) -> None:
        self.snapshot = snapshot
        self.entries: list[Entry] = []
        expect = snapshot.index + 1
        for e in entries:
            if e.index <= snapshot.index:
                continue  # storage not yet compacted up to the snapshot
            if e.index != expect:
                raise ValueError(f"log not contiguous at {e.index}, expected {expect}")
            self.entries.append(e)
            expect += 1
        last = self.last_index
        applied = max(applied, snapshot.index)
        self.committed = min(max(committed, applied), last)
        self.applied = min(applied, self.committed)
        self.applying = self.applied  # highest index handed out to apply
        self.unstable = last + 1  # first index not yet handed out to persist
        # The last index known durable: the shell reported it persisted (advance) and no
        # conflict replaced it since. A leader counts only this much of its own log
        # towards a commit, so it may send entries before writing them (thesis 10.2.1).
        self.persisted = last
        self.pending_snapshot: SnapshotMeta | None = None  # restored, not yet handed out
        self._confs: list[tuple[int, ConfState]] = [(snapshot.index, snapshot.conf)]
        self._track_confs(self.entries)

    # ---- reading

    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def term(self, index: int) -> int | None:
        """The term of entry `index`, None when compacted away or past the end."""
        off = index - self.snapshot.index
        if off == 0:
            return self.snapshot.term
        if 0 < off <= len(self.entries):
            return self.entries[off - 1].term
        return None

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, index: int, term: int) -> bool:
        """Is a log ending at (index, term) at least as up to date as ours (section 5.4.1)?"""
        last_term = self.last_term()
        return term > last_term or (term == last_term and index >= self.last_index)

    def slice(self, lo: int, hi: int, max_count: int = 1 << 62, max_bytes: int = 1 << 62) -> list[Entry]:
        """Entries [lo, hi), at most max_count of them and about max_bytes of data
        (always at least one). lo must be >= first_index."""
        base = self.snapshot.index + 1
        hi = min(hi, self.last_index + 1, lo + max_count)
        out = self.entries[lo - base : hi - base]
        if max_bytes < 1 << 62 and len(out) > 1:
            size = 0
            for k, e in enumerate(out):
                size += len(e.data)
                if size > max_bytes and k > 0:
                    return out[:k]
        return out

    def data_bytes(self, lo: int, hi: int) -> int:
        """Bytes of entry data in [lo, hi) (clamped to the entries held)."""
        base = self.snapshot.index + 1
        return sum(len(e.data) for e in self.entries[max(lo, base) - base : max(hi, base) - base])

    def tail_start(self, hi: int, max_count: int, max_bytes: int) -> int:
        """The first index of the longest run of entries ending at `hi` (inclusive) that
        holds at most max_count entries and max_bytes bytes of data: what a compaction up
        to the index before it keeps. hi + 1 when even entry hi alone is over max_bytes."""
        base = self.snapshot.index + 1
        hi = min(hi, self.last_index)
        lo, size = hi + 1, 0
        while lo > base and hi + 1 - lo < max_count:
            size += len(self.entries[lo - 1 - base].data)
            if size > max_bytes:
                break
            lo -= 1
        return lo

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, with that term (0 when
        unknown). Terms never decrease along a log, so this is a binary search."""
        index = min(index, self.last_index)
        if index < self.snapshot.index:
            return index, 0
        if self.snapshot.term > term:
            return self.snapshot.index - 1, 0  # somewhere inside the snapshot
        lo, hi = self.snapshot.index, index  # term(lo) <= term holds
        while lo < hi:
            mid = (lo + hi + 1) // 2
            t = self.term(mid)
            assert t is not None
            if t <= term:
                lo = mid
            else:
                hi = mid - 1
        t = self.term(lo)
        return lo, t if t is not None else 0

    # ---- configuration

    @property
    def conf(self) -> ConfState:
        return self._confs[-1][1]

    @property
    def last_conf_index(self) -> int:
        """Index of the newest configuration entry (the snapshot index if none)."""
        return self._confs[-1][0]

    def conf_at(self, index: int) -> ConfState:
        for at, conf in reversed(self._confs):
            if at <= index:
                return conf
        return self._confs[0][1]

    def _track_confs(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.type == EntryType.CONF_CHANGE:
                self._confs.append((e.index, conf_of(e, self.conf)))

    # ---- writing

    def append(self, entries: Sequence[Entry]) -> None:
        """Replace everything from entries[0].index on by `entries`."""
        if not entries:
            return
        first = entries[0].index
        if not self.committed < first <= self.last_index + 1:
            raise ValueError(f"append at {first} outside ({self.committed}, {self.last_index + 1}]")
        del self.entries[first - self.snapshot.index - 1 :]
        self.entries.extend(entries)
        self.unstable = min(self.unstable, first)
        self.persisted = min(self.persisted, first - 1)
        while self._confs[-1][0] >= first:
            self._confs.pop()
        self._track_confs(entries)

    def maybe_append(self, index: int, log_term: int, commit: int, entries: Sequence[Entry]) -> int | None:
        """The AppendEntries consistency check and append (section 5.3).

        Returns the last index now known to match the leader's log, None when our log
        has no entry (index, log_term), or -1 when the leader would overwrite a committed
        entry (a bad peer: ignore the message)."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        for k, e in enumerate(entries):
            if not self.match_term(e.index, e.term):
                if e.index <= self.committed:
                    return -1
                self.append(entries[k:])
                break
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            self.committed = min(index, self.last_index)
            return True
        return False

    def restore(self, snap: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.snapshot = snap
        self.entries = []
        self.committed = snap.index
        self.applying = max(self.applying, snap.index)
        self.unstable = snap.index + 1
        self.persisted = min(self.persisted, snap.index - 1)  # until the shell wrote it
        self.pending_snapshot = snap
        self._confs = [(snap.index, snap.conf)]

    def compact(self, index: int, term: int) -> SnapshotMeta:
        """Drop the entries up to `index`: the shell holds a snapshot there. `index` must have
        been handed out for applying (the shell may call this before advance())."""
        if index <= self.snapshot.index:
            return self.snapshot
        if index > self.applying:
            raise ValueError(f"compact({index}) beyond the applied index {self.applying}")
        if self.term(index) != term:
            raise ValueError(f"compact({index}, {term}): entry {index} has term {self.term(index)}")
        conf = self.conf_at(index)
        del self.entries[: index - self.snapshot.index]
        self.snapshot = SnapshotMeta(index, term, conf)
        self._confs = [(index, conf)] + [c for c in self._confs if c[0] > index]
        return self.snapshot

    # ---- handing work to the shell

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.unstable - self.snapshot.index - 1 :]

    def next_committed(self) -> list[Entry]:
        base = self.snapshot.index + 1
        return self.entries[self.applying + 1 - base : self.committed + 1 - base]

    def has_next_committed(self) -> bool:
        return self.committed > self.applying

    def mark_persisted(self, index: int, term: int) -> None:
        """The shell wrote a Ready whose entries (or snapshot) end at (index, term).
        Entries replaced by a conflict since it was handed out stay unpersisted (as
        etcd's stableTo: only if the log still holds that entry)."""
        if self.term(index) == term:
            self.persisted = max(self.persisted, min(index, self.unstable - 1))

    def mark_handed_out(self, applying: int) -> None:
        self.unstable = self.last_index + 1
        self.pending_snapshot = None
        self.applying = max(self.applying, applying)
