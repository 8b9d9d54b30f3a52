"""SQL that walks many blob IDs handed to SQLite as one joined parameter.

The IDs of a batch go in back to back as one blob (`:ids`), and a recursive CTE steps through
them in the engine: no binding and no statement per ID. Used for the agent's known-blob
set and claims, its refcount file, and the catalog's presence check and blob locations.
Measured against the alternatives where each was introduced: claims of 20,000 blobs
0.072-0.085 CPU-s with `IN (?, ...)` lists and an executemany against 0.047; 20,000 refcounts
0.045 against 0.015; a point's presence check 3x cheaper than filling a temporary table row
by row first.
"""

from __future__ import annotations

from collections.abc import Iterable

from strongroom.vault.wire import ID_SIZE

# `pos` holds the 1-based offset of each ID in :ids; :end is the last offset an ID starts at
# (below 1 when there is none: then `pos` is empty, not one row of an empty ID).
EACH_ID = ("WITH RECURSIVE pos(i) AS (SELECT 1 WHERE :end >= 1 UNION ALL SELECT i + "
           f"{ID_SIZE} FROM pos WHERE i + {ID_SIZE} <= :end) ")
ID_AT = f"substr(:ids, i, {ID_SIZE})"  # the ID at offset i


def id_params(joined: bytes | Iterable[bytes]) -> dict[str, bytes | int]:
    """The named parameters of a statement built on EACH_ID, for IDs given joined or one by one."""
    ids = joined if isinstance(joined, bytes) else b"".join(joined)
    return {"ids": ids, "end": len(ids) - ID_SIZE + 1}
