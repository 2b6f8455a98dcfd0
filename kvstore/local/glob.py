"""Redis glob patterns (SCAN MATCH) on bytes: `*`, `?`, `[abc]`, `[^a-z]`, `\\x`.

Compiled once into a regex (cached); `literal_prefix` lets SCAN seek straight to the
keys a pattern like `user:*` can match instead of walking the whole key space.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

_META = frozenset(b"*?[\\")


@lru_cache(maxsize=256)
def compile_glob(pattern: bytes) -> Callable[[bytes], object]:
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:  # *
            out += b".*"
        elif c == 0x3F:  # ?
            out += b"."
        elif c == 0x5C and i + 1 < n:  # backslash escapes the next byte
            i += 1
            out += re.escape(pattern[i : i + 1])
        elif c == 0x5B:  # [
            j = i + 1
            negate = j < n and pattern[j] == 0x5E  # ^
            if negate:
                j += 1
            items = bytearray()
            closed = False
            while j < n:
                d = pattern[j]
                if d == 0x5D:  # ]
                    closed = True
                    break
                if d == 0x5C and j + 1 < n:
                    j += 1
                    items += re.escape(pattern[j : j + 1])
                elif j + 2 < n and pattern[j + 1] == 0x2D:  # a-z (Redis allows a-] too)
                    lo, hi = sorted((d, pattern[j + 2]))
                    items += re.escape(bytes((lo,))) + b"-" + re.escape(bytes((hi,)))
                    j += 2
                else:
                    items += re.escape(bytes((d,)))
                j += 1
            if not closed:  # Redis reads an unclosed class to the end of the pattern
                j = n - 1
            if items:
                out += b"[" + (b"^" if negate else b"") + bytes(items) + b"]"
            else:
                out += b"[^\\x00-\\xff]" if not negate else b"."
            i = j
        else:
            out += re.escape(bytes((c,)))
        i += 1
    return re.compile(bytes(out), re.DOTALL).fullmatch


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every match must start with (up to the first metacharacter)."""
    out = bytearray()
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == 0x5C and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if c in _META:
            break
        out.append(c)
        i += 1
    return bytes(out)
