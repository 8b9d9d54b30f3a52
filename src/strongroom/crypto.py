"""Keys and ciphers: the master key, its passphrase wrapping (Argon2id), keyed blob IDs, AEAD.

The master key is random; everything else is derived from it, so that one wrapped key in the
vault is all another machine needs to restore, given the passphrase.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

import blake3
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from strongroom.errors import IntegrityError, UsageError, WrongPassphrase

MIN_PASSPHRASE = 16
TAG_BYTES = 16
MASTER_KEY_BYTES = 64
NONCE_BYTES = 12
ID_BYTES = 32
_KEYFILE_AAD = b"strongroom keyfile v1"
# Argon2id at 64 MiB and 3 passes: about 0.12 s here, costly enough for an offline guesser.
_KDF_PARAMS = {"time_cost": 3, "memory_cost": 65536, "parallelism": 2}
# The only parameter sets a key file may ask for. The file comes from the vault (restores from
# another machine) and Argon2 cannot be interrupted: a time cost of 10^7 once held an agent
# for ten minutes, deaf to SIGTERM. A future version that raises the cost adds its set here.
KNOWN_KDF_PARAMS = ({"time_cost": 3, "memory_cost": 65536, "parallelism": 2},)
_SALT_BYTES = 16


def check_passphrase_strength(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise UsageError(f"the passphrase must be at least {MIN_PASSPHRASE} characters long")


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
        try:
            return self.aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise IntegrityError("authentication failed: the data was altered or is corrupt") from None


def sealed_size(plaintext_len: int) -> int:
    return NONCE_BYTES + plaintext_len + TAG_BYTES


def _kdf(passphrase: str, salt: bytes, params: dict) -> bytes:
    return hash_secret_raw(
        passphrase.encode(), salt, hash_len=32, type=Type.ID,
        time_cost=params["time_cost"], memory_cost=params["memory_cost"], parallelism=params["parallelism"],
    )


def wrap_key(key: MasterKey, passphrase: str) -> str:
    """The key file: the master key sealed under an Argon2id-derived key, as JSON text."""
    check_passphrase_strength(passphrase)
    salt, nonce = os.urandom(_SALT_BYTES), os.urandom(NONCE_BYTES)
    wrapped = AESGCM(_kdf(passphrase, salt, _KDF_PARAMS)).encrypt(nonce, key.secret, _KEYFILE_AAD)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return json.dumps({"version": 1, "kdf": "argon2id", **_KDF_PARAMS, "salt": b64(salt),
                       "cipher": "aes-256-gcm", "nonce": b64(nonce), "wrapped": b64(wrapped)}, indent=1)


# The last key unwrapped in this process, under a digest of the key file and passphrase that
# gave it: a command whose key was derived at start-up (cli/earlykey.py) gets it back here
# without a second Argon2 run. Never written anywhere; the process holds the key anyway.
_last_unwrapped: tuple[bytes, MasterKey] | None = None


def unwrap_key(keyfile: str, passphrase: str) -> MasterKey:
    """The master key from its key file; refuses files this version did not write before
    spending any time on the KDF."""
    global _last_unwrapped
    doc, salt, nonce, wrapped = _parse_keyfile(keyfile)
    inputs = blake3.blake3(json.dumps([keyfile, passphrase]).encode()).digest()
    if _last_unwrapped is not None and hmac.compare_digest(_last_unwrapped[0], inputs):
        return _last_unwrapped[1]
    kek = _kdf(passphrase, salt, doc)
    try:
        secret = AESGCM(kek).decrypt(nonce, wrapped, _KEYFILE_AAD)
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase: it does not unlock this machine's key") from None
    key = MasterKey(secret)
    _last_unwrapped = (inputs, key)
    return key


def check_keyfile(keyfile: str) -> None:
    """Refuses (IntegrityError) a key file this version could not open."""
    _parse_keyfile(keyfile)


def _parse_keyfile(keyfile: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    try:
        doc = json.loads(keyfile)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        salt, nonce, wrapped = (base64.b64decode(doc[k], validate=True) for k in ("salt", "nonce", "wrapped"))
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"the key file is malformed ({exc})") from None
    if doc.get("version") != 1 or doc.get("kdf") != "argon2id" or doc.get("cipher") != "aes-256-gcm":
        raise IntegrityError("the key file has a format this version does not know")
    params = {k: doc.get(k) for k in _KDF_PARAMS}
    if params not in KNOWN_KDF_PARAMS:
        shown = ", ".join(f"{k} {v!r}" for k, v in params.items())
        raise IntegrityError(f"the key file asks for Argon2id parameters this version does not use ({shown}); "
                             "refused, as unknown parameters could stall this machine")
    if len(salt) != _SALT_BYTES or len(nonce) != NONCE_BYTES or len(wrapped) != MASTER_KEY_BYTES + TAG_BYTES:
        raise IntegrityError("the key file is malformed (salt, nonce or wrapped key of the wrong length)")
    return doc, salt, nonce, wrapped
