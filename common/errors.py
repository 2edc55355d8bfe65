"""The one error tree of minicdn.

::

    MinicdnError                      code            (HTTP status, see common.http)
    ├── BadRequest                    bad_request     400
    │   ├── InvalidId                 invalid_id
    │   ├── InvalidName               invalid_name    (app id, version, channel)
    │   ├── BadArchive                bad_archive     (not an archive, corrupt)
    │   └── UnsafeArchive             unsafe_archive  (.., absolute, links, devices)
    ├── Unauthorized                  unauthorized    401
    ├── NotFound                      not_found       404
    ├── RequestTimeout                timeout         408 (a request body too slow)
    ├── Conflict                      conflict        409
    ├── TooLarge                      too_large       413 (upload, bomb, batch)
    ├── IntegrityError                integrity       (bytes do not match their id)
    ├── SignatureError                bad_signature   (envelope fails to verify)
    ├── RefRejected                   ref_rejected    (expired or rolled back)
    │   ├── ExpiredRef                expired
    │   └── RollbackRef               rollback
    ├── UpstreamError                 upstream        502
    │   └── LoopDetected              loop_detected   508 (a request came back to an edge)
    ├── ConfigError                   config          (names the offending key)
    ├── StorageUnavailable            storage_unavailable 503 (the origin's object store failed)
    └── StoreError                    store           (a client's local store or state is unusable)

Third-party errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BadArchive",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "ExpiredRef",
    "IntegrityError",
    "InvalidId",
    "InvalidName",
    "LoopDetected",
    "MinicdnError",
    "NotFound",
    "RefRejected",
    "RequestTimeout",
    "RollbackRef",
    "SignatureError",
    "StorageUnavailable",
    "StoreError",
    "TooLarge",
    "Unauthorized",
    "UnsafeArchive",
    "UpstreamError",
]


class MinicdnError(Exception):
    """Base of every error minicdn raises on purpose; ``code`` is stable and machine-readable."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(MinicdnError):
    code = "bad_request"


class InvalidId(BadRequest):
    code = "invalid_id"


class InvalidName(BadRequest):
    code = "invalid_name"


class BadArchive(BadRequest):
    code = "bad_archive"


class UnsafeArchive(BadRequest):
    code = "unsafe_archive"


class Unauthorized(MinicdnError):
    code = "unauthorized"


class NotFound(MinicdnError):
    code = "not_found"


class UnknownPackage(NotFound):
    """An open request (common/opening.py) names a package the version does not have."""

    code = "unknown_package"


class RequestTimeout(MinicdnError):
    code = "timeout"


class Conflict(MinicdnError):
    code = "conflict"


class TooLarge(MinicdnError):
    code = "too_large"


class IntegrityError(MinicdnError):
    code = "integrity"


class SignatureError(MinicdnError):
    code = "bad_signature"


class RefRejected(MinicdnError):
    code = "ref_rejected"


class ExpiredRef(RefRejected):
    code = "expired"


class RollbackRef(RefRejected):
    code = "rollback"


class UpstreamError(MinicdnError):
    code = "upstream"


class LoopDetected(UpstreamError):
    """Edges forward to each other in a circle (or past the hop limit): refused at once."""

    code = "loop_detected"


class ConfigError(MinicdnError):
    code = "config"


class StoreError(MinicdnError):
    """The client's own store cannot be used: its state file is corrupt, another fetch holds
    it, or writing to it or to the install directory failed."""

    code = "store"


class StorageUnavailable(MinicdnError):
    """The origin's storage backend failed (I/O error, S3 unreachable or 5xx): answered 503
    with Retry-After, since the same request may succeed once the store is back."""

    code = "storage_unavailable"
