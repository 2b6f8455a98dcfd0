"""The leader's write futures (kvstore/writepath.py): no write is left waiting forever."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from kvstore import statemachine as sm
from kvstore.errors import TryAgain, Unknown
from kvstore.writepath import WritePath


class _Core:
    def __init__(self) -> None:
        self.term = 2
        self.index = 5

    def propose(self, data: bytes) -> int:
        return self.index


class _Leader(WritePath):
    def __init__(self) -> None:
        self.name = "n1"
        self.core: Any = _Core()
        self.metrics: Any = SimpleNamespace(proposals=SimpleNamespace(inc=lambda: None))
        self.timeout = 5.0
        self._waiters = {}
        self._expiry = deque()
        self._expiry_odd = []
        self._expiry_seq = itertools.count()
        self._wake = asyncio.Event()


def test_a_reused_index_fails_the_old_write_and_its_deadline_spares_the_new_one() -> None:
    async def main() -> None:
        lead, now = _Leader(), asyncio.get_running_loop().time()
        first = lead.propose_future(sm.Set(b"k", b"1"), timeout=1.0)
        # leadership lost and won back: the entry at 5 was overwritten, 5 is proposed again
        lead.core.term = 4
        second = lead.propose_future(sm.Set(b"k", b"2"))
        assert isinstance(first.exception(), TryAgain)
        lead._expire_waiters(now + 2)  # the first write's deadline: the second must survive it
        assert not second.done() and lead._waiters[5] == (4, second)
        lead._expire_waiters(now + 6)
        with pytest.raises(Unknown, match="not committed within 5.0s"):
            second.result()
        assert 5 not in lead._waiters

    asyncio.run(main())
