"""Whether a process grew over a run: the rules the soak asserts, as pure functions of
the series it sampled (one value a second per process).

A run is a warm-up of ``W`` seconds under load (nothing killed, nothing judged), then the
measured period of ``M`` seconds.  Every process is judged on its own lifetime: a process
restarted is a new PID, and a fresh process is small, so comparing it with its
predecessor would prove nothing.  With ``w = min(60 s, max(M / 5, the work's cycle))``
(the soak's cycle: every app published once, so both windows hold the same work):

    judged from   the end of the run's warm-up, or, for a process started later (a
                  restart), W seconds after its start: it gets the same warm-up
    its window    w' = min(w, judged life / 3)
    first window  [judged from,  judged from + w')
    last window   [end - w',     end]

so in a 600 s run every process that lives through it is judged on the minute after the
warm-up against its last minute, an edge restarted and killed again three minutes later
on 39 s windows, and in a 60 s run (a 20 s cycle) on 20 s windows.  A process whose windows would be
shorter than ``w / 2`` (judged life under ``1.5 w``), or with fewer than ``MIN_SAMPLES``
samples in a window, is reported as not judged, never as passed.

- **RSS**: the last window's peak is at most ``1 + RSS_GROWTH`` (10%) times the first
  window's peak.  (The soak samples each process's high-water mark and resets it every
  second, so a peak is the true one, however short the burst: an origin's enrichment of
  a version lasts about a second.)
- **Descriptors**: the last window's *lowest* count is at most the first window's
  *highest* count plus ``max(FD_SLACK, 10%)``.  Descriptors follow the connections
  clients and peers hold at the moment (an edge whose neighbour was just killed holds that
  one's phones' connections too), so peaks say little; a leak is never given back, so it
  lifts the floor above anything seen at the start.  (Connection pools reach their
  working size in the warm-up; one still growing after it is reported, to be looked at.)  (The soak
  leaves out the edge's memfds: each body of its memory tier is one, so their number
  follows the tier's fill, bounded by ``--memory-size``.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "FD_SLACK",
    "MIN_SAMPLES",
    "RSS_GROWTH",
    "Judgement",
    "Run",
    "Windows",
    "judge_fds",
    "judge_rss",
]

MIN_SAMPLES = 3
WINDOW_CAP = 60.0
RSS_GROWTH = 0.10
FD_SLACK = 4


@dataclass(frozen=True)
class Run:
    """A run's clock: ``warmup`` seconds of load, then ``measured`` seconds; ``cycle``: the
    period of its work (every app published once), which a window must hold so that the
    two windows compared saw the same work."""

    warmup: float
    measured: float
    cycle: float = 0.0

    @property
    def window(self) -> float:
        return min(WINDOW_CAP, max(self.measured / 5, self.cycle))

    @property
    def shortest(self) -> float:
        """The shortest window a process may be judged on."""
        return max(self.window / 2, self.cycle)

    def since(self, start: float) -> float:
        """When a process first seen at ``start`` is judged from: the end of the run's
        warm-up for one there from the first sample (t < 1 s), else ``warmup`` after it started."""
        return self.warmup if start < 1.0 else start + self.warmup

    def windows(self, start: float, end: float) -> Windows | None:
        """The windows of a process seen from ``start`` to ``end``, or None if its judged
        life is too short: its windows are a third of that life at most, no shorter than
        half the run's, and never shorter than one cycle — a shorter window may or may not
        hold the costliest work of the cycle (the origin enriching the largest app), so
        its peak would say which work fell in it, not whether the process grew."""
        since = self.since(start)
        w = min(self.window, (end - since) / 3)
        if w < self.shortest:
            return None
        return Windows(since, (since, since + w), (end - w, end))


@dataclass(frozen=True)
class Windows:
    since: float
    first: tuple[float, float]
    last: tuple[float, float]


@dataclass(frozen=True)
class Judgement:
    """One rule applied to one process: ``ok`` is None when the process could not be
    judged (``why`` says why)."""

    ok: bool | None
    first: float = 0.0  # the earlier figure the rule uses
    last: float = 0.0  # the last window's
    limit: float = 0.0  # the most ``last`` may be
    windows: Windows | None = None
    why: str = ""


def _windows(run: Run, t: Sequence[float], v: Sequence[float]) -> Windows | str:
    if len(t) != len(v):
        raise ValueError("times and values differ in length")
    if not t:
        return "no samples"
    ws = run.windows(t[0], t[-1])
    if ws is None:
        judged = max(0.0, t[-1] - run.since(t[0]))
        return f"judged life {judged:.0f}s, less than {3 * run.shortest:.0f}s"
    return ws


def _within(t: Sequence[float], v: Sequence[float], lo: float, hi: float) -> list[float]:
    return [x for s, x in zip(t, v, strict=True) if lo <= s <= hi]


def _judge(
    run: Run,
    t: Sequence[float],
    v: Sequence[float],
    at_end: Callable[[list[float]], float],
    most: Callable[[float], float],
) -> Judgement:
    """``at_end`` of the last window's values at most ``most(peak of the first window)``."""
    ws = _windows(run, t, v)
    if isinstance(ws, str):
        return Judgement(None, why=ws)
    first = _within(t, v, ws.first[0], ws.first[1] - 1e-9)
    last = _within(t, v, *ws.last)
    if min(len(first), len(last)) < MIN_SAMPLES:
        return Judgement(None, why=f"{len(first)} and {len(last)} samples in its windows")
    figure, limit = at_end(last), most(max(first))
    return Judgement(figure <= limit, max(first), figure, limit, ws)


def judge_rss(run: Run, t: Sequence[float], rss: Sequence[float]) -> Judgement:
    """The last window's peak RSS within ``RSS_GROWTH`` of the first window's."""
    return _judge(run, t, rss, max, lambda peak: peak * (1 + RSS_GROWTH))


def judge_fds(run: Run, t: Sequence[float], fds: Sequence[float]) -> Judgement:
    """The last window's lowest count no higher than the first window's highest plus
    ``max(FD_SLACK, 10%)``."""
    return _judge(run, t, fds, min, lambda peak: peak + max(FD_SLACK, 0.10 * peak))
