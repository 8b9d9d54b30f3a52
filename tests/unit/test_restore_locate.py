"""The restore's locating ahead (agent/restore_locate.py), against a real vault: it locates
the IDs handed to it in their order, no more than its lead past what the walk has reached,
leaves malformed entries and IDs to the walk, and locates nothing more once stopped."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from strongroom import packs
from strongroom.agent import restore_locate
from strongroom.agent.reader import BlobReader
from strongroom.crypto import MasterKey
from strongroom.vault.service import VaultService
from strongroom.vault.shapes import BlobLocation


class _Vault:
    """The vault service as the reader sees a vault, counting the IDs it is asked to locate."""

    def __init__(self, service: VaultService) -> None:
        self.service, self.asked = service, 0

    def blob_locations(self, ids: list[bytes], machine: str | None = None) -> dict[bytes, BlobLocation]:
        self.asked += len(ids)
        return self.service.blob_locations(self.service.machine, ids)  # type: ignore[attr-defined]


@pytest.fixture
def stored(tmp_path: Path) -> tuple[_Vault, list[bytes]]:
    service = VaultService.create(tmp_path / "vault")
    token = service.register(service.issue_credentials("file:///x", 1), "m1", '{"version": 1}')
    service.machine = service.authenticate(token)[0]  # type: ignore[attr-defined]
    builder = packs.PackBuilder()
    ids = [os.urandom(32) for _ in range(6000)]
    for blob_id in ids:
        builder.add(blob_id, packs.KIND_DATA, b"x" * 100)
    name, data, _refs = builder.finish()
    service.store_pack(service.machine, name, bytes(data))  # type: ignore[attr-defined]
    return _Vault(service), ids


def test_locates_in_order_within_its_lead_and_stops(stored) -> None:
    vault, ids = stored
    reader = BlobReader(vault, MasterKey.generate())  # type: ignore[arg-type]
    with ThreadPoolExecutor(1) as pool:
        ahead = restore_locate.LocateAhead(reader, pool)
        for start in range(0, 5000, 100):  # trees of 100 files, and entries the walk reports
            ahead.add([{"n": b"f", "c": [i]} for i in ids[start:start + 100]]
                      + [{"c": [b"short", None]}, {"c": 5}, 7])  # type: ignore[list-item]
        ahead.walked_past(0)
        pool.submit(lambda: None).result()  # the jobs before it are done
        located = set(reader.locations)
        assert set(ids[:restore_locate._LEAD]) <= located <= set(ids[:restore_locate._LEAD + 2 * restore_locate._BATCH])
        ahead.walked_past(1000)
        pool.submit(lambda: None).result()
        assert set(reader.locations) == set(ids[:5000])
        assert vault.asked == 5000  # each once, the malformed ones never
        ahead.add([{"c": ids[5000:]}])
        ahead.stop()
        ahead.walked_past(5000)
        pool.submit(lambda: None).result()
        assert set(reader.locations) == set(ids[:5000])
    assert {reader.locations[i].length for i in ids[:5000]} == {100}
