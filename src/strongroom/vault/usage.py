"""What a machine's or one point's data takes in the vault (`strongroom stats`), computed
without the key and with bounded memory: the sorted refs streams of the points (merged as
prune merges them) are joined with the machine's blob rows sorted by ID, one pass each.

"Exclusive" blobs of a point are those no other live point of the machine references: what
forgetting that point alone frees once the soft-delete period ends and a prune runs (other
soft-deleted points are not counted as keeping anything: they are on their way out too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select

from strongroom import packs as packfmt
from strongroom.errors import UsageError
from strongroom.vault import catalog as cat
from strongroom.vault import refs as reflist
from strongroom.vault.prune import Lease, _live_ids
from strongroom.vault.service import VaultService


def _flagged(mine: Iterator[bytes], others: Iterator[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each ID of `mine` (ascending) with whether `others` (ascending) lacks it."""
    other = next(others, None)
    for blob_id in mine:
        while other is not None and other < blob_id:
            other = next(others, None)
        yield blob_id, other != blob_id


def usage(service: VaultService, machine_id: int, point_id: str | None = None) -> dict[str, Any]:
    """Blob counts and stored bytes (envelopes: compressed, encrypted) of one live point, with
    what only it keeps, or of all the machine's live points, with what its packs take."""
    uid = service.machine_uid(machine_id)
    with service.engine.connect() as db:
        live = db.execute(select(cat.points.c.id).where(cat.points.c.machine_id == machine_id,
                                                        cat.points.c.deleted_ns.is_(None))).scalars().all()
        packs_bytes = db.execute(select(func.coalesce(func.sum(cat.packs.c.size), 0))
                                 .where(cat.packs.c.machine_id == machine_id)).scalar_one()
    scratch = str(service.spool_dir())
    lease = Lease(service, machine_id, dry_run=True)  # reads only: no lease taken
    if point_id is None:
        flagged: Iterator[tuple[bytes, bool]] = ((i, False) for i in _live_ids(service, uid, list(live), scratch, lease))
    else:
        if point_id not in live:
            raise UsageError(f"{point_id} is not a live recovery point of this machine")
        others = [p for p in live if p != point_id]
        flagged = _flagged(reflist.ids(service.point_refs(uid, point_id)),
                           _live_ids(service, uid, others, scratch, lease) if others else iter(()))
    totals = {"blobs": 0, "data_blobs": 0, "stored_bytes": 0, "data_stored_bytes": 0,
              "exclusive_blobs": 0, "exclusive_stored_bytes": 0, "missing_blobs": 0}
    with service.engine.connect() as db:
        rows = db.execute(select(cat.blobs.c.blob_id, cat.blobs.c.kind, cat.blobs.c.length)
                          .where(cat.blobs.c.machine_id == machine_id).order_by(cat.blobs.c.blob_id))
        wanted = next(flagged, None)
        while wanted is not None and (chunk := rows.fetchmany(10_000)):
            for blob_id, kind, length in chunk:
                blob_id = bytes(blob_id)
                while wanted is not None and wanted[0] < blob_id:
                    totals["missing_blobs"] += 1  # referenced, not in the catalog: `check` says more
                    wanted = next(flagged, None)
                if wanted is None:
                    break
                if wanted[0] == blob_id:
                    totals["blobs"] += 1
                    totals["stored_bytes"] += length
                    if kind == packfmt.KIND_DATA:
                        totals["data_blobs"] += 1
                        totals["data_stored_bytes"] += length
                    if wanted[1]:
                        totals["exclusive_blobs"] += 1
                        totals["exclusive_stored_bytes"] += length
                    wanted = next(flagged, None)
        rows.close()
    totals["missing_blobs"] += sum(1 for _ in flagged) + (wanted is not None)
    if point_id is None:
        del totals["exclusive_blobs"], totals["exclusive_stored_bytes"]
        totals["packs_bytes"] = int(packs_bytes)
        totals["points"] = len(live)
    return totals
