"""The vault's batched read (VaultService.read_ranges, what a restore's prefetch and a served
vault's /blobs/read call): ranges given in any order come back in that order, byte for byte,
and neighbours in a pack are read together, but never beyond the request's byte bound."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from strongroom import packs
from strongroom.errors import UsageError, VaultError
from strongroom.vault import service as servicemod
from strongroom.vault.records import pack_object
from strongroom.vault.service import VaultService


def _pack(service: VaultService, machine_id: int, sizes: list[int]) -> tuple[str, bytes]:
    builder = packs.PackBuilder()
    for size in sizes:
        builder.add(os.urandom(32), packs.KIND_DATA, os.urandom(size))
    name, data, _refs = builder.finish()
    service.store_pack(machine_id, name, bytes(data))
    return name, bytes(data)


@pytest.fixture
def service(tmp_path: Path) -> VaultService:
    made = VaultService.create(tmp_path / "vault")
    token = made.register(made.issue_credentials("file:///x", 1), "m1", '{"version": 1}')
    made.machine = made.authenticate(token)[0]  # type: ignore[attr-defined]
    return made


def _counted(service: VaultService, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    reads: list[tuple[str, int, int]] = []
    real = service.storage.get_range

    def get_range(name: str, offset: int, length: int) -> bytes:
        reads.append((name, offset, length))
        return real(name, offset, length)
    monkeypatch.setattr(service.storage, "get_range", get_range)
    return reads


def test_ranges_come_back_in_the_order_asked_and_neighbours_in_one_read(service, monkeypatch) -> None:
    a, data_a = _pack(service, service.machine, [3000] * 40)
    b, data_b = _pack(service, service.machine, [500] * 10)
    wanted = [(a, o, 700) for o in range(0, 40 * 700, 700)]  # back to back
    wanted += [(a, 40 * 700 + 100, 50), (a, 40 * 700 + 120, 200)]  # overlapping
    wanted += [(b, 0, 100), (b, 300, 100), (b, 300, 100)]  # a gap, and one range twice
    wanted += [(a, len(data_a) - 10, 10)]  # far from the others: a read of its own
    random.Random(1).shuffle(wanted)
    reads = _counted(service, monkeypatch)
    got = service.read_ranges(wanted)
    packs_data = {a: data_a, b: data_b}
    assert [bytes(g) for g in got] == [packs_data[p][o:o + n] for p, o, n in wanted]
    assert sorted(reads) == sorted([(pack_object(a), 0, 40 * 700 + 320), (pack_object(b), 0, 400),
                                    (pack_object(a), len(data_a) - 10, 10)])


def test_gaps_read_along_stay_within_the_byte_bound(service, monkeypatch) -> None:
    """A request of many small ranges far apart would otherwise read the gaps between them:
    beyond the bound, they are read one by one."""
    a, data_a = _pack(service, service.machine, [20_000] * 20)
    monkeypatch.setattr(servicemod, "MAX_READ_BYTES", 30_000)
    wanted = [(a, o, 10) for o in range(0, 19 * 20_000, 10_000)]  # 9,990-byte gaps
    reads = _counted(service, monkeypatch)
    got = service.read_ranges(wanted)
    assert [bytes(g) for g in got] == [data_a[o:o + n] for _p, o, n in wanted]
    assert sum(n for _name, _o, n in reads) <= 30_000
    assert len(reads) > 1
    with pytest.raises(UsageError, match="at most"):
        service.read_ranges([(a, 0, 20_000), (a, 20_000, 10_001)])


def test_a_range_past_the_end_of_its_pack_fails_the_read(service) -> None:
    a, data_a = _pack(service, service.machine, [1000])
    with pytest.raises(VaultError, match="shorter"):
        service.read_ranges([(a, 0, 10), (a, len(data_a) - 5, 10)])
