"""Every storage key the origin uses, and only here.  The tree (a key is a path under
the storage root; the filesystem backend maps it 1:1, an object store uses it as the key):

::

    objects/
      chunks/<h0h1>/<h2h3>/<hex>     one zstd frame per chunk (id = sha256 of raw bytes)
      bundles/<h0h1>/<h2h3>/<hex>    a bundle or delta (id = sha256 of stored bytes)
      manifests/<h0h1>/<hex>         metadata by the sha256 of its bytes: a signed version
                                     manifest envelope, a heads object, a package manifest
                                     (format 2, common/pkgmeta.py)
    apps/<app>/
      versions/<version>             msgpack {manifest, manifests, heads, enriched, digest,
                                     created, published}: the version exists once this record
                                     does (written last, after the objects it names; heads[i]
                                     is the heads object of manifests[i]); enrichment rewrites
                                     it (origin/enrich.py)
      channels/<channel>             the current signed ref envelope
      history/<channel>              msgpack [[unix time, version, serial, kind, rollout],
                                     ...]: every move (origin/history.py), for rollback
                                     and delta bases
      pending/<channel>              msgpack {version, percent, since}: a publish's move
                                     waiting for the version's enriched manifest; empty
                                     once made or cancelled (emptied by swap, never deleted)
    changes/epoch                    the change feed's epoch (16 hex), made once
    changes/<seq>                    one channel move each (20 digits): the replicas' shared
                                     change feed (origin/feed.py), the last 8,192 kept
    leases/enrich/<app>/<version>    a replica enriching that version (origin/leases.py)
    locks/gc                         a gc sweep in progress (origin/gc.py)
    locks/publish/<owner>            a publish in progress (origin/gc.py)

(the origin's working directory ``--data`` holds tmp/: uploads and extraction in progress,
swept at start; it is not part of the store.)

Two-level fan-out keeps directories small (65,536 leaves) for millions of chunks.
"""

from __future__ import annotations

from common.ids import check_app, check_channel, check_version

__all__ = [
    "APPS",
    "CHANGES",
    "GC_LOCK",
    "PUBLISH_LOCKS",
    "app_prefix",
    "bundle_key",
    "change_key",
    "channel_key",
    "channels_prefix",
    "chunk_key",
    "enrich_lease_key",
    "history_key",
    "manifest_key",
    "pending_key",
    "pending_prefix",
    "publish_lock_key",
    "version_key",
    "versions_prefix",
]

APPS = "apps/"
CHANGES = "changes/"
GC_LOCK = "locks/gc"
PUBLISH_LOCKS = "locks/publish/"


def chunk_key(hexid: str) -> str:
    return f"objects/chunks/{hexid[:2]}/{hexid[2:4]}/{hexid}"


def bundle_key(hexid: str) -> str:
    return f"objects/bundles/{hexid[:2]}/{hexid[2:4]}/{hexid}"


def manifest_key(hexid: str) -> str:
    return f"objects/manifests/{hexid[:2]}/{hexid}"


def app_prefix(app: str) -> str:
    return f"apps/{check_app(app)}/"


def versions_prefix(app: str) -> str:
    return app_prefix(app) + "versions/"


def version_key(app: str, version: str) -> str:
    return versions_prefix(app) + check_version(version)


def channels_prefix(app: str) -> str:
    return app_prefix(app) + "channels/"


def channel_key(app: str, channel: str) -> str:
    return channels_prefix(app) + check_channel(channel)


def history_key(app: str, channel: str) -> str:
    return app_prefix(app) + "history/" + check_channel(channel)


def pending_prefix(app: str) -> str:
    return app_prefix(app) + "pending/"


def pending_key(app: str, channel: str) -> str:
    return pending_prefix(app) + check_channel(channel)


def change_key(seq: int) -> str:
    return f"{CHANGES}{seq:020d}"


def enrich_lease_key(app: str, version: str) -> str:
    return f"leases/enrich/{check_app(app)}/{check_version(version)}"


def publish_lock_key(owner: str) -> str:
    return PUBLISH_LOCKS + owner
