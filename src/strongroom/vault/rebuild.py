"""`vault rebuild-catalog`: a new catalog from the vault's storage alone.

The new catalog is built beside the old one and renamed over it at the end, so a rebuild that
is killed leaves the old state and can simply be run again. What cannot be rebuilt is said:
a damaged index record (the pack's own header stands in, and the pack goes to the machine
whose points need its blobs), a point whose refs are damaged or need blobs no pack holds, a
pack that no record and no point claims. Credentials, PINs and running jobs are not kept in
storage: issue new credentials after a rebuild.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from strongroom import packs as packfmt
from strongroom.errors import StrongroomError
from strongroom.vault import catalog as cat
from strongroom.vault import records
from strongroom.vault import refs as reflist
from strongroom.vault.service import (
    CATALOG_FILE,
    index_pack_rows,
    init_catalog,
    insert_point_row,
    read_vault_meta,
)
from strongroom.vault.storage.fs import FolderStorage


@dataclass
class RebuildReport:
    machines: int = 0
    points: int = 0
    points_deleted: int = 0
    packs: int = 0
    blobs: int = 0
    policies: int = 0
    jobs: int = 0
    settings: bool = False
    packs_from_headers: int = 0  # index record missing or damaged: read from the pack itself
    orphan_packs: int = 0  # no record and no point claims them
    problems: list[dict[str, str]] = field(default_factory=list)
    catalog: str = ""
    previous_catalog: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rebuild_catalog(root: Path) -> RebuildReport:
    meta = read_vault_meta(root)
    storage = FolderStorage(root)
    report = RebuildReport(catalog=str(root / CATALOG_FILE))
    scratch = root / f".{CATALOG_FILE}.rebuild"

    def drop_scratch() -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{scratch}{suffix}").unlink(missing_ok=True)

    drop_scratch()  # a killed rebuild's work: start again
    try:
        engine = init_catalog(scratch, meta["id"])
        try:
            uids = _machines(storage, engine, report)
            _settings(storage, engine, report)
            _policies(storage, engine, uids, report)
            unclaimed = _packs(storage, engine, uids, report)
            _points(storage, engine, uids, unclaimed, report)
            report.orphan_packs = len(unclaimed)
            for name in sorted(unclaimed):
                report.problems.append({"pack": name, "error": "no index record and no point claims it; "
                                        "left in place (prune deletes it after a day)"})
            _jobs(storage, engine, uids, report)
        finally:
            engine.dispose()
    except BaseException:
        drop_scratch()  # a failed one's (its disk full): nothing half-built left beside the catalog
        raise
    report.previous_catalog = _set_aside(root / CATALOG_FILE)
    os.replace(scratch, root / CATALOG_FILE)
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return report


def _set_aside(path: Path) -> str | None:
    """Keeps the catalog being replaced, if any, for whoever wants to look at it."""
    kept = None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        old = Path(f"{path}{suffix}")
        if old.exists():
            target = path.with_name(f"{path.name}.replaced-{stamp}{suffix}")
            os.replace(old, target)
            kept = kept or str(target)
    return kept


def _read(storage: FolderStorage, name: str, report: RebuildReport, decode: Any) -> dict[str, Any] | None:
    try:
        return decode(storage.get(name), name)
    except StrongroomError as exc:
        report.problems.append({"record": name, "error": str(exc)})
        return None


def _machines(storage: FolderStorage, engine: Any, report: RebuildReport) -> dict[str, int]:
    docs = [doc for name, _size in sorted(storage.list(records.MACHINES))
            if (doc := _read(storage, name, report, records.decode_json)) is not None]
    uids: dict[str, int] = {}
    with cat.write(engine) as db:
        for doc in _one_per_name(storage, docs, report):
            row = {k: doc[k] for k in ("uid", "name", "registered", "keyfile", "token_hash")}
            row.update(removed_ns=doc.get("removed_ns"), key_check=doc.get("key_check"),
                       former_names=json.dumps(doc["former_names"]) if doc.get("former_names") else None,
                       revoked=json.dumps(doc["revoked"]) if doc.get("revoked") else None)
            uids[row["uid"]] = db.execute(insert(cat.machines).values(**row)).inserted_primary_key[0]
            report.machines += 1
    return uids


def _one_per_name(storage: FolderStorage, docs: list[dict[str, Any]], report: RebuildReport) -> list[dict[str, Any]]:
    """The machine records, one per name. Two records of one name are a registration that never
    finished (its catalog row not written, the name then registered again): of the two, the one
    whose machine owns nothing else in storage, or else the earlier one, is left out. Records that
    all own something (a storage someone wrote by hand) are all kept, the later ones renamed with
    their uid, so that no point is lost."""
    names = Counter(doc["name"] for doc in docs)
    if max(names.values(), default=0) < 2:
        return docs
    holders = records.machines_holding_records(storage)
    kept: list[dict[str, Any]] = []
    taken: set[str] = set()

    def order(doc: dict[str, Any]) -> tuple[bool, int, str]:
        held = doc["uid"] in holders
        return not held, doc["registered"] if held else -doc["registered"], doc["uid"]

    for doc in sorted(docs, key=order):
        if doc["name"] in taken:
            if doc["uid"] not in holders:
                report.problems.append({"machine": doc["uid"], "error": f"a registration of {doc['name']!r} "
                                        "that never finished (another record holds the name); left out"})
                continue
            report.problems.append({"machine": doc["uid"], "error": f"another record holds the name "
                                    f"{doc['name']!r}; renamed {doc['name']}-{doc['uid']}"})
            doc = {**doc, "name": f"{doc['name']}-{doc['uid']}"}
        taken.add(doc["name"])
        kept.append(doc)
    return kept


def _settings(storage: FolderStorage, engine: Any, report: RebuildReport) -> None:
    try:
        doc = records.decode_json(storage.get(records.SETTINGS), records.SETTINGS)
    except StrongroomError:
        return  # never changed: the defaults
    with cat.write(engine) as db:
        for key, value in doc.items():
            if key != "v":
                db.execute(insert(cat.settings).values(key=key, value=json.dumps(value)))
    report.settings = True


def _machine_records(storage: FolderStorage, prefix: str, uids: dict[str, int],
                     report: RebuildReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """(machine row id, record) of each sound JSON record under `prefix`/<uid>/."""
    for name, _size in sorted(storage.list(prefix)):
        uid = name.split("/")[-2]
        doc = _read(storage, name, report, records.decode_json)
        if doc is not None and uid in uids:
            yield uids[uid], doc


def _policies(storage: FolderStorage, engine: Any, uids: dict[str, int], report: RebuildReport) -> None:
    with cat.write(engine) as db:
        for mid, doc in _machine_records(storage, records.POLICIES, uids, report):
            db.execute(insert(cat.policies).values(machine_id=mid, version=doc["version"],
                                                   created_ns=doc["created_ns"], doc=json.dumps(doc["doc"])))
            report.policies += 1


def _packs(storage: FolderStorage, engine: Any, uids: dict[str, int], report: RebuildReport) -> dict[str, list]:
    """Indexes every pack with a sound index record; returns the others' maps, read from the
    packs themselves, for the points to claim."""
    present = {records.last_part(n): size for n, size in storage.list("packs")}
    unclaimed: dict[str, list] = {}
    indexed: set[str] = set()
    for name, _size in sorted(storage.list(records.INDEX)):
        pack = records.last_part(name)
        doc = _read(storage, name, report, lambda data, what: records.read_pack_index(data, pack))
        if doc is None:
            continue
        if pack not in present:
            report.problems.append({"pack": pack, "error": "indexed, but missing from storage"})
            continue
        if doc["machine"] not in uids or present[pack] != doc["size"]:
            report.problems.append({"pack": pack, "error": "index record names an unknown machine or another size"})
            continue
        with cat.write(engine) as db:
            index_pack_rows(db, uids[doc["machine"]], pack, doc["size"], doc["created"], doc["blobs"])
        indexed.add(pack)
        report.packs += 1
        report.blobs += len(doc["blobs"])
    for pack in sorted(set(present) - indexed):
        try:
            refs = packfmt.read_header(storage.get(records.pack_object(pack)))
        except StrongroomError as exc:
            report.problems.append({"pack": pack, "error": f"no index record, and unreadable: {exc}"})
            continue
        unclaimed[pack] = [(r.blob_id, r.kind, r.offset, r.length) for r in refs]
    return unclaimed


def _points(storage: FolderStorage, engine: Any, uids: dict[str, int], unclaimed: dict[str, list],
            report: RebuildReport) -> None:
    by_blob = {blob[0]: pack for pack, rows in unclaimed.items() for blob in rows}
    for name, _size in sorted(storage.list(records.POINTS)):
        uid, pid = name.split("/")[-2:]
        doc = _read(storage, name, report, records.decode_binary)
        if doc is None or uid not in uids or doc.get("id") != pid:
            if doc is not None:
                report.problems.append({"point": pid, "error": "record names an unknown machine or another id"})
            continue
        mid = uids[uid]
        missing, claims = _check_refs(storage, engine, uid, pid, doc, mid, by_blob, report)
        for pack in claims:  # packs without an index record that this machine's point needs
            with cat.write(engine) as db:
                index_pack_rows(db, mid, pack, storage.size(records.pack_object(pack)), int(time.time()),
                                unclaimed.pop(pack))
            by_blob = {b: p for b, p in by_blob.items() if p != pack}
            report.packs_from_headers += 1
            report.packs += 1
        if missing is None:
            continue
        if missing:
            report.problems.append({"point": pid, "error": f"references {missing} blobs that no pack holds"})
        deleted = _deleted_ns(storage, uid, pid)
        with cat.write(engine) as db:
            insert_point_row(db, mid, doc, deleted)
        report.points += 1
        report.points_deleted += deleted is not None


def _check_refs(storage: FolderStorage, engine: Any, uid: str, pid: str, doc: dict[str, Any], mid: int,
                by_blob: dict[bytes, str], report: RebuildReport) -> tuple[int | None, set[str]]:
    """(blobs the point needs that the machine's indexed packs lack, or None when its refs
    are unreadable; packs without index record that hold some of them)."""
    what = f"the refs of point {pid}"
    missing, claims = 0, set()
    try:
        with storage.open(records.refs_object(uid, pid)) as stream:
            chunks = reflist.verify_refs(reflist.read_refs(stream, what), doc["refs"]["count"],
                                         doc["refs"]["blake3"], what)
            for _chunk, absent in cat.absent_by_chunk(engine, mid, chunks):
                for blob_id in absent:
                    if blob_id in by_blob:
                        claims.add(by_blob[blob_id])
                    else:
                        missing += 1
    except StrongroomError as exc:
        report.problems.append({"point": pid, "error": f"not rebuilt: {exc}"})
        return None, set()
    return missing, claims


def _deleted_ns(storage: FolderStorage, uid: str, pid: str) -> int | None:
    try:
        return int(records.decode_json(storage.get(records.deleted_object(uid, pid)), "mark")["deleted_ns"])
    except StrongroomError:
        return None


def _jobs(storage: FolderStorage, engine: Any, uids: dict[str, int], report: RebuildReport) -> None:
    with engine.connect() as db:
        by_name = dict(db.execute(select(cat.machines.c.name, cat.machines.c.id)).all())
    with cat.write(engine) as db:
        for mid, doc in _machine_records(storage, records.JOBS, uids, report):
            row = {k: v for k, v in doc.items() if k in cat.jobs.c and k not in ("machine_id", "source_machine_id")}
            row.update(machine_id=mid, source_machine_id=by_name.get(doc.get("source_machine")),
                       failed=json.dumps({"count": doc.get("failed_count", 0), "sealed": doc.get("failed_sealed")}))
            db.execute(insert(cat.jobs).values(**row))
            report.jobs += 1
