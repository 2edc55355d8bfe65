"""common.malloc: after a large block is freed, the next one a little smaller still comes
from mmap (and goes back to the system when freed) instead of from a heap that only grows."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from common.malloc import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
big = bytearray(4 << 20)
del big  # glibc's dynamic rule now raises its mmap threshold to 4 MiB
before = libc.mallinfo2().hblks
body = bytearray(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


def _mapped_blocks(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_fixed_threshold_maps_large_blocks_after_a_larger_one_was_freed() -> None:
    assert _mapped_blocks("default") == 0  # glibc as it comes: the 1 MiB body joins the heap
    assert _mapped_blocks("fixed") == 1  # fixed: it is mapped, and unmapped when freed
