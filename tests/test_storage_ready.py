"""Store.save_ready: a Raft Ready (log entries, hard state, committed entries) in one transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore import statemachine as sm
from kvstore.storage import Store


def _apply(cmd: sm.Command):  # type: ignore[no-untyped-def]
    return lambda view: sm.apply(view, cmd)


def test_persists_and_applies_together(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    try:
        out = s.save_ready([(1, b"e1"), (2, b"e2")], b"hs1", [(1, _apply(sm.Set(b"a", b"1")))])
        assert out[0][0] == sm.SetResult(True, None)
        assert s.log_get(1, 3) == [(1, b"e1"), (2, b"e2")]
        assert s.hard_state() == b"hs1" and s.applied_index() == 1 and s.get(b"a") == b"1"
        # a conflicting suffix is replaced, as log_append does
        s.save_ready([(2, b"E2"), (3, b"E3")], None, [(2, _apply(sm.Delete((b"a",))))])
        assert s.log_get(1, 4) == [(1, b"e1"), (2, b"E2"), (3, b"E3")]
        assert s.get(b"a") is None and s.applied_index() == 2
    finally:
        s.close()


def test_failed_apply_stores_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    try:
        def boom(view: object) -> None:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            s.save_ready([(1, b"e1")], b"hs", [(1, boom)])
        assert s.log_bounds() == (0, 0) and s.hard_state() is None and s.applied_index() == 0
    finally:
        s.close()


def test_refuses_reapplying_and_gaps(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    try:
        s.save_ready([(1, b"e1")], None, [(1, _apply(sm.Set(b"k", b"v")))])
        with pytest.raises(ValueError):
            s.save_ready([], None, [(1, _apply(sm.Set(b"k", b"w")))])
        with pytest.raises(ValueError):
            s.save_ready([(2, b"x"), (4, b"y")], None, [])
        assert s.get(b"k") == b"v"
    finally:
        s.close()
