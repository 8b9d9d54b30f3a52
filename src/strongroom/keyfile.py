"""The key file's format and the passphrase's key derivation (Argon2id), with only the
standard library and argon2 loaded.

Argon2 holds 64 MiB while it runs, and a command's peak memory is what it holds then. So
cli/earlykey.py derives the key-encrypting key here at start-up, on top of ~13 MiB
(interpreter and argon2) rather than ~25 with cryptography and blake3 loaded, and leaves it
in a memo; crypto.py then opens the wrapped master key with it (AES-GCM) without a second
run. The memo is of a pure function of (passphrase, salt, parameters): a wrong passphrase
gives a key that opens nothing, and crypto.py refuses it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from argon2.low_level import Type, hash_secret_raw

from strongroom.errors import IntegrityError, UsageError

MIN_PASSPHRASE = 16
TAG_BYTES = 16
MASTER_KEY_BYTES = 64
NONCE_BYTES = 12
SALT_BYTES = 16
# Argon2id at 56 MiB and 4 passes: about 0.12 s here. It costs an offline guesser at least what
# RFC 9106's second recommendation (64 MiB, 3 passes; key files written before 2026-12-05) does:
# more memory traffic per guess (224 against 192 MiB-passes) and a larger memory-time product
# (56² x 4 against 64² x 3), while every command that opens the key peaks 8 MiB lower (the
# derivation's memory comes on top of the interpreter's, at start-up).
KDF_PARAMS = {"time_cost": 4, "memory_cost": 57344, "parallelism": 2}
# The only parameter sets a key file may ask for. The file comes from the vault (restores from
# another machine) and Argon2 cannot be interrupted: a time cost of 10^7 once held an agent
# for ten minutes, deaf to SIGTERM. A future version that raises the cost adds its set here.
KNOWN_KDF_PARAMS = (KDF_PARAMS, {"time_cost": 3, "memory_cost": 65536, "parallelism": 2})

# The last key-encrypting key derived in this process, under a digest of its inputs. Never
# written anywhere; the process holds the master key it opens anyway.
_last_kek: tuple[bytes, bytes] | None = None


def check_passphrase_strength(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise UsageError(f"the passphrase must be at least {MIN_PASSPHRASE} characters long")


def parse(keyfile: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """(document, salt, nonce, wrapped key); refuses (IntegrityError) a file this version did
    not write, before any time is spent on the KDF."""
    try:
        doc = json.loads(keyfile)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        salt, nonce, wrapped = (base64.b64decode(doc[k], validate=True) for k in ("salt", "nonce", "wrapped"))
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"the key file is malformed ({exc})") from None
    if doc.get("version") != 1 or doc.get("kdf") != "argon2id" or doc.get("cipher") != "aes-256-gcm":
        raise IntegrityError("the key file has a format this version does not know")
    params = {k: doc.get(k) for k in KDF_PARAMS}
    if params not in KNOWN_KDF_PARAMS:
        shown = ", ".join(f"{k} {v!r}" for k, v in params.items())
        raise IntegrityError(f"the key file asks for Argon2id parameters this version does not use ({shown}); "
                             "refused, as unknown parameters could stall this machine")
    if len(salt) != SALT_BYTES or len(nonce) != NONCE_BYTES or len(wrapped) != MASTER_KEY_BYTES + TAG_BYTES:
        raise IntegrityError("the key file is malformed (salt, nonce or wrapped key of the wrong length)")
    return doc, salt, nonce, wrapped


def derive(passphrase: str, salt: bytes, params: dict[str, Any]) -> bytes:
    """Argon2id of the passphrase: the key that wraps the master key."""
    return hash_secret_raw(
        passphrase.encode(), salt, hash_len=32, type=Type.ID,
        time_cost=params["time_cost"], memory_cost=params["memory_cost"], parallelism=params["parallelism"],
    )


def kek(keyfile: str, passphrase: str) -> tuple[bytes, bytes, bytes]:
    """(nonce, wrapped master key, the key that opens it for this passphrase), derived once
    per process for the same file and passphrase."""
    global _last_kek
    doc, salt, nonce, wrapped = parse(keyfile)
    if _last_kek is None or not _same_inputs(_last_kek[0], keyfile, passphrase):
        derived = derive(passphrase, salt, doc)
        _last_kek = (_inputs(keyfile, passphrase), derived)
    return nonce, wrapped, _last_kek[1]


# hashlib and hmac load OpenSSL's libcrypto (3.7 MiB resident): only after the first
# derivation, so that its 64 MiB come on top of less.
def _inputs(keyfile: str, passphrase: str) -> bytes:
    import hashlib  # noqa: PLC0415 - see above

    return hashlib.blake2b(json.dumps([keyfile, passphrase]).encode()).digest()


def _same_inputs(memo: bytes, keyfile: str, passphrase: str) -> bool:
    import hmac  # noqa: PLC0415 - see above

    return hmac.compare_digest(memo, _inputs(keyfile, passphrase))
