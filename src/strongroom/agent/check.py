"""Verification of this machine's backups: structure always, every blob with --read-data.

Without --read-data: the vault's own structural check, then every point's trees are read
and every blob they reference must be in the catalog. With it: every pack of this machine
is read whole, its name (a hash of its bytes) is checked, and every blob in it is decrypted
and checked against its ID. Each problem names the pack and the files it affects.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from strongroom import blobs, packs
from strongroom.agent.browse import walk
from strongroom.agent.pointbook import OpenedPoint
from strongroom.agent.reader import BlobReader
from strongroom.errors import StrongroomError
from strongroom.model import display_path


@dataclass
class CheckReport:
    packs_checked: int = 0
    blobs_checked: int = 0
    points_checked: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    orphan_packs: list[str] = field(default_factory=list)  # not errors: see VaultService

    @property
    def ok(self) -> bool:
        return not self.errors


def check(reader: BlobReader, points: list[OpenedPoint], read_data: bool) -> CheckReport:
    """`points`: this machine's, already checked against their seals and this home's record."""
    vault, key = reader.vault, reader.key
    report = CheckReport(errors=list(vault.check_structure()), orphan_packs=vault.orphan_packs())
    users: dict[bytes, list[str]] = defaultdict(list)  # blob id -> "point:path" of files using it
    for point in points:
        report.points_checked += 1
        try:
            for path, entry in walk(reader, point.manifest["tree"]):
                for blob_id in entry.get("c", ()):
                    users[blob_id].append(f"{point.id}:{display_path(path)}")
        except StrongroomError as exc:
            report.errors.append({"point": point.id, "error": f"tree unreadable: {exc}"})
    reader.locate(list(users))
    missing = [i for i in users if i not in reader.locations]
    if missing:
        report.errors.append({"error": f"{len(missing)} blobs are missing from the vault",
                              "files": _files(users, missing)})
    if not read_data:
        return report
    by_pack: dict[str, list[bytes]] = defaultdict(list)
    for blob_id, loc in reader.locations.items():
        by_pack[loc.pack].append(blob_id)
    for name in vault.pack_names():
        report.packs_checked += 1
        try:
            data = vault.read_pack(name)
            if packs.pack_name(data) != name:
                raise StrongroomError("pack content does not match its name (corrupt)")
            refs = packs.read_header(data)
        except StrongroomError as exc:
            report.errors.append({"pack": name, "error": str(exc), "files": _files(users, by_pack[name])})
            continue
        for ref in refs:
            report.blobs_checked += 1
            try:
                blobs.decode(key, ref.blob_id, memoryview(data)[ref.offset:ref.offset + ref.length])
            except StrongroomError as exc:
                report.errors.append({"pack": name, "blob": ref.blob_id.hex(), "error": str(exc),
                                      "files": _files(users, [ref.blob_id])})
    return report


def _files(users: dict[bytes, list[str]], blob_ids: list[bytes]) -> list[str]:
    return sorted({f for i in blob_ids for f in users.get(i, ())})
