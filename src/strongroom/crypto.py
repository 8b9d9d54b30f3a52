"""Keys and ciphers: the master key, its passphrase wrapping, keyed blob IDs, AEAD (the key
file's format and its Argon2id derivation: keyfile.py).

The master key is random; everything else is derived from it, so that one wrapped key in the
vault is all another machine needs to restore, given the passphrase.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from strongroom.errors import IntegrityError, WrongPassphrase
from strongroom.keyfile import (KDF_PARAMS, MASTER_KEY_BYTES, NONCE_BYTES, SALT_BYTES, TAG_BYTES,
                                check_passphrase_strength, derive, kek, parse)

ID_BYTES = 32
_KEYFILE_AAD = b"strongroom keyfile v1"
_ALTERED = "authentication failed: the data was altered or is corrupt"


@dataclass(frozen=True)
class MasterKey:
    """The random root secret and the subkeys derived from it for each purpose."""

    secret: bytes

    def __post_init__(self) -> None:
        derive = lambda context: blake3.blake3(self.secret, derive_key_context=context).digest()  # noqa: E731
        object.__setattr__(self, "id_key", derive("strongroom 2026-11 blob id"))
        object.__setattr__(self, "aead", AESGCM(derive("strongroom 2026-11 blob aead")))
        seed = int.from_bytes(derive("strongroom 2026-11 chunker seed")[:8], "little")
        # Secret chunk boundaries keep file sizes from showing through chunk lengths.
        object.__setattr__(self, "chunker_seed", seed >> 1 or 1)

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls(os.urandom(MASTER_KEY_BYTES))

    def replace_proof(self) -> bytes:
        """What `register --replace` shows the vault to take this machine's name back: derived
        from the key, so only its holder has it; the vault keeps only its hash."""
        return blake3.blake3(self.secret, derive_key_context="strongroom 2026-12 replace proof").digest()

    def key_check(self) -> str:
        """The hash of the replace proof, as the vault keeps it."""
        return blake3.blake3(self.replace_proof()).hexdigest()

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.id_key).digest()

    def seal(self, aad: bytes, plaintext: bytes | memoryview) -> bytes:
        out = bytearray(sealed_size(len(plaintext)))
        self.seal_into(aad, plaintext, memoryview(out))
        return bytes(out)

    def seal_into(self, aad: bytes, plaintext: bytes | memoryview, out: memoryview) -> int:
        """Writes nonce ‖ ciphertext ‖ tag at the start of `out`; returns the length written."""
        size = sealed_size(len(plaintext))
        out[:NONCE_BYTES] = nonce = os.urandom(NONCE_BYTES)
        self.aead.encrypt_into(nonce, plaintext, aad, out[NONCE_BYTES:size])
        return size

    def open(self, aad: bytes, sealed: bytes | memoryview) -> bytes:
        view = memoryview(sealed)  # slices of a view: the ciphertext is not copied before decrypting
        try:
            return self.aead.decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], aad)
        except InvalidTag:
            raise IntegrityError(_ALTERED) from None

    def open_into(self, aad: bytes, sealed: bytes | memoryview, out: memoryview) -> None:
        """`open` into `out`, which is `len(sealed) - NONCE_BYTES - TAG_BYTES` long. On an
        IntegrityError `out` holds unverified bytes (AES-GCM checks the tag after decrypting
        into it): the caller must drop them, never write them anywhere."""
        view = memoryview(sealed)
        try:
            self.aead.decrypt_into(view[:NONCE_BYTES], view[NONCE_BYTES:], aad, out)
        except InvalidTag:
            raise IntegrityError(_ALTERED) from None


def sealed_size(plaintext_len: int) -> int:
    return NONCE_BYTES + plaintext_len + TAG_BYTES


def wrap_key(key: MasterKey, passphrase: str) -> str:
    """The key file: the master key sealed under an Argon2id-derived key, as JSON text."""
    check_passphrase_strength(passphrase)
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    wrapped = AESGCM(derive(passphrase, salt, KDF_PARAMS)).encrypt(nonce, key.secret, _KEYFILE_AAD)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return json.dumps({"version": 1, "kdf": "argon2id", **KDF_PARAMS, "salt": b64(salt),
                       "cipher": "aes-256-gcm", "nonce": b64(nonce), "wrapped": b64(wrapped)}, indent=1)


def unwrap_key(keyfile: str, passphrase: str) -> MasterKey:
    """The master key from its key file; refuses files this version did not write before
    spending any time on the KDF (derived once per process: see keyfile.py)."""
    nonce, wrapped, key = kek(keyfile, passphrase)
    try:
        secret = AESGCM(key).decrypt(nonce, wrapped, _KEYFILE_AAD)
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase: it does not unlock this machine's key") from None
    return MasterKey(secret)


def check_keyfile(keyfile: str) -> None:
    """Refuses (IntegrityError) a key file this version could not open."""
    parse(keyfile)


