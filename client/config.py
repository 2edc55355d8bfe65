"""The client's settings, validated where they are made.

Each check names the ``minicdn fetch`` flag that sets the value (or, for the settings that
have no flag, the field), so the command line can show a ``ConfigError`` as its usage
error (exit status 2) without translating it.  Only values that can never work are
refused: an empty edge list, no pinned key, negative sizes and durations, batches of no
ids or of more than an edge answers (docs/design.md: at most 1024 ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.plan import check_preference
from common.errors import ConfigError
from common.signing import PublicKey
from common.tls import client_context

__all__ = ["MAX_BATCH", "ClientConfig"]

MAX_BATCH = 1024  # ids an edge accepts in one POST /v1/chunks:batch


@dataclass(frozen=True)
class ClientConfig:
    edges: tuple[str, ...]  # --edge, in failover order
    public_keys: tuple[PublicKey, ...]  # --public-key: a ref or manifest must verify with one
    store_dir: Path  # --store: chunks, manifests, state.json and the lock
    store_size: int = 1 << 30  # --store-size: bytes the store is collected down to
    batch_size: int = 128  # chunk ids per batch request
    batches_in_flight: int = 4  # batch requests at once
    timeout: float = 15.0  # --timeout: seconds, per request (0: none, as aiohttp reads it)
    cooldown: float = 5.0  # seconds a failed edge is skipped
    retry_for: float = 10.0  # --retry-for: each request is retried at least this long (client/transport.py)
    plan: str = "auto"  # --plan: auto | delta | chunks | bundle (client/plan.py)
    ca: Path | None = None  # --ca: PEM CA certificates https edges may be signed by, besides the system's

    def __post_init__(self) -> None:
        if not self.edges:
            raise ConfigError("--edge: at least one edge URL is needed")
        if not self.public_keys:
            raise ConfigError("--public-key: at least one pinned key is needed")
        for key, value in (
            ("--store-size", self.store_size),
            ("--timeout", self.timeout),
            ("--retry-for", self.retry_for),
            ("cooldown", self.cooldown),
        ):
            if value < 0:
                raise ConfigError(f"{key}: must not be negative")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ConfigError(f"batch_size: {self.batch_size} is not between 1 and {MAX_BATCH}")
        if self.batches_in_flight < 1:
            raise ConfigError(f"batches_in_flight: {self.batches_in_flight} is not at least 1")
        check_preference(self.plan)
        if self.ca is not None:
            client_context(self.ca, "--ca")  # refused now, naming the flag, not at the first request
