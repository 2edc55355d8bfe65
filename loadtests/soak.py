"""``make soak``: an origin, a ring of three edges and a stream of phones installing and
updating real-package apps, while an edge is SIGKILLed and started again about every
minute and the origin is restarted once; then a verdict and a report.  The rules, the
windows and what a run found: docs/soak.md.

Every process here runs on 127.0.0.1 and is stopped by its PID; every one carries
``MINICDN_SOAK_RUN=<this run>`` in its environment, so that one left running at the end is
found whoever its parent has become.

**The cluster.**  loadtests.cluster: an origin (two compression workers) and three edges in
one ring, each edge with ``--workers 2`` (so a SIGKILL of an edge is a SIGKILL of a
supervisor with workers below it) and a 1 MiB memory tier.

**The timeline** (t = 0 when the phones start; ``Timeline.of``): a warm-up of
``min(60 s, seconds / 2)`` under load, then ``--seconds`` measured.
- before t = 0, version 1.0.0 of each of four apps built from the npm packages of ``make
  data`` (loadtests.data.build_app) is published and put on channel ``release``;
- every ``publish_every`` seconds (``seconds / 80``, between 5 and 15) the next version of
  one app, round robin (its libraries one step further along their release chains, a
  page changed), is published and ``release`` moved to it; a copy of each version's files
  is kept, and the publisher retries while the origin is down (an operator would);
- edge ``k mod 3`` is SIGKILLed at ``warm-up + offset + k * 60`` s (``offset = min(30,
  seconds / 3)``) and started again 2 s later on the same port and cache directory;
- the origin gets SIGTERM once, two thirds into the measured part (moved half a minute
  off an edge kill within 15 s), and is started again on the same data directory;
- nothing is killed in the warm-up nor in the last ``min(60 s, seconds / 5)``: the two
  windows the growth rules compare are quiet ones.

**The phones** (loadtests.phones, a process of their own): six, each with its own chunk
store and every edge in its ``--edge`` list, opening apps by Zipf popularity with
``Client.install``; each open's tree is compared byte for byte with the published copy
of the version installed.

**The verdict** (each check printed, in the report, and the exit status):
- phones made cold installs and updates, and no open failed after the client's own
  retries and failover; every installed tree is the published one, byte for byte;
- every planned kill and restart happened, each process was ready again, and the origin
  exited 0 on SIGTERM;
- no process's resident memory, descriptors (sockets and memfds aside) or half-closed
  connections grew (loadtests.growth: the rules and each process's windows); the origin,
  the phones and at least one edge had a process judged;
- no process of the run is left once everything was stopped (20 s grace).

The report (loadtests.report) lands in ``--out``: ``report.html`` (plots with the kills and
restarts marked), ``series.json`` (every sample), ``summary.txt``.

    python -m loadtests.soak [--seconds 600] [--out var/soak] [--phones 6] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests import growth, report
from loadtests.cluster import VANT, WEUI, Procs, cluster
from loadtests.data import build_app, chains, ensure_data
from loadtests.proctree import cmdline, kill, marked, wait_gone
from loadtests.sampler import Sampler

ROOT = Path(__file__).resolve().parent.parent
MARK = "MINICDN_SOAK_RUN"
EDGES = ("edge0", "edge1", "edge2")
# A memory tier small enough to be full by the end of the warm-up, even in the 60 s run
# (a worker's share of 4 MiB was still filling at its end, so its growth was the cache's),
# and to evict all through the run: eviction's paths are soaked too.
EDGE_ARGS = ("--workers", "2", "--memory-size", "1MiB")
DOWN = 2.0  # seconds a killed edge stays down
GRACE = 20.0  # seconds processes get to exit once stopped
APPS = (("app0", (VANT,), 2), ("app1", (WEUI,), 1), ("app2", (VANT, WEUI), 3), ("app3", (WEUI,), 4))


@dataclass(frozen=True)
class Timeline:
    """When things happen, in seconds from t = 0 (the phones start): ``warmup`` seconds of
    load, then ``seconds`` measured, with the kills and the restart in them."""

    seconds: float
    warmup: float
    publish_every: float
    kills: tuple[tuple[float, str], ...]
    origin_restart: float | None

    @property
    def total(self) -> float:
        return self.warmup + self.seconds

    @property
    def run(self) -> growth.Run:
        return growth.Run(self.warmup, self.seconds, cycle=len(APPS) * self.publish_every)

    @classmethod
    def of(cls, seconds: float, period: float = 60.0) -> Timeline:
        warmup = min(60.0, seconds / 2)
        quiet = min(60.0, seconds / 5)
        offset = min(period / 2, seconds / 3)
        kills: list[tuple[float, str]] = []
        while offset + len(kills) * period <= seconds - quiet:
            kills.append((warmup + offset + len(kills) * period, EDGES[len(kills) % len(EDGES)]))
        restart = warmup + seconds * 2 / 3
        if any(abs(restart - t) < 15 for t, _ in kills):
            restart = min(kills, key=lambda k: abs(restart - k[0]))[0] + period / 2
        restart = min(restart, warmup + seconds - quiet)
        # Every app once every 7.5 s x 4 apps = 30 s in the 600 s run: a window (60 s) holds
        # two cycles, and a restarted edge or origin (two or three minutes of judged life)
        # still holds windows of a whole cycle (loadtests.growth: never shorter).  In the 60 s
        # run, every 3 s (a 12 s cycle): the origin's 40 s of judged life before its restart
        # must hold two windows of a cycle, and the publisher keeps up with that (29 versions).
        return cls(seconds, warmup, min(15.0, max(3.0, seconds / 80)), tuple(kills), restart)


# -- the publisher ---------------------------------------------------------------------------


class Publisher:
    """Publishes the next version of one app every ``every`` seconds and moves its channel;
    keeps each version's files under ``published/<app>/<version>/``."""

    def __init__(self, origin: str, token: str, published: Path) -> None:
        self.origin, self.token, self.published = origin, token, published
        self.sampler: Sampler | None = None  # once the run's clock starts: publishes are marked on it
        self.chains = chains()
        self.versions = {name: 0 for name, _, _ in APPS}
        self.records: list[dict[str, Any]] = []
        self.retries = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def version(self, app: int) -> tuple[str, Path]:
        name, libs, pages = APPS[app]
        k = self.versions[name]
        chosen = {lib: self.chains[lib][(app + k) % len(self.chains[lib])] for lib in libs}
        version = f"1.0.{k}"
        folder = build_app(
            self.published / name / version,
            chosen,
            pages=pages,
            data_dir=ensure_data(),
            app_name=name,
            revision=k,
        )
        return version, folder

    def publish(self, app: int) -> None:
        from origin.cli import pack_folder

        name = APPS[app][0]
        version, folder = self.version(app)
        buf = io.BytesIO()
        pack_folder(folder, buf)  # type: ignore[arg-type]
        t0 = time.monotonic()
        self._call("POST", f"/v1/apps/{name}/versions/{version}", buf.getvalue(), "application/octet-stream")
        body = json.dumps({"version": version}).encode()
        self._call("PUT", f"/v1/apps/{name}/channels/release", body, "application/json")
        self.versions[name] += 1
        if self.sampler is not None:
            seconds = round(time.monotonic() - t0, 3)
            self.records.append(
                {"t": self.sampler.now(), "app": name, "version": version, "seconds": seconds}
            )
            self.sampler.event("publish", "origin", f"{name}@{version} on release")

    def _call(self, method: str, path: str, body: bytes, kind: str) -> None:
        """One request, retried while the origin is down or answers 5xx (bounded: 120 s)."""
        deadline = time.monotonic() + 120
        while True:
            req = urllib.request.Request(
                self.origin + path,
                data=body,
                method=method,
                headers={"Authorization": f"Bearer {self.token}", "Content-Type": kind},
            )
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    r.read()
                    return
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or time.monotonic() > deadline:
                    raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from exc
            except OSError:
                if time.monotonic() > deadline:
                    raise
            self.retries += 1
            time.sleep(0.5)

    def start(self, sampler: Sampler, every: float, until: float) -> None:
        self.sampler = sampler

        def loop() -> None:
            try:
                n = 0
                while not self._stop.wait(max(0.0, (n + 1) * every - sampler.now())):
                    if sampler.now() > until:
                        return
                    self.publish(n % len(APPS))
                    n += 1
            except BaseException as exc:  # reported in the verdict
                self.error = exc

        self._thread = threading.Thread(target=loop, name="publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(180)


# -- chaos ------------------------------------------------------------------------------------


def chaos(timeline: Timeline, procs: Procs, sampler: Sampler, urls: dict[str, str]) -> list[dict[str, Any]]:
    """Run the kills and the origin restart at their moments; what happened, in order."""
    restart = [] if timeline.origin_restart is None else [(timeline.origin_restart, "origin")]
    actions: list[tuple[float, str]] = sorted([*timeline.kills, *restart])
    done = []
    for at, name in actions:
        time.sleep(max(0.0, at - sampler.now()))
        t0 = sampler.now()
        if name == "origin":
            sampler.event("stop", name, "SIGTERM origin")
            code = procs.stop(name)
        else:
            sampler.event("kill", name, f"SIGKILL {name}")
            procs.kill(name)
            code = None
            time.sleep(DOWN)
        sampler.watch(name, None)
        procs.again(name)
        sampler.watch(name, procs.pid(name), urls[name])
        sampler.event("up", name, f"{name} ready")
        done.append({"t": t0, "name": name, "exit": code, "down": round(sampler.now() - t0, 2)})
    return done


# -- the run ----------------------------------------------------------------------------------


def run(timeline: Timeline, out: Path, phones: int) -> dict[str, Any]:
    """The whole soak; the report's data (with ``checks``)."""
    seconds = timeline.seconds
    run_id = uuid.uuid4().hex
    os.environ[MARK] = run_id  # inherited by every process started from here on
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    token = secrets.token_urlsafe(16)
    notes: list[str] = []
    happened: list[dict[str, Any]] = []
    results = work / "phones.jsonl"
    phones_exit: int | None = None
    failure: BaseException | None = None
    with cluster(work, token, edge_args=EDGE_ARGS) as (origin, edges, procs):
        urls = {"origin": origin, **dict(zip(EDGES, edges, strict=True))}
        publisher = Publisher(origin, token, work / "published")
        for i in range(len(APPS)):
            publisher.publish(i)
        phone_cmd = [
            sys.executable,
            "-m",
            "loadtests.phones",
            *(a for e in edges for a in ("--edge", e)),
            "--public-key",
            str(work / "keys" / "public.key"),
            "--published",
            str(work / "published"),
            *(a for name, _, _ in APPS for a in ("--app", name)),
            "--work",
            str(work / "phones"),
            "--out",
            str(results),
            "--seconds",
            str(timeline.total),
            "--phones",
            str(phones),
        ]
        with open(work / "phones.log", "ab") as log:
            phone_proc = subprocess.Popen(phone_cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        sampler = Sampler()  # t = 0: the phones have started
        try:
            for name, url in urls.items():
                sampler.watch(name, procs.pid(name), url)
            sampler.watch("phones", phone_proc.pid)
            sampler.start()
            publisher.start(sampler, timeline.publish_every, timeline.total - 1)
            happened = chaos(timeline, procs, sampler, urls)
            time.sleep(max(0.0, timeline.total - sampler.now()))
            publisher.stop()
            phones_exit = phone_proc.wait(120)
        except (Exception, SystemExit) as exc:  # a process that would not start again: in the verdict
            failure = exc
        finally:
            if phone_proc.poll() is None:
                phone_proc.kill()
                phone_proc.wait()
            sampler.stop()
            publisher.stop()
    left = wait_gone(marked(MARK, run_id, exclude=[os.getpid()]), GRACE)
    leftovers = [f"pid {p}: {' '.join(cmdline(p).split())[:200]}" for p in left]
    kill(set(left) & set(marked(MARK, run_id, exclude=[os.getpid()])))
    data = sampler.data()
    data["events"] = sorted(
        [*data["events"], {"t": timeline.warmup, "kind": "phase", "role": "", "label": "warm-up ends"}],
        key=lambda e: float(e["t"]),
    )
    clients = _clients(results, sampler.started)
    data.update(
        title=f"minicdn soak: {timeline.warmup:.0f} s warm-up + {seconds:.0f} s, {phones} phones, "
        f"{len(EDGES)} edges, {len(APPS)} apps",
        clients=clients,
        publishes=publisher.records,
        chaos=happened,
        timeline={**timeline.__dict__, "window": timeline.run.window},
    )
    notes += [
        f"{len(publisher.records)} versions published ({publisher.retries} publisher retries while the "
        f"origin was down); phones exited {phones_exit}",
        *(
            f"{h['t']:6.1f} s  {h['name']}: "
            + ("SIGKILL" if h["exit"] is None else f"SIGTERM, exited {h['exit']}")
            + f", ready again {h['down']:.1f} s later"
            for h in happened
        ),
    ]
    data["notes"] = notes
    data["checks"] = verdict(data, timeline, happened, leftovers, publisher.error or failure, phones_exit)
    return data


def _clients(path: Path, started: float) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        r["t"] = round(r.pop("at") - started, 3)
    return rows


# -- the verdict ------------------------------------------------------------------------------


def check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def verdict(
    data: dict[str, Any],
    timeline: Timeline,
    happened: list[dict[str, Any]],
    leftovers: list[str],
    error: BaseException | None,
    phones_exit: int | None,
) -> list[dict[str, Any]]:
    clients = data["clients"]
    by_kind = {
        k: sum(1 for c in clients if c["kind"] == k and c["ok"]) for k in ("install", "update", "launch")
    }
    failed = [c for c in clients if c["kind"] == "failed"]
    wrong = [c for c in clients if c["kind"] != "failed" and not c["ok"]]
    planned = len(timeline.kills) + (timeline.origin_restart is not None)
    return [
        check(
            "phones installed and updated",
            by_kind["install"] > 0 and by_kind["update"] > 0 and phones_exit == 0,
            f"{by_kind['install']} cold installs, {by_kind['update']} updates, {by_kind['launch']} launches "
            f"(nothing new); the phones process exited {phones_exit}",
        ),
        check(
            "no open failed after the client's retries",
            not failed,
            f"{len(failed)} of {len(clients)} opens failed" + _first(failed),
        ),
        check(
            "every install is the published files, byte for byte",
            not wrong,
            f"{len(clients) - len(failed) - len(wrong)} trees checked, {len(wrong)} differed" + _first(wrong),
        ),
        check(
            "every kill and restart happened; the origin exited 0 on SIGTERM",
            len(happened) == planned and all(h["exit"] in (None, 0) for h in happened),
            f"{len(happened)} of {planned} planned: "
            + ", ".join(f"{h['name']} at {h['t']:.0f} s" for h in happened),
        ),
        check(
            "the run went to its end",
            error is None and len(data["publishes"]) >= 2,
            f"{len(data['publishes'])} versions published during the run"
            + (f"; stopped by {error!r}" if error else ""),
        ),
        sampling_check(data["ticks"], data["sampler_errors"], timeline.total, data["period"]),
        *growth_checks(data["procs"], timeline.run),
        check(
            "no process left behind",
            not leftovers,
            "none of the run's processes ran once all were stopped"
            if not leftovers
            else f"{len(leftovers)} still ran {GRACE:.0f} s after the stop (killed): " + "; ".join(leftovers),
        ),
    ]


def sampling_check(ticks: list[float], errors: list[str], until: float, period: float) -> dict[str, Any]:
    """Every growth rule judges samples: a sampler that failed or stalled leaves holes
    where growth would go unseen, so the run fails instead of passing on what is left."""
    gaps = [b - a for a, b in zip([0.0, *ticks], [*ticks, until], strict=True)]
    worst = max(gaps, default=until)
    ok = not errors and worst <= max(5.0, 5 * period)
    detail = f"{len(ticks)} samples, the longest gap {worst:.1f} s, {len(errors)} failed"
    return check("the sampler saw the whole run", ok, detail + (f" (first: {errors[0]})" if errors else ""))


REQUIRED = ("origin", "phones", "edge")  # roles (by prefix) that must have a process judged


def growth_checks(procs: dict[str, dict[str, Any]], run: growth.Run) -> list[dict[str, Any]]:
    """The RSS and descriptor rules of loadtests.growth on every process, and that the
    origin, the phones and at least one edge had a process judged by each (a killed edge's
    lives may all be too short in a short run: they are listed as not judged)."""
    out = []
    for what, rule, field, unit in (
        ("resident memory", growth.judge_rss, "peak", 1 << 20),
        ("descriptors (sockets and memfds aside)", growth.judge_fds, "files", 1),
        ("connections the other end closed (CLOSE_WAIT)", growth.judge_fds, "close_wait", 1),
    ):
        judged: list[tuple[dict[str, Any], growth.Judgement]] = [
            (p, rule(run, p["t"], _values(p, field))) for p in procs.values()
        ]
        bad = [(p, j) for p, j in judged if j.ok is False]
        skipped = [(p, j) for p, j in judged if j.ok is None]
        unjudged = [
            r for r in REQUIRED if not any(p["role"].startswith(r) and j.ok is not None for p, j in judged)
        ]
        detail = (
            f"{len(judged) - len(skipped)} processes judged, {len(bad)} grew"
            + "".join(
                f"; {_who(p)}: {_fig(j.first, unit)} → {_fig(j.last, unit)} (limit {_fig(j.limit, unit)})"
                for p, j in bad
            )
            + _not_judged(skipped)
            + (f"; roles with no process judged: {', '.join(unjudged)}" if unjudged else "")
        )
        out.append(check(f"no process's {what} grew", not bad and not unjudged, detail))
    return out


def _values(p: dict[str, Any], field: str) -> list[float]:
    """The series a rule judges.  ``files``: descriptors that are neither sockets nor the
    memory tier's memfds, where a leak of open files, pipes or event descriptors shows.
    Sockets follow the connections clients and peers keep alive (their pools grow to the
    largest concurrency seen), so their leak is judged by its own sign: connections the
    other end has closed and this process never did (CLOSE_WAIT).  Memfds hold the memory
    tier's bodies, one each: their number follows the tier's fill, bounded by --memory-size."""
    if field == "files":
        return [n - s - m for n, s, m in zip(p["fds"], p["sockets"], p["memfds"], strict=True)]
    return list(p[field])


def _not_judged(skipped: list[tuple[dict[str, Any], growth.Judgement]]) -> str:
    """The processes not judged, by reason (most are lives too short: PIDs by role)."""
    by_why: dict[str, dict[str, list[str]]] = {}
    for p, j in skipped:
        why = "too short a life after the warm-up" if "judged life" in j.why else j.why
        by_why.setdefault(why, {}).setdefault(p["role"], []).append(str(p["pid"]))
    return "".join(
        f"; not judged ({why}): " + ", ".join(f"{role} {' '.join(pids)}" for role, pids in roles.items())
        for why, roles in by_why.items()
    )


def _who(p: dict[str, Any]) -> str:
    return f"{p['role']} pid {p['pid']}"


def _fig(v: float, unit: int) -> str:
    return f"{v / unit:.1f} MiB" if unit > 1 else f"{v:.0f}"


def _first(rows: list[dict[str, Any]]) -> str:
    return "".join(f"; at {r['t']:.1f} s phone {r['phone']} {r['app']}: {r['error']}" for r in rows[:5])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--seconds", type=float, default=600, help="length of the run under load (default 600)")
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "soak", help="where the report goes")
    ap.add_argument("--phones", type=int, default=6, help="phones at once (default 6)")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's data, caches and logs (out/work)")
    args = ap.parse_args(argv)
    data = run(Timeline.of(args.seconds), args.out, args.phones)
    page = report.write(args.out, data)
    if not args.keep:
        _tidy(args.out / "work")
    print(report.summary(data))
    print(f"report: {page}")
    return 0 if all(c["ok"] for c in data["checks"]) else 1


def _tidy(work: Path) -> None:
    """Drop the caches, stores and published copies; keep the logs and the phones' rows."""
    for entry in work.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
