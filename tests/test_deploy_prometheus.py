"""deploy/prometheus and deploy/grafana against real tools and real processes.

- Debian's promtool checks both scrape configs and the rules, and runs the rules' unit
  tests (deploy/prometheus/tests/).
- Debian's Prometheus, on a free loopback port with its own data directory, scrapes a real
  origin and two real edges every second with the shipped rules loaded; after traffic
  through the edges, the hit-ratio recording rules read back through Prometheus' HTTP API
  equal what the edges' own /metrics say.
- Every metric name the rules and the dashboard use is one those processes export, with
  the label values they export; every dashboard query evaluates in that Prometheus.

Prometheus comes from Debian's ``prometheus`` package: used from PATH when installed, else
the package is fetched with ``apt-get download`` and unpacked (``dpkg-deb -x``) under the
venv, so that no system service is started and root is not needed.  Without apt the tests
skip and say why.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

from tests.conftest import DEMO, http, publish, set_channel, tar_gz_of
from tests.procs import Service, edge_service, free_port, origin_service
from tests.waiting import eventually

REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "deploy" / "prometheus"
RULES = sorted((PROM / "rules").glob("*.yml"))
DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
TOOLS = Path(sys.prefix) / "debian-tools"  # unpacked Debian packages, per venv

# Metric names fixed by DESIGN.md: the dashboard must show every one of them.
DESIGN_METRICS = {
    "minicdn_edge_requests_total",
    "minicdn_edge_hits_total",
    "minicdn_edge_misses_total",
    "minicdn_edge_sent_bytes_total",
    "minicdn_edge_upstream_requests_total",
    "minicdn_edge_coalesced_total",
    "minicdn_edge_cache_bytes",
    "minicdn_edge_cache_limit_bytes",
    "minicdn_edge_evicted_bytes_total",
    "minicdn_edge_request_seconds_bucket",
    "minicdn_origin_chunk_requests_total",
    "minicdn_origin_published_bytes_total",
    "minicdn_origin_publish_seconds_bucket",
}


# -- the tools ------------------------------------------------------------------------------


def _debian_tool(name: str, package: str = "prometheus") -> Path:
    """``name`` from PATH, else from Debian's ``package`` unpacked under the venv."""
    found = shutil.which(name)
    if found:
        return Path(found)
    unpacked = TOOLS / package / "usr" / "bin" / name
    if unpacked.exists():
        return unpacked
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip(
            f"{name} is not installed and this machine has no apt-get/dpkg-deb to fetch Debian's {package}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True)
        if got.returncode != 0 and os.geteuid() == 0:
            # A fresh machine has no package lists yet.
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
            got = subprocess.run(
                ["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True
            )
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if got.returncode != 0 or not debs:
            pytest.skip(
                f"{name} is not installed and `apt-get download {package}` failed: {got.stderr.strip()[-300:]}"
            )
        into = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(into)], check=True)
        TOOLS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another test run unpacked it first
            into.rename(TOOLS / package)
    assert unpacked.exists(), f"Debian's {package} has no usr/bin/{name}"
    return unpacked


@pytest.fixture(scope="module")
def promtool() -> Path:
    return _debian_tool("promtool")


@pytest.fixture(scope="module")
def prometheus_bin() -> Path:
    return _debian_tool("prometheus")


def run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=120)


# -- 1. promtool ----------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml", "prometheus-s3.yml"])
def test_promtool_check_config(promtool: Path, config: str) -> None:
    r = run(promtool, "check", "config", config, cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(RULES)} rule files found" in r.stdout + r.stderr


def test_promtool_check_rules(promtool: Path) -> None:
    r = run(promtool, "check", "rules", *RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(RULES)


def test_promtool_rule_unit_tests(promtool: Path) -> None:
    """Every alert fires on the series its runbook describes, with the annotations shown."""
    r = run(promtool, "test", "rules", "tests/minicdn-rules.test.yml", cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "tests" / "minicdn-rules.test.yml").read_text()))
    assert tested == alert_names(), "every alert has a promtool unit test"


# -- the rules and the dashboard, read ------------------------------------------------------


def rule_groups() -> list[dict[str, object]]:
    return [g for f in RULES for g in yaml.safe_load(f.read_text())["groups"]]


def alert_names() -> set[str]:
    return {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}  # type: ignore[attr-defined]


def recorded_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}  # type: ignore[attr-defined]


def rule_exprs() -> list[str]:
    return [r["expr"] for g in rule_groups() for r in g["rules"]]  # type: ignore[attr-defined]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, label): the selector is PromQL
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            assert m, var["query"]
            exprs.append(m.group(1))
    return exprs


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it, for this test's 1 s scrape interval."""
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace('"$instance"', '".*"')


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"(minicdn_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: minicdn_* metrics and level:metric:op records."""
    bare = _STRING.sub('""', expr)
    return {n for n in _NAME.findall(bare) if n.startswith("minicdn_") or n.count(":") == 2}


# -- 2. a real Prometheus scraping a real origin and two edges ------------------------------


@dataclass
class Stack:
    origin: Service
    edges: list[Service]
    prometheus: str  # base URL

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        return answer["data"]["result"]  # type: ignore[no-any-return]

    def values(self, promql: str, by: str = "instance") -> dict[str, float]:
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(promql)}


def scrape(base: str) -> list[tuple[str, dict[str, str], float]]:
    """A /metrics page as (name, labels, value) samples."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, labels = key.partition("{")
        pairs = {k: v for k, _, v in _MATCHER.findall(labels.rstrip("}"))}
        out.append((name, pairs, float(value)))
    return out


def exported_names(base: str) -> set[str]:
    """Sample names of a /metrics page, plus what its # TYPE lines promise (a family
    without samples yet, e.g. a labelled counter never incremented)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    names = {n for n, _, _ in scrape(base)}
    for m in re.finditer(r"^# TYPE (\S+) (\w+)$", text, re.M):
        name, kind = m.groups()
        names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return names


_VOCABULARY = re.compile(r"\(([a-z_]+(?:, [a-z_]+)+)\)")


def declared_values(base: str) -> dict[str, set[str]]:
    """Label values a metric's HELP text lists, e.g. "... and outcome (ok, absent, exists,
    conflict, error)": a healthy process need not have exported every one yet (no storage
    error has happened), but a rule may select any of them."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"^# HELP (\S+) (.*)$", text, re.M):
        for listed in _VOCABULARY.findall(m.group(2)):
            out.setdefault(m.group(1), set()).update(listed.split(", "))
    return out


def counters(edge: Service) -> tuple[dict[str, float], float]:
    """An edge's hits by tier and its misses, from its own /metrics."""
    samples = scrape(edge.url)
    hits = {lb["tier"]: v for n, lb, v in samples if n == "minicdn_edge_hits_total"}
    misses = sum(v for n, _, v in samples if n == "minicdn_edge_misses_total")
    return hits, misses


def settles(check: Callable[[], object], what: str, timeout: float = 40.0) -> None:
    """Poll ``check()`` (returning an error text, or None when it holds) until it holds;
    the failure shows the last error text."""
    problem: list[object] = [None]

    def holds() -> bool:
        problem[0] = check()
        return problem[0] is None

    eventually(holds, timeout, lambda: f"{what} ({problem[0]})", interval=0.1)


@contextlib.contextmanager
def prometheus(binary: Path, tmp: Path, origin: Service, edges: list[Service]) -> Iterator[str]:
    """Debian's Prometheus with the shipped config (its targets replaced by the processes
    under test, intervals shortened to 1 s) and the shipped rules; stopped by PID."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    config["rule_files"] = [str(f) for f in RULES]
    targets = {
        "minicdn-origin": [origin.url[len("http://") :]],
        "minicdn-edge": [e.url[len("http://") :] for e in edges],
    }
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": targets[job["job_name"]]}]}
        for job in config["scrape_configs"]
        if job["job_name"] in targets
    ]
    assert {j["job_name"] for j in config["scrape_configs"]} == set(targets), "the shipped config's job names"
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(tmp / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited {proc.returncode}: {(tmp / 'prometheus.log').read_text()[-2000:]}"
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                return bool(r.status == 200)
            return False

        eventually(ready, 30, "prometheus ready", interval=0.1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def chunk_ids(base: str, app: str) -> tuple[str, list[str]]:
    """The manifest id and chunk ids of ``app``'s release, read through ``base``."""
    r = http("GET", f"{base}/v1/apps/{app}/channels/release")
    assert r.status == 200, r.body
    ref = msgpack.unpackb(msgpack.unpackb(r.body, raw=False)["payload"], raw=False)
    manifest = ref["manifest"].hex()
    r = http("GET", f"{base}/v1/manifests/{manifest}")
    assert r.status == 200, r.body
    body = msgpack.unpackb(msgpack.unpackb(r.body, raw=False)["payload"], raw=False)
    return manifest, list(dict.fromkeys(c[0].hex() for p in body["packages"] for c in p["chunks"]))


@pytest.fixture(scope="module")
def stack(prometheus_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("deploy-prom")
    origin = origin_service(tmp).start()
    edges: list[Service] = []
    try:
        for i in range(2):
            edges.append(edge_service(tmp, origin.url, name=f"edge{i}").start())
        r = publish(origin.url, "demo", "1.0.0", tar_gz_of(DEMO))
        assert r.status in (200, 201), r.body
        assert set_channel(origin.url, "demo", "release", {"version": "1.0.0"}).status == 200
        with prometheus(prometheus_bin, tmp, origin, edges) as base:
            s = Stack(origin, edges, base)
            # A first scrape of every target before any traffic: the rate() windows then
            # start at zero, so the rate-based ratios are exact too.
            settles(
                lambda: None if len(s.values('up{job=~"minicdn-.*"} == 1')) == 3 else s.query("up"),
                "a first scrape of the origin and both edges",
            )
            traffic(s)
            yield s
    finally:
        for e in edges:
            e.stop()
        origin.stop()


def traffic(s: Stack) -> None:
    """Misses and memory hits on edge 0 (every chunk twice, then a batch of all); fewer
    repeats on edge 1, so the two ratios differ."""
    a, b = s.edges
    _, ids = chunk_ids(a.url, "demo")  # a ref miss and a manifest miss on edge 0
    assert len(ids) >= 4, "the demo app has several chunks"
    for hexid in ids * 2:
        assert http("GET", f"{a.url}/v1/chunks/{hexid}").status == 200
    r = http("POST", f"{a.url}/v1/chunks:batch", msgpack.packb(ids))
    assert r.status == 200
    chunk_ids(b.url, "demo")
    for hexid in ids[: len(ids) // 2] + ids[:2]:
        assert http("GET", f"{b.url}/v1/chunks/{hexid}").status == 200


def test_hit_ratio_rules_match_the_edges_counters(stack: Stack) -> None:
    expected: dict[str, tuple[float, dict[str, float]]] = {}
    total_hits = total_lookups = 0.0
    for e in stack.edges:
        hits, misses = counters(e)
        lookups = sum(hits.values()) + misses
        assert sum(hits.values()) > 0 and misses > 0, (hits, misses)
        expected[e.url[len("http://") :]] = (
            sum(hits.values()) / lookups,
            {t: h / lookups for t, h in hits.items()},
        )
        total_hits, total_lookups = total_hits + sum(hits.values()), total_lookups + lookups
    assert len({round(v[0], 6) for v in expected.values()}) == 2, "the two edges have different ratios"

    def compare(rule: str) -> str | None:
        got = stack.values(rule)
        want = {i: r for i, (r, _) in expected.items()}
        if got.keys() != want.keys() or any(not math.isclose(got[i], want[i], rel_tol=1e-9) for i in want):
            return f"{rule}: Prometheus {got}, edges {want}"
        return None

    def compare_tiers(rule: str) -> str | None:
        got = {
            (s["metric"]["instance"], s["metric"]["tier"]): float(s["value"][1])
            for s in stack.query(rule)
        }
        want = {(i, t): r for i, (_, tiers) in expected.items() for t, r in tiers.items()}
        if got.keys() != want.keys() or any(
            not math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-12) for k in want
        ):
            return f"{rule}: Prometheus {got}, edges {want}"
        return None

    def compare_job(rule: str) -> str | None:
        got = stack.values(rule, by="job")
        want = total_hits / total_lookups
        return (
            None
            if math.isclose(got.get("minicdn-edge", -1), want, rel_tol=1e-9)
            else f"{rule}: {got} != {want}"
        )

    # Counter ratios (exact), then the rate() ratios of one edge: their windows start at
    # the first scrape, taken before any traffic, and rate() extrapolates every series of
    # one target by the same factor, so over them rate ratios equal counter ratios.
    settles(
        lambda: compare("instance:minicdn_edge_hit_ratio:cumulative"), "the cumulative hit ratio per edge"
    )
    settles(
        lambda: compare_tiers("instance_tier:minicdn_edge_hit_ratio:cumulative"),
        "the cumulative ratio per tier",
    )
    settles(
        lambda: compare_job("job:minicdn_edge_hit_ratio:cumulative"), "the cumulative ratio of all edges"
    )
    settles(lambda: compare("instance:minicdn_edge_hit_ratio:rate5m"), "the 5m hit ratio per edge")
    settles(lambda: compare_tiers("instance_tier:minicdn_edge_hit_ratio:rate5m"), "the 5m ratio per tier")
    # Across edges the factors differ (each target has its own scrape times): the ratio of
    # all edges is a weighted mean of theirs.
    low, high = sorted(r for r, _ in expected.values())
    cluster = stack.values("job:minicdn_edge_hit_ratio:rate5m", by="job")["minicdn-edge"]
    assert low <= cluster <= high, (low, cluster, high)


def test_throughput_rules_see_the_traffic(stack: Stack) -> None:
    def positive(rule: str, n: int) -> object:
        got = stack.values(rule)
        return None if len(got) == n and all(v > 0 for v in got.values()) else f"{rule}: {got}"

    settles(lambda: positive("instance:minicdn_edge_sent_bytes:rate5m", 2), "bytes/s per edge")
    settles(lambda: positive("instance:minicdn_edge_requests:rate5m", 2), "requests/s per edge")
    settles(lambda: positive("job:minicdn_origin_chunk_requests:rate5m", 1), "origin chunk requests/s")
    fill = {
        (s["metric"]["instance"], s["metric"]["tier"]): float(s["value"][1])
        for s in stack.query("instance_tier:minicdn_edge_cache_fill:ratio")
    }
    assert len(fill) == 4 and all(0 < v < 1 for v in fill.values()), fill


def test_rules_load_and_evaluate_without_errors(stack: Stack) -> None:
    def healthy() -> str | None:
        with urllib.request.urlopen(stack.prometheus + "/api/v1/rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        names = {rule["name"] for rule in rules}
        if names != alert_names() | recorded_names():
            return f"loaded {sorted(names)}"
        bad = [(rule["name"], rule.get("lastError")) for rule in rules if rule.get("health") != "ok"]
        return f"unhealthy: {bad}" if bad else None

    settles(healthy, "every rule loaded and evaluated")
    firing = [a for a in stack.query("ALERTS") if a["metric"]["alertstate"] == "firing"]
    assert firing == [], f"a healthy stack fires no alert: {firing}"


def test_every_dashboard_query_evaluates_with_data(stack: Stack) -> None:
    # Wait for a scrape after the traffic (the rate windows are 1 m here).
    settles(
        lambda: None if stack.values("instance:minicdn_edge_sent_bytes:rate5m") else "no rates yet",
        "rates after the traffic",
    )
    empty = []
    for expr in dashboard_exprs():
        if not stack.query(grafana_to_promql(expr)):
            empty.append(expr)
    # The origin publishes once (before Prometheus started), so no publish falls in a window.
    assert all("minicdn_origin_publish" in e for e in empty), f"queries without data: {empty}"


# -- 3. names: what the rules and the dashboard use is what the processes export ------------


def test_rules_and_dashboard_use_only_exported_metrics(stack: Stack) -> None:
    exported: set[str] = set()
    labels: dict[str, dict[str, set[str]]] = {}
    declared: dict[str, set[str]] = {}
    for svc in (stack.origin, *stack.edges):
        exported |= exported_names(svc.url)
        for name, values in declared_values(svc.url).items():
            declared.setdefault(name, set()).update(values)
        for name, lbs, _ in scrape(svc.url):
            for k, v in lbs.items():
                labels.setdefault(name, {}).setdefault(k, set()).add(v)
    recorded = recorded_names()
    problems = []
    exprs = rule_exprs() + dashboard_exprs()
    used: set[str] = set()
    for expr in exprs:
        for name in metric_names(expr):
            used.add(name)
            if ":" in name:
                if name not in recorded:
                    problems.append(f"{name}: no recording rule makes it")
            elif name not in exported:
                problems.append(f"{name}: not exported by the origin or the edges")
        for name, body in _SELECTOR.findall(expr):
            for label, op, value in _MATCHER.findall(body):
                if label in ("job", "instance") or name not in labels:
                    continue
                if label not in labels[name]:
                    problems.append(f"{name}{{{label}...}}: {name} has no label {label}")
                elif op == "=" and value not in labels[name][label] | _vocabulary(declared, name, labels[name][label]):
                    problems.append(f'{name}{{{label}="{value}"}}: values are {sorted(labels[name][label])}')
    assert problems == [], "\n".join(problems)
    assert DESIGN_METRICS - used == set(), "every DESIGN.md metric is on the dashboard or in a rule"
    dash_used = {n for e in dashboard_exprs() for n in metric_names(e)}
    assert DESIGN_METRICS - dash_used == set(), "every DESIGN.md metric is on the dashboard"


def _vocabulary(declared: dict[str, set[str]], name: str, exported: set[str]) -> set[str]:
    """The values the HELP of ``name`` lists, when that list covers what is exported for
    the label (so that it is this label's vocabulary, not some other list)."""
    family = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
    listed = declared.get(family, declared.get(name, set()))
    return listed if exported <= listed else set()


def test_storage_operations_declare_every_outcome_in_help(stack: Stack) -> None:
    """The alert on storage errors selects outcome="error", which a healthy origin has not
    exported yet: the metric's HELP must list it (as origin/storage/store.py's outcomes)."""
    from origin.storage import store

    declared = declared_values(stack.origin.url)
    help_values = _vocabulary(declared, "minicdn_origin_storage_operations_total", {"error"})
    assert {"ok", "absent", "exists", "conflict", "error"} == help_values
    source = Path(store.__file__).read_text()
    for outcome in help_values:
        assert f'"{outcome}"' in source, outcome
    exported = {lb["outcome"] for n, lb, _ in scrape(stack.origin.url) if n == "minicdn_origin_storage_operations_total"}
    assert exported and exported <= help_values, exported


def test_name_extraction_sees_through_strings_and_suffixes() -> None:
    """The cross-check's own parser: label values are not names; suffixes are kept."""
    expr = 'histogram_quantile(0.9, sum by (le) (rate(minicdn_edge_request_seconds_bucket{route="minicdn_x"}[5m])))'
    assert metric_names(expr) == {"minicdn_edge_request_seconds_bucket"}
    assert metric_names("instance:minicdn_edge_hit_ratio:rate5m > 0.5") == {
        "instance:minicdn_edge_hit_ratio:rate5m"
    }
