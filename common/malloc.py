"""Keep a long-running server's heap from creeping: large blocks straight from mmap.

glibc's malloc serves a block of 128 KiB or more from its own mmap — until such a block is
freed: then it raises that threshold to the block's size (the "dynamic mmap threshold"),
and every later block up to that size comes from the heap.  A server that keeps receiving
and freeing bodies of a few hundred KiB (upstream answers, uploads, batch streams,
enrichment's streams) then holds them in heap arenas, which glibc rarely returns to the
system: the soak (docs/soak.md) saw an origin grow 17% and edge workers 1-2 MiB a minute
that way, with no leak in Python.  Fixing the threshold at 128 KiB (as setting
``MALLOC_MMAP_THRESHOLD_`` would) turns the dynamic rule off: large blocks are mapped and
unmapped each time, and RSS follows what is live.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]

log = logging.getLogger("minicdn.malloc")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 << 10  # glibc's own initial value: only its dynamic growth is turned off


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (True), or do nothing where there is no glibc (False)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed: the heap may creep", threshold)
        return False
    return True
