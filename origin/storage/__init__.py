"""Where the origin keeps its objects (issue 18): a driver per backend behind one seam.

- ``driver.py``: the ``Driver`` interface and its contract, method by method;
- ``store.py``: ``Store``, the wrapper the origin calls (key checks, metrics, errors, paging,
  read-modify-write on compare-and-swap);
- ``file.py``: the filesystem driver (the default, the layout under ``--data``/store);
- ``s3.py``: the S3 driver (AWS S3, Ceph RGW, MinIO, moto...).

``open_storage(url, data)`` picks the driver from ``--storage``: ``file:///path``,
``s3://bucket/prefix``, or nothing (``<data>/store``).  One contract suite
(tests/test_storage_contract.py) runs against every driver.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common.errors import ConfigError
from origin.storage.driver import PAGE, Blob, Driver, DriverError, Item, Page, Stat
from origin.storage.file import FileDriver
from origin.storage.store import Observe, Store, check_key

__all__ = [
    "PAGE",
    "Blob",
    "Driver",
    "DriverError",
    "FileDriver",
    "FileStorage",
    "Item",
    "Observe",
    "Page",
    "Stat",
    "Store",
    "check_key",
    "open_storage",
    "storage_url",
]


class FileStorage(Store):
    """A ``Store`` on the filesystem driver at ``root``."""

    def __init__(self, root: str | os.PathLike[str], *, sweep: bool = True) -> None:
        super().__init__(FileDriver(root, sweep=sweep))


def storage_url(url: str | None, data: str | os.PathLike[str]) -> str:
    """The storage URL in full: ``url``, or the default ``file://<data>/store``."""
    if not url:
        return (Path(data).resolve() / "store").as_uri()
    return url


def open_storage(
    url: str | None,
    data: str | os.PathLike[str],
    *,
    observe: Observe | None = None,
    existing: bool = False,
) -> Store:
    """The store ``url`` names (see the module's doc); ConfigError for anything else.
    ``existing`` (a tool on a store origins use, ``minicdn gc``): a file store must exist
    already (a typo must not look like an empty store) and is opened without sweeping its
    temp files (an origin may be writing them)."""
    full = storage_url(url, data)
    parts = urlsplit(full)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in {"", "localhost"} or not path.startswith("/"):
            raise ConfigError(f"--storage {full}: a file URL is file:///absolute/path")
        if existing and not Path(path).is_dir():
            raise ConfigError(f"--storage {full}: no store there ({path} is not a directory)")
        return Store(FileDriver(path, sweep=not existing), observe=observe)
    if parts.scheme == "s3":
        from botocore.exceptions import BotoCoreError  # boto3 is imported only for an S3 store

        from origin.storage.s3 import S3Driver

        try:
            driver = S3Driver.from_url(full)
        except (ValueError, BotoCoreError) as exc:  # a malformed AWS_ENDPOINT_URL, an unknown profile...
            raise ConfigError(f"--storage {full}: {exc}") from exc
        return Store(driver, observe=observe)
    raise ConfigError(f"--storage {full!r}: expected file:///path or s3://bucket/prefix")
