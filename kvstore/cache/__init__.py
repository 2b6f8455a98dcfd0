"""Shared-memory cache: a fixed-size hash table in POSIX shared memory (see shm.py)."""

from kvstore.cache.errors import CacheError, CacheInUse, CacheLockTimeout, CacheNotFound
from kvstore.cache.shm import ShmCache

__all__ = ["CacheError", "CacheInUse", "CacheLockTimeout", "CacheNotFound", "ShmCache"]
