"""Errors of the shared-memory cache. Each names the segment, in one line."""

from __future__ import annotations


class CacheError(Exception):
    """Base of the cache's own errors."""


class CacheNotFound(CacheError, FileNotFoundError):
    """No usable segment under that name (the node is not running, or not yet ready)."""


class CacheInUse(CacheError, FileExistsError):
    """create() found the segment owned by another live process."""


class CacheLockTimeout(CacheError, TimeoutError):
    """The writer lock stayed with a live process for longer than the caller's patience."""
