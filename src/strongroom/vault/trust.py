"""Whether the catalog may be trusted with destructive work: it must know what storage holds.

A catalog that is missing, empty or of another vault is refused when the service opens it
(VaultService). Before prune or serve, this module also reads the catalog whole (SQLite's
quick check, for damaged pages) and compares it with storage's own records: a machine, a
point or a pack index that storage holds and the catalog does not know means the catalog is
older than storage (a restored copy, a lost write), and its word that "nothing needs this
pack" cannot be taken. Records younger than IN_FLIGHT_S may be a write in progress (storage
first, catalog second) and are not held against it; a point whose purge was interrupted
(its records still in storage, its catalog row gone, deleted long enough ago) is purged; a
pack whose store or a point whose recording was interrupted (its record stored, the catalog's
rows not: a vault killed in between) is taken in from its record, when the catalog knows every
machine (and, for a pack, every point) storage holds: a catalog that does not is older than
storage, and refused all the same. A machine record the catalog does not know, of a machine that
owns nothing else in storage, is a registration that never finished (a kill between the record
and the catalog's row): it is deleted, as the machine had no data and its agent registers again.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from strongroom.errors import StrongroomError
from strongroom.vault import catalog as cat
from strongroom.vault import protection, records
from strongroom.vault.service import CatalogUntrusted, VaultService, index_pack_rows, rebuild_hint

IN_FLIGHT_S = 900


def ensure_trusted(service: VaultService, now_ns: int | None = None) -> None:
    """Raises CatalogUntrusted, naming `vault rebuild-catalog`, unless the catalog is whole
    and knows every record of storage older than IN_FLIGHT_S."""
    now_s = (now_ns or time.time_ns()) / 1e9
    with service.engine.connect() as db:
        damage = [r[0] for r in db.exec_driver_sql("PRAGMA quick_check").all() if r[0] != "ok"]
        if damage:
            raise CatalogUntrusted(f"the vault's catalog is damaged ({damage[0]}); {rebuild_hint(service.root)}")
        machine_ids = dict(db.execute(select(cat.machines.c.uid, cat.machines.c.id)).all())
        points = {(uid, pid) for uid, pid in db.execute(
            select(cat.machines.c.uid, cat.points.c.id).join(cat.points, cat.points.c.machine_id == cat.machines.c.id))}
        packs = set(db.execute(select(cat.packs.c.name)).scalars())
    grace_s = protection.settings(service.engine)["soft_delete_days"] * 86400

    def settled(name: str) -> bool:
        try:
            return now_s - service.storage.modified(name) > IN_FLIGHT_S
        except StrongroomError:
            return False  # gone meanwhile: a write or delete in progress

    unknown: dict[str, int] = {"machines": 0, "points": 0, "pack indexes": 0}
    strays = [(name, uid) for name, _size in service.storage.list(records.MACHINES)
              if (uid := records.last_part(name).removesuffix(".json")) not in machine_ids and settled(name)]
    holders = records.machines_holding_records(service.storage, packs) if strays else set()
    for name, uid in strays:
        if uid in holders:
            unknown["machines"] += 1
        else:  # a registration that never finished: the machine owns nothing, and registered again
            service.storage.delete(name)
    for name, _size in service.storage.list(records.POINTS):
        uid, pid = name.split("/")[-2:]
        if (uid, pid) not in points and settled(name):
            mark = _deletion_mark(service, uid, pid)
            if mark is not None and _deleted_long_ago(mark, now_s, grace_s):
                delete_point_records(service, uid, pid)  # its purge was interrupted
            elif mark is not None or unknown["machines"] or uid not in machine_ids \
                    or not service.finish_point(machine_ids[uid], uid, pid):
                unknown["points"] += 1
    for name, _size in service.storage.list(records.INDEX):
        pack = records.last_part(name)
        if pack not in packs and settled(name) and (any(unknown.values()) or not _finish_store(service, pack,
                                                                                                machine_ids)):
            unknown["pack indexes"] += 1
    if any(unknown.values()):
        found = ", ".join(f"{n} {what}" for what, n in unknown.items() if n)
        raise CatalogUntrusted(f"the vault's catalog is older than its storage (storage holds {found} it does "
                               f"not know); {rebuild_hint(service.root)}")


def _finish_store(service: VaultService, pack: str, machine_ids: dict[str, int]) -> bool:
    """Indexes a stored pack as its index record says, if the record is sound, names a machine
    of the catalog and the pack is there at its size: the end of a store a kill interrupted
    (VaultService._index_pack). Its blobs are then like any other's: kept while a point needs
    them. False if the record cannot be taken."""
    try:
        doc = records.read_pack_index(service.storage.get(records.index_object(pack)), pack)
        size = service.storage.size(records.pack_object(pack))
    except StrongroomError:
        return False
    if doc["machine"] not in machine_ids or size != doc["size"]:
        return False
    with cat.write(service.engine) as db:
        index_pack_rows(db, machine_ids[doc["machine"]], pack, size, doc["created"], doc["blobs"])
    return True


def _deletion_mark(service: VaultService, uid: str, pid: str) -> bytes | None:
    try:
        return service.storage.get(records.deleted_object(uid, pid))
    except StrongroomError:
        return None


def _deleted_long_ago(mark: bytes, now_s: float, grace_s: float) -> bool:
    try:
        doc: dict[str, Any] = records.decode_json(mark, "mark")
    except StrongroomError:
        return False
    return now_s - doc["deleted_ns"] / 1e9 > grace_s


def delete_point_records(service: VaultService, uid: str, pid: str) -> None:
    """A purged point's records, the point first: what a crash leaves never looks like a point."""
    service.storage.delete(records.point_object(uid, pid))
    service.storage.delete(records.refs_object(uid, pid))
    service.storage.delete(records.deleted_object(uid, pid))
