"""`kvstore node run` tunes glibc's malloc unless the operator did (see cli/node.py)."""

from __future__ import annotations

import os
import platform

import pytest

from kvstore.cli.node import tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_is_tuned_unless_the_operator_tuned_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(k)
    assert tune_malloc() == "mmap threshold 128 KiB, 2 arenas"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert tune_malloc() is None
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert tune_malloc() is None
