"""What the vault's HTTP API and its client agree on: sizes, media types, how errors travel.

Kept apart from the API so that the agent imports none of the server's libraries.
"""

from __future__ import annotations

from strongroom.errors import (
    CredentialsError,
    IntegrityError,
    MissingObject,
    StrongroomError,
    UsageError,
    VaultError,
    VaultFull,
    VaultReadOnly,
)

MSGPACK = "application/x-msgpack"
ID_SIZE = 32  # a blob ID: keyed BLAKE3
# The largest pack accepted: data packs are ~8 MiB, but one directory of a million entries
# makes a tree blob of ~100 MB, and that travels in a pack of its own. Nothing the vault
# answers is larger (the agent refuses an answer past it: vault/client.py).
MAX_PACK_BYTES = 256 * 1024 * 1024
MAX_LOCATE = 65536  # blob IDs in one location query
REFS_PART_IDS = 262144  # blob IDs in one part of a point's refs upload: 8 MiB
MAX_REFS_PARTS = 1_000_000  # parts of one point: 262 G blob IDs, far beyond any machine
# One-line errors travel by class name, so that the agent raises what it would have raised
# in-process and prints the same message whether its vault is embedded or served. A class
# comes before its base: an error takes the first status whose class it is.
ERROR_STATUS: dict[type[StrongroomError], int] = {
    MissingObject: 404, VaultFull: 507, VaultReadOnly: 507, UsageError: 400, CredentialsError: 403, IntegrityError: 422, VaultError: 409,
    StrongroomError: 500}
ERROR_CLASSES: dict[str, type[StrongroomError]] = {cls.__name__: cls for cls in ERROR_STATUS}
