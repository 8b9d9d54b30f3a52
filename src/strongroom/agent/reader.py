"""Reading blobs back from the vault: locate, range-read, decrypt, verify, decompress."""

from __future__ import annotations

import threading
from collections import OrderedDict

from strongroom import blobs
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError, VaultError
from strongroom.model import Entry, decode_tree
from strongroom.vault.interface import Vault
from strongroom.vault.service import BlobLocation

_LOCATE_BATCH = 4096
_TREE_CACHE = 256


class BlobReader:
    def __init__(self, vault: Vault, key: MasterKey) -> None:
        self.vault, self.key = vault, key
        self.locations: dict[bytes, BlobLocation] = {}
        self.trees: OrderedDict[bytes, list[Entry]] = OrderedDict()
        self.lock = threading.Lock()

    def locate(self, ids: list[bytes]) -> None:
        """Looks up where blobs lie, in batches, ahead of reading them."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self.locations]
        for start in range(0, len(wanted), _LOCATE_BATCH):
            self.locations.update(self.vault.blob_locations(wanted[start:start + _LOCATE_BATCH]))

    def location(self, blob_id: bytes) -> BlobLocation:
        if blob_id not in self.locations:
            self.locate([blob_id])
        try:
            return self.locations[blob_id]
        except KeyError:
            raise VaultError(f"blob {blob_id.hex()[:16]} is not in the vault") from None

    def read(self, blob_id: bytes) -> bytes:
        loc = self.location(blob_id)
        envelope = self.vault.read_range(loc.pack, loc.offset, loc.length)
        try:
            return blobs.decode(self.key, blob_id, envelope)
        except IntegrityError as exc:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} in pack {loc.pack}: {exc}") from None

    def tree(self, tree_id: bytes) -> list[Entry]:
        with self.lock:
            if tree_id in self.trees:
                self.trees.move_to_end(tree_id)
                return self.trees[tree_id]
        entries = decode_tree(self.read(tree_id))
        with self.lock:
            self.trees[tree_id] = entries
            if len(self.trees) > _TREE_CACHE:
                self.trees.popitem(last=False)
        return entries
