"""Where the data plane was: it is the package edge.plane now.  Kept for the imports that
still name it (edge.cli's ``Limits``)."""

from __future__ import annotations

from edge.plane.plane import Limits

__all__ = ["Limits"]
