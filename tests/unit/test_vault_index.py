"""The vault's index rules, on a real folder vault and SQLite catalog: blobs are per machine,
a point is checked against its machine's blobs, and prune re-checks, in the transaction that
drops a pack, that no point recorded meanwhile needs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strongroom import packs
from strongroom.errors import VaultError
from strongroom.vault import prune as prunemod
from strongroom.vault.records import index_object, pack_object
from strongroom.vault.service import VaultService

KEYFILE = '{"version": 1}'


def _machine(service: VaultService, name: str) -> int:
    creds = service.issue_credentials("file:///x", 1)
    token = service.register(creds, name, KEYFILE)
    return service.authenticate(token)[0]


def _pack(service: VaultService, machine_id: int, ids: list[bytes]) -> str:
    builder = packs.PackBuilder()
    for blob_id in ids:
        builder.add(blob_id, packs.KIND_DATA, os.urandom(64))  # opaque to the vault
    name, data, _refs = builder.finish()
    service.store_pack(machine_id, name, bytes(data))
    return name


def _ids(n: int, seed: int) -> list[bytes]:
    return sorted(bytes([seed]) + os.urandom(31) for _ in range(n))


@pytest.fixture
def service(tmp_path: Path) -> VaultService:
    return VaultService.create(tmp_path / "vault")


def test_a_machine_cannot_squat_another_machines_blob_ids(service: VaultService) -> None:
    victim, squatter = _machine(service, "victim"), _machine(service, "squatter")
    ids = _ids(3, 1)
    real = _pack(service, victim, ids)
    junk = _pack(service, squatter, ids)  # the IDs are readable in any pack's header
    assert {loc.pack for loc in service.blob_locations(victim, ids).values()} == {real}
    assert {loc.pack for loc in service.blob_locations(squatter, ids).values()} == {junk}
    # The victim's point is checked against its own blobs only, and the squatter cannot
    # record a point on blobs it only claims through another machine's pack.
    service.add_point(victim, "files", "unoptimized", {}, b"m", [b"".join(ids)])
    with pytest.raises(VaultError, match="does not have"):
        service.add_point(squatter, "files", "unoptimized", {}, b"m", [b"".join(_ids(1, 2))])


def test_prune_keeps_a_pack_that_a_point_recorded_meanwhile_needs(service: VaultService, monkeypatch) -> None:
    """The window the lease closes, opened on purpose: a backup whose lease lapsed records a
    point on a pack prune has just found unneeded. The drop transaction must see it."""
    mid = _machine(service, "m1")
    ids = _ids(4, 3)
    name = _pack(service, mid, ids)  # uploaded by a backup, no point yet: garbage to prune
    recorded = []

    def keep(self: prunemod.Lease) -> None:
        if not recorded:  # after the liveness pass, before the drop
            recorded.append(service.add_point(mid, "files", "unoptimized", {}, b"m", [b"".join(ids)]))
    # The pass ran before the point existed: it saw no point, so every pack looked unneeded.
    monkeypatch.setattr(prunemod, "_live_ids", lambda *args: iter(()))
    monkeypatch.setattr(prunemod.Lease, "keep", keep)
    report = prunemod.prune(service)
    assert recorded and report.packs_deleted == 0 and report.packs_kept_for_new_points == 1
    assert service.storage.size(pack_object(name)) > 0 and service.storage.size(index_object(name)) > 0
    assert service.check_structure(mid) == []


def test_a_point_recorded_after_prune_dropped_its_blobs_is_refused(service: VaultService, monkeypatch) -> None:
    """The other side of the window: prune dropped the blobs between the point's check and its
    record; the record's transaction sees the drop counter moved, checks again and refuses."""
    mid = _machine(service, "m1")
    ids = _ids(5, 4)
    name = _pack(service, mid, ids)

    put = service.storage.put

    def put_after_prune(name: str, data: bytes) -> None:
        if name.startswith("points/"):  # the refs were checked: now the pack goes
            prunemod.prune(service)
        put(name, data)
    monkeypatch.setattr(service.storage, "put", put_after_prune)
    with pytest.raises(VaultError, match="does not have"):
        service.add_point(mid, "files", "unoptimized", {}, b"m", [b"".join(ids)], point_id="ab12")
    with pytest.raises(VaultError):
        service.storage.size(pack_object(name))
    assert service.points(mid) == []
    assert list(service.storage.list("points")) == [] and list(service.storage.list("refs")) == []


def test_one_pack_uploaded_twice_at_once_is_indexed_once(tmp_path: Path) -> None:
    """A retried upload racing its original (two vault processes, one catalog): both
    succeed and the pack is indexed once; another machine sending the same bytes is refused
    and does not rewrite the pack's index record in storage."""
    import threading

    first = VaultService.create(tmp_path / "vault")
    owner, other = _machine(first, "owner"), _machine(first, "other")
    second = VaultService(tmp_path / "vault")
    builder = packs.PackBuilder()
    for blob_id in _ids(50, 3):
        builder.add(blob_id, packs.KIND_DATA, os.urandom(64))
    name, data, _refs = builder.finish()
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def upload(service: VaultService) -> None:
        start.wait()
        try:
            service.store_pack(owner, name, bytes(data))
        except BaseException as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(s,)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    record = (tmp_path / "vault" / index_object(name)).read_bytes()
    with pytest.raises(VaultError, match="belongs to another machine"):
        first.store_pack(other, name, bytes(data))
    assert (tmp_path / "vault" / index_object(name)).read_bytes() == record
    assert len(first.blob_locations(owner, [r.blob_id for r in _refs])) == 50
