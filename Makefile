# minicdn — every target creates .venv and installs the project when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run run-s3 test data bench bench-publish bench-edge bench-delivery bench-open bench-slow loadtest soak lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "minicdn needs Python >= 3.11"'
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	@touch $(STAMP)

install: $(STAMP)

## make run: a local origin on :8080 (plus edges on :8081, :8082) with the sample app published as `demo`;
## make run TLS=1: all of it on HTTPS, with a local CA made under var/tls
run: $(STAMP)
	MINICDN_RUN_TLS=$(TLS) $(PY) deploy/run_local.py

## make run-s3: the origin on object storage, as replicas: a one-node Ceph RGW on :7480 (under var/rgw;
## objects in memory, gone when it stops), two origins on s3://minicdn/run (:8080, :8090), two edges
## (:8081, :8082) each listing both origins in another order; TLS=1 works here too.  Needs Debian's
## ceph-mon ceph-osd radosgw ceph-common.  Ctrl-C stops everything, the RGW included.
run-s3: $(STAMP)
	MINICDN_RUN_TLS=$(TLS) MINICDN_RUN_S3=1 $(PY) deploy/run_local.py

## make test: the whole suite (bounded versions of the slow runs: a 60 s soak among them);
## it fails if any process it started is still running after its last test
test: $(STAMP) data
	$(PY) -m pytest -q -p no:cacheprovider

## make data: the real npm packages benchmarks and realistic tests use (SHA-256 checked)
data: $(STAMP)
	$(PY) -m loadtests.data fetch

bench-publish: $(STAMP) data
	$(PY) -m loadtests.bench_publish

## make bench: every benchmark at full length (publish; edge vs nginx under wrk)
bench: $(STAMP) data bench-publish bench-edge bench-delivery bench-open bench-slow

## the full-length load and soak tests (make test runs their bounded versions)
bench-slow: $(STAMP) data
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q -p no:cacheprovider --run-slow -m slow || test $$? -eq 5  # 5: none marked yet

## make bench-edge: hits (edge vs nginx and Varnish), then misses (edge vs nginx proxy_cache, root: it mounts a RAM ext4)
bench-edge: $(STAMP) data
	$(PY) -m loadtests.bench_edge
	$(PY) -m loadtests.bench_miss

## make bench-open: time to installed over an 80 ms RTT, 20 Mbit/s link (a network namespace, tc tbf, a
## delaying proxy; root), a cold open and an update, against nginx serving the one solid archive; then the
## install work of an app of thousands of files against zstd -d | tar -x + sync
bench-open: $(STAMP) data
	$(PY) -m loadtests.bench_open
	$(PY) -m loadtests.bench_install

## make bench-delivery: bytes and requests of installs and updates through a real edge, against zstd -19 and --patch-from
bench-delivery: $(STAMP) data
	$(PY) -m loadtests.bench_delivery
	$(PY) -m loadtests.bench_metadata

## make loadtest: locust phones (Zipf over apps built from `make data`) against an origin and a ring
## of three edges, headless for LOAD_SECONDS (default 30); prints each edge's hit ratio and the origin's
## requests; var/loadtest/: report.html (plots over time), locust.html (locust's), series.json, summary.txt
LOAD_SECONDS ?= 30
loadtest: $(STAMP) data
	$(PY) -m pip install -q -e '.[load]'
	$(PY) -m loadtests.cluster --duration $(LOAD_SECONDS) --report var/loadtest

## make soak: an origin, three edges and phones installing and updating for SOAK_SECONDS (default 600)
## while edges are SIGKILLed and the origin restarted; fails on any failed install, byte difference,
## growth of memory or descriptors, or process left behind; var/soak/report.html (docs/soak.md)
SOAK_SECONDS ?= 600
soak: $(STAMP) data
	$(PY) -m loadtests.soak --seconds $(SOAK_SECONDS) --out var/soak

## make lint: ruff over everything, ruff's formatting over the packages, mypy --strict over the code and the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check common origin edge client
	$(VENV)/bin/mypy common origin edge client deploy loadtests tests

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache
