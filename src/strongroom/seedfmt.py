"""The offline seed folder: its layout and its index (seed.json), shared by the agent that
writes a machine's first backup into it and the vault that imports it (docs/format.md,
"Offline seeds").

A seed holds what the vault would have received online: the packs, the point's record (its
sealed manifest) and its refs. seed.json is written last, so a folder without one is a seed
backup that did not finish.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strongroom.errors import IntegrityError, UsageError

SEED_FORMAT = 1
SEED_FILE = "seed.json"
POINT_FILE = "point"  # the point's record: records.encode_binary, as the vault's points/ record
REFS_FILE = "refs"  # the point's refs, as the vault's refs/ record (vault/refs.py)
PACKS = "packs"
# What a seed folder may hold besides temp files (a fresh file system's root has lost+found).
LAYOUT = frozenset({SEED_FILE, POINT_FILE, REFS_FILE, PACKS, "lost+found"})
# 8 MiB packs: a 100 TB seed lists ~12 M of them in ~1 GB; more than this is not a seed.
MAX_INDEX_BYTES = 1 << 30

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class SeedIndex:
    """seed.json: whose seed it is, its point, and every pack it carries."""

    vault_id: str
    machine: str  # the machine's name in the vault
    token_blake3: str  # BLAKE3 of the machine's vault token, as the vault keeps it: who made the seed
    point: str
    created_ns: int
    packs: list[tuple[str, int]]  # (BLAKE3 name, size)

    def encode(self) -> bytes:
        return json.dumps({"strongroom_seed": SEED_FORMAT, "vault_id": self.vault_id, "machine": self.machine,
                           "token_blake3": self.token_blake3, "point": self.point, "created_ns": self.created_ns,
                           "packs": [list(p) for p in self.packs]}, indent=1).encode()

    @property
    def bytes(self) -> int:
        return sum(size for _name, size in self.packs)


def read_index(folder: Path) -> SeedIndex:
    """The seed's index, refused with one line when it is missing, too large or malformed."""
    path = folder / SEED_FILE
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UsageError(f"{folder} holds no finished seed (no {SEED_FILE}): run the seed backup "
                         "(`strongroom backup ... --offline-seed DIR`) again to finish it") from None
    if size > MAX_INDEX_BYTES:
        raise IntegrityError(f"{path} is {size} bytes: too large to be a seed's index")
    try:
        doc: Any = json.loads(path.read_bytes())
        if doc.get("strongroom_seed") != SEED_FORMAT:
            raise IntegrityError(f"{path} is not a Strongroom seed of format {SEED_FORMAT}")
        packs = [(str(n), int(s)) for n, s in doc["packs"]]
        index = SeedIndex(str(doc["vault_id"]), str(doc["machine"]), str(doc["token_blake3"]), str(doc["point"]),
                          int(doc["created_ns"]), packs)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise IntegrityError(f"{path} is damaged (it does not decode as a seed's index)") from None
    if not _HEX.fullmatch(index.point) or len(index.point) > 32:
        raise IntegrityError(f"{path} names an invalid point ID")
    for name, size in packs:
        if len(name) != 64 or not _HEX.fullmatch(name) or size <= 0:
            raise IntegrityError(f"{path} lists an invalid pack {name[:80]!r}")
    return index

