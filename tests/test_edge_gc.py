"""The edge tunes the garbage collector once it has started (edge.service, issue 15)."""

from __future__ import annotations

import gc
from pathlib import Path

from edge.service import GC_GEN0, Edge, EdgeSettings


async def test_start_freezes_what_start_up_made_and_collects_the_young_less_often(tmp_path: Path) -> None:
    threshold = gc.get_threshold()
    node = Edge(EdgeSettings(upstreams=["http://127.0.0.1:9"], cache_dir=tmp_path / "cache"))
    try:
        await node.start()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= GC_GEN0
    finally:
        await node.close()
        gc.unfreeze()
        gc.set_threshold(*threshold)
