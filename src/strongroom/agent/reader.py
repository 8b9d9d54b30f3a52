"""Reading blobs back from the vault: locate, range-read, decrypt, verify, decompress."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator

from strongroom import blobs
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError, VaultError
from strongroom.model import Entry, decode_tree
from strongroom.vault.interface import Vault
from strongroom.vault.service import BlobLocation

_LOCATE_BATCH = 4096
_TREE_CACHE = 1024
# Blobs fetched ahead in one request each: a served vault answers a directory's trees or
# small files in one round trip instead of one each. Bounded, since prefetched blobs wait
# in memory until read.
_PREFETCH_REQUEST = 2 * 1024 * 1024
_PREFETCH_HELD = 64 * 1024 * 1024


class BlobReader:
    def __init__(self, vault: Vault, key: MasterKey) -> None:
        self.vault, self.key = vault, key
        self.locations: dict[bytes, BlobLocation] = {}
        self.trees: OrderedDict[bytes, list[Entry]] = OrderedDict()
        self.prefetched: dict[bytes, bytes | memoryview] = {}  # blob id -> sealed envelope, until read once
        self.held = 0
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

    def prefetch(self, ids: list[bytes]) -> None:
        """Fetches these blobs in as few requests as the size bound allows; `read` then
        takes them from memory. Blobs that would overflow the bound are read later, singly."""
        with self.lock:
            wanted = [i for i in dict.fromkeys(ids) if i not in self.prefetched and i not in self.trees]
        self.locate(wanted)
        batch: list[bytes] = []
        size = 0
        for blob_id in wanted:
            loc = self.locations.get(blob_id)
            if loc is None:
                continue  # `read` reports it
            if self.held + size + loc.length > _PREFETCH_HELD:
                break
            if size + loc.length > _PREFETCH_REQUEST and batch:
                self._fetch(batch)
                batch, size = [], 0
            batch.append(blob_id)
            size += loc.length
        if batch:
            self._fetch(batch)

    def _fetch(self, ids: list[bytes]) -> None:
        locs = [self.locations[i] for i in ids]
        parts = self.vault.read_ranges([(loc.pack, loc.offset, loc.length) for loc in locs])
        with self.lock:
            for blob_id, envelope in zip(ids, parts):
                self.prefetched[blob_id] = envelope
                self.held += len(envelope)

    def drop(self, ids: list[bytes]) -> None:
        """Forgets prefetched blobs that will not be read after all."""
        with self.lock:
            for blob_id in ids:
                envelope = self.prefetched.pop(blob_id, None)
                if envelope is not None:
                    self.held -= len(envelope)

    def read(self, blob_id: bytes) -> bytes:
        loc = self.location(blob_id)
        with self.lock:
            envelope = self.prefetched.pop(blob_id, None)
            if envelope is not None:
                self.held -= len(envelope)
        if envelope is None:
            envelope = self.vault.read_range(loc.pack, loc.offset, loc.length)
        return self._decode(blob_id, loc, envelope)

    def read_in_order(self, ids: list[bytes]) -> Iterator[bytes]:
        """The blobs of one file, in order, fetched a few MiB per request."""
        batch: list[tuple[bytes, BlobLocation]] = []
        size = 0
        for blob_id in ids:
            loc = self.location(blob_id)
            if batch and size + loc.length > _PREFETCH_REQUEST:
                yield from self._read_batch(batch)
                batch, size = [], 0
            batch.append((blob_id, loc))
            size += loc.length
        if batch:
            yield from self._read_batch(batch)

    def _read_batch(self, batch: list[tuple[bytes, BlobLocation]]) -> Iterator[bytes]:
        envelopes = self.vault.read_ranges([(loc.pack, loc.offset, loc.length) for _i, loc in batch])
        for (blob_id, loc), envelope in zip(batch, envelopes):
            yield self._decode(blob_id, loc, envelope)

    def _decode(self, blob_id: bytes, loc: BlobLocation, envelope: bytes | memoryview) -> bytes:
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
