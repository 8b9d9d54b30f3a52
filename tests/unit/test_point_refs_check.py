"""The vault's check that a point's refs are blobs of its machine (catalog `absent_by_chunk`):
SQLite counts them with one statement per chunk; whatever the path, the missing IDs are the
ones named, another machine's blobs never count, and a chunk of one ID or of many agrees with
a set computed in Python."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import packs
from strongroom.vault import catalog as cat
from strongroom.vault.service import VaultService

KEYFILE = '{"version": 1}'


def _machine(service: VaultService, name: str) -> int:
    token = service.register(service.issue_credentials("file:///x", 1), name, KEYFILE)
    return service.authenticate(token)[0]


def _store(service: VaultService, machine_id: int, ids: list[bytes]) -> None:
    builder = packs.PackBuilder()
    for blob_id in ids:
        builder.add(blob_id, packs.KIND_DATA, os.urandom(40))
    name, data, _refs = builder.finish()
    service.store_pack(machine_id, name, bytes(data))


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> tuple[VaultService, int, list[bytes], list[bytes]]:
    service = VaultService.create(Path(tmp_path_factory.mktemp("v")) / "vault")
    mine, other = _machine(service, "mine"), _machine(service, "other")
    have = sorted(os.urandom(32) for _ in range(300))
    theirs = sorted(os.urandom(32) for _ in range(50))
    _store(service, mine, have)
    _store(service, other, theirs)
    return service, mine, have, theirs


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_missing_ids_are_exactly_those_the_machine_lacks(vault, data: st.DataObject) -> None:
    service, mine, have, theirs = vault
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    picked = rng.sample(have, data.draw(st.integers(0, 40)))
    foreign = rng.sample(theirs, data.draw(st.integers(0, 3)))
    unknown = [os.urandom(32) for _ in range(data.draw(st.integers(0, 3)))]
    ids = sorted(set(picked + foreign + unknown))
    chunk = b"".join(ids)
    got = [missing for _chunk, missing in cat.absent_by_chunk(service.engine, mine, [chunk])]
    assert got == [[i for i in ids if i not in set(have)]]


def test_a_whole_point_of_present_blobs_passes_and_one_unknown_id_is_named(vault) -> None:
    service, mine, have, _theirs = vault
    assert [m for _c, m in cat.absent_by_chunk(service.engine, mine, [b"".join(have)])] == [[]]
    stranger = b"\xff" * 32
    chunk = b"".join(have[:10]) + stranger
    assert [m for _c, m in cat.absent_by_chunk(service.engine, mine, [chunk])] == [[stranger]]
