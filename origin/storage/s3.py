"""The S3 driver (AWS S3, Ceph RGW, MinIO, moto's server...): plain boto3, synchronous, since
the origin calls its store from executor threads (docs/decisions.md says why this client).

``s3://BUCKET/PREFIX``: every key is stored as PREFIX/key.  Endpoint, region and
credentials come from boto3's own chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_PROFILE, ~/.aws/config and credentials, SSO, web
identity on Kubernetes, instance roles); with a configured endpoint (RGW, MinIO, moto) the
bucket goes in the path, not the host name.

How each part of the contract (driver.py) is met:

- etags are S3's, unquoted; ``get`` is one GetObject, ``stat`` one HeadObject, and
  ``stat_many`` runs HEADs on a thread pool of this driver (``concurrency``, 32).
- ``create``: PutObject with ``If-None-Match: *``; 412 means the key exists.  ``swap``:
  PutObject with ``If-Match``; 412 (or 404: gone) means the etag is stale.  A 409
  ConditionalRequestConflict (AWS: another conditional write to the key is in flight) is
  retried with backoff until the server decides.
- Ceph RGW answers 412 to a *quoted* etag in If-Match even when it matches, where AWS and
  moto take either form: on a 412 ``swap`` HEADs the object, and when its etag is still the
  one expected, the server refused the form, not the etag: the driver switches form for
  good and tries once more.
- ``delete`` is unconditional (RGW ignores conditional DELETEs); ``delete_many`` sends
  DeleteObjects of 1000 keys at a time.
- Any other failure is a ``DriverError`` naming the operation, the key and S3's code.

A write whose answer is lost (a timeout) may have happened: the retried ``create`` then
finds the object and returns None, as for any creator that lost.
"""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from common.errors import ConfigError
from origin.storage.driver import PAGE, Blob, DriverError, Item, Page, Stat

__all__ = ["S3Driver", "ensure_bucket", "parse_url"]

CONCURRENCY = 32  # HEADs in flight in one stat_many
DELETE_BATCH = 1000  # DeleteObjects' maximum
CONFLICT_TRIES = 6  # 409 ConditionalRequestConflict: 6 tries over about 1.5 s of backoff
AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn")

Response = dict[str, Any]


def parse_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` → (bucket, prefix ending in "/" or "")."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"--storage {url!r}: expected s3://bucket/prefix")
    prefix = parts.path.strip("/")
    return parts.netloc, prefix + "/" if prefix else ""


def _unquote(etag: str) -> str:
    return etag.strip('"')


def _stat(size: int, etag: str, modified: Any) -> Stat:
    return Stat(int(size), _unquote(etag), modified.timestamp())


def _client(
    session: boto3.session.Session, endpoint_url: str | None, config: Config | None, concurrency: int
) -> Any:
    base = Config(
        retries={"mode": "standard", "max_attempts": 4},
        max_pool_connections=concurrency + 16,  # stat_many's HEADs and the origin's own threads
        connect_timeout=5,
        read_timeout=60,
        # boto3 >= 1.36 adds CRC checksums to every upload by default, which S3-compatible
        # servers older than that change may refuse; the bytes are content-addressed anyway.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    cfg = base.merge(config) if config is not None else base
    path_style = cfg.merge(Config(s3={"addressing_style": "path"}))
    if endpoint_url is not None:
        return session.client("s3", endpoint_url=endpoint_url, config=path_style)
    client = session.client("s3", config=cfg)
    host = urlsplit(client.meta.endpoint_url).hostname or ""
    if host.endswith(AWS_HOSTS):
        return client
    client.close()  # an endpoint from AWS_ENDPOINT_URL or a profile: RGW, MinIO, moto
    return session.client("s3", config=path_style)


class S3Driver:
    """The ``Driver`` on one bucket (and prefix) of an S3 server.

    ``session``: a boto3 Session (default: a new one, which reads the standard AWS
    environment and files); ``endpoint_url``: a server other than the session's; ``config``:
    botocore settings merged over this driver's (tests shorten timeouts and retries)."""

    name = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        session: boto3.session.Session | None = None,
        endpoint_url: str | None = None,
        config: Config | None = None,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = _client(session or boto3.session.Session(), endpoint_url, config, concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="s3-stat")
        self._bucket_seen = False  # whether a HEAD of the bucket found it (stat's 404s)
        self._quoted = True  # If-Match in RFC 9110's form ("etag") until the server refuses it

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Driver:
        bucket, prefix = parse_url(url)
        return cls(bucket, prefix, **options)

    def _ask(self, op: str, key: str, none_on: tuple[int, ...] = (), **params: Any) -> Response | None:
        """One request (``op`` is the client's method): its response, or None when S3 answers
        one of the statuses ``none_on`` (a missing bucket is never "absent").  A 409
        ConditionalRequestConflict is retried; anything else raises DriverError."""
        for attempt in range(CONFLICT_TRIES):
            try:
                response: Response = getattr(self.client, op)(Bucket=self.bucket, **params)
                return response
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                code = exc.response.get("Error", {}).get("Code", "")
                if status in none_on and code != "NoSuchBucket":
                    return None
                if code == "ConditionalRequestConflict" and attempt < CONFLICT_TRIES - 1:
                    time.sleep(random.uniform(0, 0.05 * 2**attempt))
                    continue
                message = exc.response.get("Error", {}).get("Message") or ""
                raise self._failed(op, key, f"{status} {code} {message}".strip()) from exc
            except BotoCoreError as exc:
                raise self._failed(op, key, str(exc)) from exc
        raise AssertionError("unreachable")

    def _failed(self, op: str, key: str, why: str) -> DriverError:
        return DriverError(f"s3 {op} s3://{self.bucket}/{self.prefix}{key}: {why}")

    # -- reads --------------------------------------------------------------------------------

    def get(self, key: str) -> Blob | None:
        r = self._ask("get_object", key, (404,), Key=self.prefix + key)
        if r is None:
            return None
        try:
            data = r["Body"].read()
        except (BotoCoreError, OSError) as exc:  # the connection broke mid-body
            raise self._failed("get_object", key, f"reading the body: {exc}") from exc
        return Blob(data, _unquote(r["ETag"]))

    def stat(self, key: str) -> Stat | None:
        r = self._ask("head_object", key, (404,), Key=self.prefix + key)
        if r is None:
            self._bucket_exists(key)  # a HEAD's 404 has no body: no key, or no bucket?
            return None
        return _stat(r["ContentLength"], r["ETag"], r["LastModified"])

    def _bucket_exists(self, key: str) -> None:
        """DriverError if the bucket is missing (asked once; a bucket is not deleted under a
        running origin's feet, and a missing one must never read as "no such object")."""
        if self._bucket_seen:
            return
        if self._ask("head_bucket", key, (404,)) is None:
            raise self._failed("head_object", key, "404 NoSuchBucket: the bucket does not exist")
        self._bucket_seen = True

    def stat_many(self, keys: Iterable[str]) -> dict[str, Stat | None]:
        keys = builtins.list(keys)
        return dict(zip(keys, self._pool.map(self.stat, keys), strict=True))

    # -- writes -------------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        r = self._ask("put_object", key, Key=self.prefix + key, Body=data)
        assert r is not None
        return _unquote(r["ETag"])

    def create(self, key: str, data: bytes) -> str | None:
        r = self._ask("put_object", key, (412,), Key=self.prefix + key, Body=data, IfNoneMatch="*")
        return None if r is None else _unquote(r["ETag"])

    def swap(self, key: str, data: bytes, etag: str) -> str | None:
        quoted = self._quoted
        new = self._put_if_match(key, data, etag, quoted)
        if new is not None:
            return new
        now = self.stat(key)
        if now is None or now.etag != etag:
            return None  # it did change (or go)
        self._quoted = not quoted  # the etag matched: the server refused its form
        return self._put_if_match(key, data, etag, not quoted)

    def _put_if_match(self, key: str, data: bytes, etag: str, quoted: bool) -> str | None:
        form = f'"{etag}"' if quoted else etag
        r = self._ask("put_object", key, (404, 412), Key=self.prefix + key, Body=data, IfMatch=form)
        return None if r is None else _unquote(r["ETag"])

    def delete(self, key: str) -> None:
        self._ask("delete_object", key, (404,), Key=self.prefix + key)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = builtins.list(keys)
        for i in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": self.prefix + k} for k in keys[i : i + DELETE_BATCH]]
            r = self._ask("delete_objects", keys[i], Delete={"Objects": batch, "Quiet": True})
            errors = [e for e in (r or {}).get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                shown = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in errors[:5])
                raise self._failed("delete_objects", keys[i], f"{len(errors)} keys not deleted ({shown})")

    # -- listings -----------------------------------------------------------------------------

    def list(self, prefix: str, after: str | None = None, limit: int = PAGE) -> Page:
        params: dict[str, Any] = {"Prefix": self.prefix + prefix, "MaxKeys": limit}
        if after is not None:
            params["StartAfter"] = self.prefix + after
        r = self._ask("list_objects_v2", prefix, **params)
        assert r is not None
        cut = len(self.prefix)
        items = [
            Item(c["Key"][cut:], _stat(c["Size"], c["ETag"], c["LastModified"]))
            for c in r.get("Contents", [])
        ]
        return Page(items, bool(r.get("IsTruncated")))

    def names(self, prefix: str) -> builtins.list[str]:
        base = self.prefix + prefix
        found: set[str] = set()
        token: dict[str, Any] = {}
        while True:
            r = self._ask("list_objects_v2", prefix, Prefix=base, Delimiter="/", **token)
            assert r is not None
            found.update(p["Prefix"][len(base) :].rstrip("/") for p in r.get("CommonPrefixes", []))
            found.update(c["Key"][len(base) :] for c in r.get("Contents", []))
            if not r.get("IsTruncated"):
                break
            token = {"ContinuationToken": r["NextContinuationToken"]}
        found.discard("")
        return sorted(found)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()


def ensure_bucket(url: str, **options: Any) -> None:
    """Create the bucket of ``url`` unless it exists (``options``: as for S3Driver)."""
    driver = S3Driver.from_url(url, **options)
    try:
        if driver._ask("head_bucket", "", (404,)) is not None:
            return
        region = driver.client.meta.region_name
        where = {} if region in (None, "us-east-1", "aws-global") else {"LocationConstraint": region}
        try:
            driver.client.create_bucket(
                Bucket=driver.bucket, **({"CreateBucketConfiguration": where} if where else {})
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":  # a racing creator
                raise DriverError(f"s3 create_bucket {driver.bucket}: {exc}") from exc
    finally:
        driver.close()
