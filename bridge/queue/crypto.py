"""Encryption at rest of stored lead values (delivery body and headers, a dead letter's failed
command, reason and history, pinned request bodies).

Optional: with BRIDGE_ENCRYPTION_KEYS unset, values are stored in clear. The setting is a
comma-separated list of base64 32-byte keys, newest first. New values are sealed with the first
key; a stored value names its key by a short key id, so any key of the list opens it (rotation:
put the new key first, keep the old one until everything sealed with it has expired: 2 x
BRIDGE_RETENTION_S, since a delivery may be retried or held that long and a dead letter is kept
that long from its death; docs/security.md).

    sealed = MAGIC + key id (4 bytes) + nonce (12 bytes) + AES-256-GCM(plaintext) + tag (16 bytes)

The associated data binds a value to where it is stored (delivery id and field name), so a
sealed value copied to another delivery or field does not open. The key id is an HMAC of a fixed
label under the key: it names a key without revealing anything about it. Errors name key ids and
list positions, never key material.

    Keyring.from_settings(s)       the keyring of BRIDGE_ENCRYPTION_KEYS (empty when unset)
    Keyring.parse(text)            ConfigError on a malformed list (names the position, not the key)
    keyring.seal(plain, aad)       -> sealed bytes (keyring must be non-empty)
    keyring.open(sealed, aad)      -> plain bytes, or DecryptError (KeyNotConfigured: unknown key
                                      id; or a tampered value)
    is_sealed(value)               does a stored value carry the sealed format's prefix?
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.errors import BridgeError, ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from bridge.settings import Settings

SETTING = "BRIDGE_ENCRYPTION_KEYS"
MAGIC = b"\x00lbe1"  # never the first bytes of JSON, so sealed and clear JSON values are told apart
KEY_BYTES = 32
KEY_ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_ID_LABEL = b"leadbridge key id v1"


class DecryptError(BridgeError):
    """A stored value cannot be opened: its key is not configured, or it was altered."""


class KeyNotConfigured(DecryptError):
    """The value names a key that is not in the keyring: unlike an altered value, it opens again
    once the key is put back, so a caller must not take it for a value that is not there."""


@dataclass(frozen=True)
class _Key:
    key_id: bytes
    aead: AESGCM


def key_id(key: bytes) -> str:
    """The short, public name of a key (hex), as stored beside each value sealed with it."""
    return hmac.new(key, KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_BYTES].hex()


class Keyring:
    """The configured keys, newest first. An empty keyring stores in clear and opens nothing."""

    def __init__(self, keys: list[bytes]) -> None:
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError("encryption keys are 32 bytes")
        self._keys: list[_Key] = []
        if keys:
            # Imported only with keys configured: cryptography's bindings cost ~8 MiB of RSS.
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._keys = [_Key(bytes.fromhex(key_id(k)), AESGCM(k)) for k in keys]

    def __repr__(self) -> str:
        return f"Keyring(key_ids={self.key_ids})"

    def __bool__(self) -> bool:
        return bool(self._keys)

    @property
    def key_ids(self) -> list[str]:
        return [k.key_id.hex() for k in self._keys]

    @property
    def current_key_id(self) -> str:
        """The id of the key new values are sealed with ('' when encryption is off)."""
        return self._keys[0].key_id.hex() if self._keys else ""

    @classmethod
    def parse(cls, text: str | None) -> Keyring:
        """Keys from the setting's text; a malformed entry is a ConfigError naming its position."""
        if text is None or not text.strip():
            return cls([])
        keys: list[bytes] = []
        for position, part in enumerate(text.split(","), start=1):
            entry = part.strip()
            try:
                key = base64.b64decode(entry, validate=True) if entry else b""
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != KEY_BYTES:
                raise ConfigError(
                    f"{SETTING}: key {position} is not the base64 of 32 bytes "
                    "(make one with `openssl rand -base64 32`)"
                )
            keys.append(key)
        return cls(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        secret = settings.encryption_keys
        return cls.parse(secret.get_secret_value() if secret is not None else None)

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        """Encrypt with the newest key. Raises RuntimeError on an empty keyring (a bug)."""
        if not self._keys:
            raise RuntimeError("seal() needs at least one key")
        key = self._keys[0]
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + key.key_id + nonce + key.aead.encrypt(nonce, plain, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """Decrypt a sealed value with whichever configured key it names."""
        head = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES
        if not is_sealed(sealed) or len(sealed) < head + TAG_BYTES:
            raise DecryptError("stored value is not in the sealed format")
        wanted = sealed[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES]
        nonce = sealed[len(MAGIC) + KEY_ID_BYTES : head]
        candidates = [k for k in self._keys if hmac.compare_digest(k.key_id, wanted)]
        if not candidates:
            configured = ", ".join(self.key_ids) or "none"
            raise KeyNotConfigured(
                f"stored value was sealed with key id {wanted.hex()}, which is not in {SETTING} "
                f"(configured key ids: {configured})"
            )
        from cryptography.exceptions import InvalidTag

        for key in candidates:
            try:
                return key.aead.decrypt(nonce, sealed[head:], aad)
            except InvalidTag:
                continue
        raise DecryptError(f"stored value does not open with key id {wanted.hex()}: it was altered")


def is_sealed(value: bytes) -> bool:
    return value.startswith(MAGIC)


def aad(delivery_id: str, field: str) -> bytes:
    """Associated data: the place a value is stored in (delivery + field)."""
    return f"lb:d:{delivery_id}:{field}".encode()
