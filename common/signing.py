"""Ed25519 keys and the signed envelope of DESIGN.md.

Envelope: ``{"payload": <bytes>, "key_id": <str>, "signature": <bytes>}`` in canonical
msgpack; the signature covers ``payload`` exactly; ``key_id`` is the first 16 hex digits
of SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common import wire
from common.errors import BadRequest, ConfigError, SignatureError
from common.fsutil import atomic_write

__all__ = [
    "PublicKey",
    "SigningKey",
    "generate_keypair",
    "key_id_of",
    "open_envelope",
    "seal",
]


def key_id_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    def verify(self, signature: bytes, payload: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, payload)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_hex(cls, text: str, *, source: str = "public key") -> PublicKey:
        text = text.strip()
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise ConfigError(f"{source}: not hex") from exc
        if len(raw) != 32:
            raise ConfigError(f"{source}: an Ed25519 public key is 64 hex digits")
        return cls(raw)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"public key {path}: {exc.strerror}") from exc
        return cls.from_hex(text, source=f"public key {path}")


class SigningKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = PublicKey(raw)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, payload: bytes) -> bytes:
        return self._private.sign(payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"signing key {path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"signing key {path}: not a PKCS#8 PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"signing key {path}: not an Ed25519 key")
        return cls(key)

    def pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def generate_keypair(out_dir: str | os.PathLike[str]) -> SigningKey:
    """Write ``signing.key`` (PKCS#8 PEM, mode 0600) and ``public.key`` (64 hex) to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "signing.key").exists():
        raise ConfigError(f"keygen: {out / 'signing.key'} exists; refusing to overwrite it")
    key = SigningKey(Ed25519PrivateKey.generate())
    atomic_write(out / "signing.key", key.pem(), mode=0o600)
    atomic_write(out / "public.key", (key.public.raw.hex() + "\n").encode())
    return key


def seal(key: SigningKey, body: object) -> bytes:
    """The envelope bytes for ``body`` signed by ``key``."""
    payload = wire.pack(body)
    return wire.pack({"payload": payload, "key_id": key.key_id, "signature": key.sign(payload)})


def payload_of(data: bytes, *, what: str = "envelope") -> Any:
    """The unpacked body of an envelope, NOT verified: for routing and bookkeeping by a
    party that holds no key (an edge) or trusts the bytes' source (gc on its own store).
    BadRequest if it is not an envelope."""
    env = wire.unpack(data, what=what)
    if not isinstance(env, dict) or not isinstance(env.get("payload"), bytes):
        raise BadRequest(f"{what} is not a signed envelope")
    return wire.unpack(env["payload"], what=what)


def open_envelope(data: bytes, keys: Iterable[PublicKey], *, what: str = "envelope") -> object:
    """Verify an envelope against trusted keys and return its unpacked body."""
    try:
        env = wire.unpack(data, what=what)
    except BadRequest as exc:
        raise SignatureError(exc.message) from exc
    if not isinstance(env, dict):
        raise SignatureError(f"{what} is not a map")
    payload, key_id, sig = env.get("payload"), env.get("key_id"), env.get("signature")
    if not isinstance(payload, bytes) or not isinstance(key_id, str) or not isinstance(sig, bytes):
        raise SignatureError(f"{what} lacks payload, key_id or signature")
    for key in keys:
        if key.key_id == key_id:
            if not key.verify(sig, payload):
                raise SignatureError(f"{what}: signature does not verify with key {key_id}")
            try:
                return wire.unpack(payload, what=what)
            except BadRequest as exc:
                raise SignatureError(exc.message) from exc
    raise SignatureError(f"{what}: signed by unknown key {key_id}")
