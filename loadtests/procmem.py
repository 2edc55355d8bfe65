"""Memory a process holds outside its resident set: the sealed memfds the edge's memory
tier keeps large bodies in (edge.objects.Sealed).  They are mapped by no one, so RSS and
PSS do not count them; the soak test and the edge benchmark add them."""

from __future__ import annotations

import os
from contextlib import suppress

__all__ = ["memfd_bytes"]

MEMFD_PREFIX = "/memfd:minicdn-body"


def memfd_bytes(pids: list[int]) -> int:
    """Bytes allocated to the edge's memfds open in ``pids`` (each counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in pids:
        with suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(MEMFD_PREFIX):
                        st = os.stat(f"/proc/{pid}/fd/{fd}")
                        if (st.st_dev, st.st_ino) not in seen:
                            seen.add((st.st_dev, st.st_ino))
                            total += st.st_blocks * 512
    return total
