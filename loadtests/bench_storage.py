"""Which S3 client the origin's storage driver should use (issue 18 item 2; the verdict is in
docs/decisions.md): plain boto3 in threads (what origin/storage/s3.py does), obstore and
aiobotocore (both asyncio), on the same work, against a Ceph RGW (deploy/rgw.py) and moto's
server, both started here on loopback and stopped by PID.

The work, in a fresh prefix of one bucket per client and round:

- ``create``: ``--creates`` (500) small objects (100 bytes), create-only (If-None-Match: *),
  32 in flight;
- ``stat``: a HEAD of each of them, 32 in flight (the driver's ``stat_many``);
- ``list``: every key of a prefix of ``--list-keys`` (2,000) objects made beforehand: three
  ListObjectsV2 pages of up to 1,000.

Also checked once per client and server: a compare-and-swap from the etag the client was
given (If-Match) succeeds, as the driver's ``swap`` needs (Ceph RGW refuses a quoted etag).

Each row is a ratio to boto3 measured in the same round (median of ``--rounds``), never a
bare time; boto3's own median seconds are shown for scale only.  Client and server share
this machine's cores, so the ratios say what each client's own cost does to the whole.
A client that is not installed is reported as such (aiobotocore pins an older botocore than
the project's boto3: install it in a separate venv with obstore, boto3 and moto, and run this
module there with PYTHONPATH pointing at the checkout).

    python -m loadtests.bench_storage [--servers rgw,moto] [--rounds 3] [--creates 500]
                                      [--list-keys 2000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from origin.storage.s3 import S3Driver, ensure_bucket
from tests.s3_servers import S3Server, start_moto, stop_process

__all__ = ["CLIENTS", "main", "run"]

CONCURRENCY = 32
BODY = b"x" * 100
WORKLOADS = ("create", "stat", "list")
CLIENTS = ("boto3", "obstore", "aiobotocore")

# client → (server, bucket, prefix, keys to create, prefix to list) → {workload: seconds}
Work = Callable[[S3Server, str, str, list[str], str], dict[str, float]]


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    got = fn()
    return time.perf_counter() - start, got


# -- boto3 (the driver itself) -------------------------------------------------------------------


def boto3_work(server: S3Server, bucket: str, prefix: str, keys: list[str], listed: str) -> dict[str, float]:
    driver = server.driver(f"s3://{bucket}")
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            create, made = _timed(lambda: list(pool.map(lambda k: driver.create(prefix + k, BODY), keys)))
        assert isinstance(made, list) and all(made), "boto3: a create was refused"
        stat, stats = _timed(lambda: driver.stat_many([prefix + k for k in keys]))
        assert isinstance(stats, dict) and all(stats.values()), "boto3: a stat found nothing"
        lst, n = _timed(lambda: _boto3_list(driver, listed))
        return {"create": create, "stat": stat, "list": lst, "listed": float(n)}  # type: ignore[arg-type]
    finally:
        driver.close()


def _boto3_list(driver: S3Driver, prefix: str) -> int:
    n, after = 0, None
    while True:
        page = driver.list(prefix, after)
        n += len(page.items)
        if not page.more:
            return n
        after = page.items[-1].key


def boto3_swap(server: S3Server, bucket: str) -> str:
    """Through the driver: its ``swap`` learns the If-Match form the server takes."""
    driver = server.driver(f"s3://{bucket}/swap-boto3")
    try:
        etag = driver.put("k", b"1")
        return "yes" if driver.swap("k", b"2", etag) is not None else "no"
    finally:
        driver.close()


# -- obstore ---------------------------------------------------------------------------------------


def _obstore(server: S3Server, bucket: str) -> Any:
    from obstore.store import S3Store

    return S3Store(
        bucket,
        endpoint=server.endpoint,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        region=server.region,
        client_options={"allow_http": True, "pool_max_idle_per_host": str(CONCURRENCY)},
    )


def obstore_work(
    server: S3Server, bucket: str, prefix: str, keys: list[str], listed: str
) -> dict[str, float]:
    import obstore

    store = _obstore(server, bucket)

    async def bounded(calls: list[Any]) -> list[Any]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(call: Any) -> Any:
            async with gate:
                return await call()

        return await asyncio.gather(*(one(c) for c in calls))

    def creates() -> list[Any]:
        calls = [lambda k=k: obstore.put_async(store, prefix + k, BODY, mode="create") for k in keys]
        return asyncio.run(bounded(calls))

    def heads() -> list[Any]:
        return asyncio.run(bounded([lambda k=k: obstore.head_async(store, prefix + k) for k in keys]))

    create, _ = _timed(creates)
    stat, stats = _timed(heads)
    assert len(stats) == len(keys)  # type: ignore[arg-type]
    lst, n = _timed(lambda: sum(len(batch) for batch in obstore.list(store, listed, chunk_size=1000)))
    return {"create": create, "stat": stat, "list": lst, "listed": float(n)}  # type: ignore[arg-type]


def obstore_swap(server: S3Server, bucket: str) -> str:
    import obstore

    store = _obstore(server, bucket)
    first = obstore.put(store, "swap-obstore/k", b"1")
    try:
        obstore.put(store, "swap-obstore/k", b"2", mode={"e_tag": first["e_tag"]})
    except Exception as exc:  # obstore's PreconditionError (or the server's refusal of the etag's form)
        return f"no ({type(exc).__name__}, etag sent as {first['e_tag']!r})"
    return "yes"


# -- aiobotocore -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _aio_client(server: S3Server) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        max_pool_connections=CONCURRENCY + 16,
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 4},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=config,
    ) as client:
        yield client


def aiobotocore_work(
    server: S3Server, bucket: str, prefix: str, keys: list[str], listed: str
) -> dict[str, float]:
    async def work() -> dict[str, float]:
        async with _aio_client(server) as s3:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def put(key: str) -> Any:
                async with gate:
                    return await s3.put_object(Bucket=bucket, Key=prefix + key, Body=BODY, IfNoneMatch="*")

            async def head(key: str) -> Any:
                async with gate:
                    return await s3.head_object(Bucket=bucket, Key=prefix + key)

            async def listing() -> int:
                n = 0
                async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listed):
                    n += len(page.get("Contents", []))
                return n

            start = time.perf_counter()
            await asyncio.gather(*(put(k) for k in keys))
            create = time.perf_counter() - start
            start = time.perf_counter()
            await asyncio.gather(*(head(k) for k in keys))
            stat = time.perf_counter() - start
            start = time.perf_counter()
            n = await listing()
            return {"create": create, "stat": stat, "list": time.perf_counter() - start, "listed": float(n)}

    return asyncio.run(work())


def aiobotocore_swap(server: S3Server, bucket: str) -> str:
    async def swap() -> str:
        async with _aio_client(server) as s3:
            first = await s3.put_object(Bucket=bucket, Key="swap-aio/k", Body=b"1")
            try:
                await s3.put_object(Bucket=bucket, Key="swap-aio/k", Body=b"2", IfMatch=first["ETag"])
            except Exception as exc:  # botocore's ClientError: 412
                return f"no ({type(exc).__name__}, etag sent as {first['ETag']!r})"
            return "yes"

    return asyncio.run(swap())


WORK: dict[str, tuple[str, Work, Callable[[S3Server, str], str]]] = {
    "boto3": ("boto3", boto3_work, boto3_swap),
    "obstore": ("obstore", obstore_work, obstore_swap),
    "aiobotocore": ("aiobotocore", aiobotocore_work, aiobotocore_swap),
}


# -- the run ---------------------------------------------------------------------------------------


def installed(client: str) -> str | None:
    """The client's version, or None if it cannot be imported here."""
    try:
        __import__(WORK[client][0])
        return importlib.metadata.version(WORK[client][0])
    except Exception:
        return None


def _fill(server: S3Server, bucket: str, prefix: str, n: int) -> None:
    driver = server.driver(f"s3://{bucket}/{prefix}")
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(lambda i: driver.put(f"{i:05d}", BODY), range(n)))
    finally:
        driver.close()


def run(server: S3Server, rounds: int, creates: int, list_keys: int) -> dict[str, Any]:
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    ensure_bucket(f"s3://{bucket}", session=server.session(), endpoint_url=server.endpoint)
    _fill(server, bucket, "listed", list_keys)
    clients = [c for c in CLIENTS if installed(c)]
    seconds: dict[str, dict[str, list[float]]] = {c: {w: [] for w in WORKLOADS} for c in clients}
    ratios: dict[str, dict[str, list[float]]] = {c: {w: [] for w in WORKLOADS} for c in clients}
    keys = [f"{i:05d}" for i in range(creates)]
    for r in range(rounds):
        got: dict[str, dict[str, float]] = {}
        for client in clients:  # the same order each round; boto3 first
            got[client] = WORK[client][1](server, bucket, f"r{r}/{client}/", keys, "listed/")
            if got[client]["listed"] != list_keys:
                raise AssertionError(f"{client} listed {got[client]['listed']:.0f} keys, not {list_keys}")
        for client in clients:
            for w in WORKLOADS:
                seconds[client][w].append(got[client][w])
                ratios[client][w].append(got[client][w] / got["boto3"][w])
    return {
        "versions": {c: installed(c) for c in CLIENTS},
        "swap_from_given_etag": {c: WORK[c][2](server, bucket) for c in clients},
        "boto3_seconds": {w: statistics.median(seconds["boto3"][w]) for w in WORKLOADS},
        "ratio_to_boto3": {c: {w: statistics.median(ratios[c][w]) for w in WORKLOADS} for c in clients},
    }


@contextlib.contextmanager
def servers(names: list[str], tmp: Path) -> Iterator[dict[str, S3Server]]:
    from deploy import rgw

    started: dict[str, S3Server] = {}
    with contextlib.ExitStack() as stack:
        if "moto" in names:
            server, proc = start_moto(tmp / "moto.log")
            stack.callback(stop_process, proc)
            started["moto"] = server
        if "rgw" in names:
            cluster = rgw.start(tmp / "rgw")
            stack.callback(cluster.stop)
            started["rgw"] = S3Server(cluster.endpoint, cluster.access_key, cluster.secret_key, rgw.REGION)
        yield started


def report(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, res in results.items():
        versions = ", ".join(f"{c} {v or 'not installed'}" for c, v in res["versions"].items())
        lines.append(f"\n{name}: {versions}")
        heads = " ".join(f"{c + ' ×boto3':>18}" for c in res["ratio_to_boto3"])
        lines.append(f"{'work':8} {'boto3 (s)':>10} {heads}")
        for w in WORKLOADS:
            cells = " ".join(f"{res['ratio_to_boto3'][c][w]:>18.2f}" for c in res["ratio_to_boto3"])
            lines.append(f"{w:8} {res['boto3_seconds'][w]:>10.3f} {cells}")
        lines.append("If-Match swap from the etag the client returned works:")
        lines.extend(f"  {c}: {ok}" for c, ok in res["swap_from_given_etag"].items())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="rgw,moto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--creates", type=int, default=500)
    parser.add_argument("--list-keys", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp, servers(
        args.servers.split(","), Path(tmp)
    ) as started:
        for name, server in started.items():
            results[name] = run(server, args.rounds, args.creates, args.list_keys)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
