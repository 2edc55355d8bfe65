"""The report of a soak or load run: one self-contained HTML page of plots over time
(each role's memory and descriptors; each edge's request rate, p50/p99 latency and hit
ratio; the phones' opens and their times), the kills and restarts drawn on every plot;
the raw series as JSON; and a text summary.

    write(directory, data)  →  report.html, series.json, summary.txt

``data`` is what loadtests.sampler.Sampler.data() returns, plus optionally ``title``,
``clients`` (the phones' rows, ``t`` on the sampler's clock), ``checks`` (each a dict of
name, ok, detail) and ``notes`` (lines for the summary).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from loadtests.sampler import KEPT
from loadtests.svgplot import Chart, Line, Mark

__all__ = ["edge_series", "quantile", "role_series", "summary", "write"]

WINDOW = 5.0  # seconds over which rates, latencies and ratios are taken
MIB = 1 << 20


# -- series derived from the samples -------------------------------------------------------


def role_series(
    procs: dict[str, dict[str, Any]], field: str, ticks: list[float]
) -> dict[str, tuple[list[float], list[float | None]]]:
    """Per role, the sum of ``field`` over its processes at each sampling moment of
    ``ticks`` (None when none of them ran: the role was down)."""
    sums: dict[str, dict[float, float]] = {}
    for p in procs.values():
        acc = sums.setdefault(p["role"], {})
        for t, v in zip(p["t"], p[field], strict=True):
            acc[t] = acc.get(t, 0) + v
    return {role: (ticks, [acc.get(t) for t in ticks]) for role, acc in sorted(sums.items())}


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """The ``q`` quantile of a Prometheus histogram's cumulative bucket counts (le → count),
    interpolated within its bucket as histogram_quantile does; None without observations."""
    bounds = sorted((math.inf if le == "+Inf" else float(le), n) for le, n in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in bounds:
        if n >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n) if n > prev_n else le
        prev_le, prev_n = le, n
    return prev_le


def _deltas(rows: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """For each row, what grew since the previous one; None where the two were not
    answered by the same process (a gap, or a counter that went down: a restart)."""
    out: list[dict[str, Any] | None] = [None]
    for prev, row in itertools.pairwise(rows):
        d: dict[str, Any] | None = None
        if prev["up"] and row["up"]:
            d = {k: row[k] - prev[k] for k in KEPT}
            d["buckets"] = {le: n - prev["buckets"].get(le, 0.0) for le, n in row["buckets"].items()}
            d["dt"] = row["t"] - prev["t"]
            if any(v < 0 for v in [*(d[k] for k in KEPT), *d["buckets"].values()]):
                d = None
        out.append(d)
    return out


def edge_series(
    rows: list[dict[str, Any]], counter: str = "requests", window: float = WINDOW
) -> dict[str, tuple[list[float], list[Any]]]:
    """Per sampling moment, over the last ``window`` seconds: ``counter`` per second, p50
    and p99 latency (ms) and hit ratio; None where the process was down."""
    deltas = _deltas(rows)
    t_out: list[float] = []
    rate: list[float | None] = []
    p50: list[float | None] = []
    p99: list[float | None] = []
    ratio: list[float | None] = []
    recent: list[tuple[float, dict[str, Any]]] = []  # this process's deltas of the last window
    for row, delta in zip(rows, deltas, strict=True):
        t = row["t"]
        t_out.append(t)
        recent = [(s, d) for s, d in recent if s > t - window] + ([(t, delta)] if delta else [])
        if delta is None and row["up"]:
            recent = []  # a process other than the one that answered before
        if not row["up"] or not recent:
            for series in (rate, p50, p99, ratio):
                series.append(None)
            continue
        seconds = sum(d["dt"] for _, d in recent)
        rate.append(sum(d[counter] for _, d in recent) / seconds)
        merged: dict[str, float] = {}
        for _, d in recent:
            for le, n in d["buckets"].items():
                merged[le] = merged.get(le, 0.0) + n
        q50, q99 = quantile(0.5, merged), quantile(0.99, merged)
        p50.append(None if q50 is None else 1000 * q50)
        p99.append(None if q99 is None else 1000 * q99)
        looked = sum(d["hits"] + d["misses"] for _, d in recent)
        ratio.append(sum(d["hits"] for _, d in recent) / looked if looked else None)
    return {"rate": (t_out, rate), "p50": (t_out, p50), "p99": (t_out, p99), "hit_ratio": (t_out, ratio)}


def client_series(clients: list[dict[str, Any]], t_end: float, window: float = WINDOW) -> dict[str, Any]:
    """Opens per second by kind, failures per second, and the p50/p99 time of installs and
    updates, over the last ``window`` seconds, each second of the run."""
    grid = [float(s) for s in range(int(t_end) + 1)]
    kinds = ("install", "update", "launch", "failed")
    per_kind: dict[str, list[float | None]] = {k: [] for k in kinds}
    p50: list[float | None] = []
    p99: list[float | None] = []
    for t in grid:
        recent = [c for c in clients if t - window < c["t"] <= t]
        for k in kinds:
            per_kind[k].append(
                sum(1 for c in recent if c["kind"] == k or (k == "failed" and not c["ok"])) / window
            )
        times = sorted(c["seconds"] for c in recent if c["kind"] in ("install", "update") and c["ok"])
        p50.append(_pick(times, 0.5))
        p99.append(_pick(times, 0.99))
    return {"t": grid, **per_kind, "p50": p50, "p99": p99}


def _pick(values: Sequence[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


# -- the page ----------------------------------------------------------------------------------


def _marks(events: Iterable[dict[str, Any]]) -> list[Mark]:
    """A kill or a stop and the moment the same role was ready again: one band; the rest as they are."""
    out: list[Mark] = []
    down: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["kind"] in ("kill", "stop"):
            down[e["role"]] = e
        elif e["kind"] == "up" and e["role"] in down:
            start = down.pop(e["role"])
            label = f"{start['label']} ({e['t'] - start['t']:.1f} s)"
            out.append(Mark(start["t"], label, start["kind"], until=e["t"]))
        else:
            out.append(Mark(e["t"], e["label"], e["kind"]))
    out += [Mark(e["t"], e["label"], e["kind"]) for e in down.values()]
    return out


def charts(data: dict[str, Any]) -> list[Chart]:
    t_end = _t_end(data)
    rss = role_series(data["procs"], "peak" if _has(data, "peak") else "rss", data["ticks"])
    fds = role_series(data["procs"], "fds", data["ticks"])
    out = [
        Chart(
            "Resident memory of each role: the peak of each second, its processes summed",
            "MiB",
            [Line(r, t, [None if v is None else v / MIB for v in vs]) for r, (t, vs) in rss.items()],
        ),
        Chart(
            "Open descriptors of each role (its processes summed)",
            "descriptors",
            [Line(r, t, vs) for r, (t, vs) in fds.items()],
        ),
    ]
    edges = {role: edge_series(rows) for role, rows in sorted(data["metrics"].items()) if role != "origin"}
    rate_lines = [Line(r, *s["rate"]) for r, s in edges.items()]
    if "origin" in data["metrics"]:
        origin = edge_series(data["metrics"]["origin"], "origin_requests")
        rate_lines.append(Line("origin", *origin["rate"], dashed=True))
    out += [
        Chart(f"Requests per second (over {WINDOW:.0f} s)", "req/s", rate_lines),
        Chart("Edge latency p50", "ms", [Line(r, *s["p50"]) for r, s in edges.items()]),
        Chart("Edge latency p99", "ms", [Line(r, *s["p99"]) for r, s in edges.items()]),
        Chart(
            "Edge hit ratio (hits / (hits + misses))",
            "ratio",
            [Line(r, *s["hit_ratio"]) for r, s in edges.items()],
            y_max=1.0,
        ),
    ]
    if data.get("clients"):
        c = client_series(data["clients"], t_end)
        out += [
            Chart(
                f"Phones: opens per second (over {WINDOW:.0f} s)",
                "opens/s",
                [
                    Line(k, c["t"], c[k], dashed=k == "failed")
                    for k in ("install", "update", "launch", "failed")
                ],
            ),
            Chart(
                "Phones: time of an install or update",
                "seconds",
                [Line("p50", c["t"], c["p50"]), Line("p99", c["t"], c["p99"])],
            ),
        ]
    return out


def _has(data: dict[str, Any], field: str) -> bool:
    return all(field in p for p in data["procs"].values())


def _t_end(data: dict[str, Any]) -> float:
    times = [t for p in data["procs"].values() for t in p["t"][-1:]]
    times += [rows[-1]["t"] for rows in data["metrics"].values() if rows]
    return max(times, default=1.0)


def html(data: dict[str, Any]) -> str:
    t_end = _t_end(data)
    marks = _marks(data["events"])
    title = data.get("title", "minicdn run")
    checks = data.get("checks", [])
    rows = "".join(
        f'<tr><td class="{"ok" if c["ok"] else "bad"}">{"pass" if c["ok"] else "FAIL"}</td>'
        f"<td>{escape(c['name'])}</td><td>{escape(c['detail'])}</td></tr>"
        for c in checks
    )
    events = "".join(
        f"<li>{e['t']:.1f} s: {escape(e['label'])}</li>" for e in data["events"] if e["kind"] != "publish"
    )
    procs = "".join(
        _proc_row(p) for p in sorted(data["procs"].values(), key=lambda p: (p["role"], p["t"][0]))
    )
    plots = "\n".join(f"<figure>{c.svg(t_end, marks)}</figure>" for c in charts(data))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 1160px; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
td.ok {{ color: #006d2c; font-weight: bold; }} td.bad {{ color: #b30000; font-weight: bold; }}
figure {{ margin: 12px 0; }} pre {{ background: #f6f6f6; padding: 8px; }}
</style></head><body>
<h1>{escape(title)}</h1>
<pre>{escape(summary(data))}</pre>
<h2>Checks</h2><table>{rows}</table>
<h2>Plots</h2>
<p>Shaded bands: a process down, from its SIGKILL (red) or SIGTERM (orange) until it answered
ready again. Grey lines: the end of the warm-up, channel moves; grey ticks on the time axis:
publishes (hover for the version).</p>
{plots}
<h2>Events</h2><ul>{events}</ul>
<h2>Processes</h2>
<table><tr><th>role</th><th>pid</th><th>lived</th><th>RSS first → last (MiB)</th><th>peak fds</th>
<th>command</th></tr>
{procs}</table>
</body></html>
"""


def _proc_row(p: dict[str, Any]) -> str:
    return (
        f"<tr><td>{escape(p['role'])}</td><td>{p['pid']}</td><td>{p['t'][0]:.0f}–{p['t'][-1]:.0f} s</td>"
        f"<td>{p['rss'][0] / MIB:.1f} → {p['rss'][-1] / MIB:.1f} (peak {max(p['rss']) / MIB:.1f})</td>"
        f"<td>{max(p['fds'])}</td><td><code>{escape(p['cmd'][:140])}</code></td></tr>"
    )


def _tier_at(rows: list[dict[str, Any]], t: float) -> float:
    """A node's memory tier (MiB) at the first answered sample from ``t`` on (the last one if none)."""
    held = [r for r in rows if r["up"] and "memory_tier" in r]
    return float(next((r for r in held if r["t"] >= t), held[-1])["memory_tier"]) / MIB


def summary(data: dict[str, Any]) -> str:
    lines = [data.get("title", "minicdn run"), *data.get("notes", [])]
    warmup = float(data.get("timeline", {}).get("warmup", 0.0))
    for role, rows in sorted(data["metrics"].items()):
        up = [r for r in rows if r["up"]]
        if not up:
            continue
        series = edge_series(rows, "origin_requests" if role == "origin" else "requests")
        rates = [v for v in series["rate"][1] if v is not None]
        p99 = [v for v in series["p99"][1] if v is not None]
        ratio = [v for v in series["hit_ratio"][1] if v is not None]
        tier = [r["memory_tier"] / MIB for r in up if "memory_tier" in r]
        # The memory tier from the end of the warm-up to the end: growth judged on a
        # process whose cache was still filling would be the cache's (docs/soak.md).
        lines.append(
            f"{role:8} mean {sum(rates) / max(1, len(rates)):6.1f} req/s"
            + (f", p99 up to {max(p99):7.1f} ms" if p99 else "")
            + (f", hit ratio {sum(ratio) / len(ratio):.3f} on average" if ratio else "")
            + (f", memory tier {_tier_at(rows, warmup):.2f} → {tier[-1]:.2f} MiB" if tier else "")
        )
    fds = role_series(data["procs"], "fds", data["ticks"])
    for role, (_t, rss) in role_series(data["procs"], "rss", data["ticks"]).items():
        vs = [v / MIB for v in rss if v is not None]
        fd = [v for v in fds[role][1] if v is not None]
        lines.append(
            f"{role:8} RSS {vs[0]:6.1f} → {vs[-1]:6.1f} MiB (peak {max(vs):6.1f}), "
            f"fds {fd[0]:.0f} → {fd[-1]:.0f} (peak {max(fd):.0f}), its processes summed"
        )
    for c in data.get("checks", []):
        lines.append(f"{'pass' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
    return "\n".join(lines)


def write(directory: Path, data: dict[str, Any]) -> Path:
    """report.html, series.json and summary.txt in ``directory``; the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "series.json").write_text(json.dumps(data))
    (directory / "summary.txt").write_text(summary(data) + "\n")
    page = directory / "report.html"
    page.write_text(html(data))
    return page
