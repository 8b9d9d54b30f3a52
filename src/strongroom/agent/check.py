"""Verification of this machine's backups: structure always, every blob with --read-data.

Without --read-data: the vault's own structural check (every point's refs against its blob
index), then every point's trees are read and every blob they reference must be in the
vault. With it: every pack of this machine is read whole, its name (a hash of its bytes) is
checked, and every blob in it is decrypted and checked against its ID. Each problem names
the pack and the files it affects.

Memory stays bounded whatever the size of the machine: blobs are looked up a batch at a time
as the trees are walked, and only what is damaged is remembered; the files a damaged blob
affects are found by a second walk, which runs only when there is damage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from strongroom import blobs, packs
from strongroom.agent.browse import walk
from strongroom.agent.pointbook import OpenedPoint
from strongroom.agent.reader import BlobReader
from strongroom.errors import StrongroomError, VaultUnreachable
from strongroom.model import display_path

_LOOKUP_BATCH = 4096
_FILES_LISTED = 1000  # per error: the first files say what was hit


@dataclass
class CheckReport:
    packs_checked: int = 0
    blobs_checked: int = 0
    points_checked: int = 0
    packs_total: int = 0  # this machine's packs; packs_checked of them were read
    errors: list[dict[str, Any]] = field(default_factory=list)
    orphan_packs: list[str] = field(default_factory=list)  # not errors: see VaultService

    @property
    def ok(self) -> bool:
        return not self.errors


def _contents(reader: BlobReader, points: list[OpenedPoint], report: CheckReport | None) -> Iterator[tuple[str, list[bytes]]]:
    """("POINT:PATH", content blob IDs) of every file of every point; unreadable trees are
    reported (when a report is given) and skipped."""
    for point in points:
        try:
            for path, entry in walk(reader, point.manifest["tree"]):
                if entry.get("c"):
                    yield f"{point.id}:{display_path(path)}", entry["c"]
        except VaultUnreachable:
            raise  # not a finding about the data: check stops
        except StrongroomError as exc:
            if report is not None:
                report.errors.append({"point": point.id, "error": f"tree unreadable: {exc}"})


def _absent(reader: BlobReader, ids: list[bytes]) -> set[bytes]:
    found = reader.vault.blob_locations(list(dict.fromkeys(ids)), reader.machine)
    return {i for i in ids if i not in found}


def check(reader: BlobReader, points: list[OpenedPoint], read_data: bool,
          subset: Callable[[list[str]], list[str]] | None = None) -> CheckReport:
    """`points`: this machine's, already checked against their seals and this home's record.
    `subset` chooses which of the machine's packs --read-data reads (all without it)."""
    vault = reader.vault
    report = CheckReport(errors=list(vault.check_structure()), orphan_packs=vault.orphan_packs())
    report.points_checked = len(points)
    missing: set[bytes] = set()
    batch: list[bytes] = []
    for _file, ids in _contents(reader, points, report):
        batch.extend(ids)
        if len(batch) >= _LOOKUP_BATCH:
            missing |= _absent(reader, batch)
            batch = []
    missing |= _absent(reader, batch) if batch else set()
    errors: list[dict[str, Any]] = []
    bad_blobs: dict[int, set[bytes]] = {}  # error index -> the blob ids it is about
    bad_packs: dict[int, str] = {}  # error index -> the pack it is about
    if missing:
        bad_blobs[len(errors)] = missing
        errors.append({"error": f"{len(missing)} blobs are missing from the vault"})
    if read_data:
        _read_packs(reader, report, errors, bad_blobs, bad_packs, subset)
    if bad_blobs or bad_packs:
        _name_files(reader, points, errors, bad_blobs, bad_packs)
    report.errors += errors
    return report


def _read_packs(reader: BlobReader, report: CheckReport, errors: list[dict[str, Any]],
                bad_blobs: dict[int, set[bytes]], bad_packs: dict[int, str],
                subset: Callable[[list[str]], list[str]] | None) -> None:
    names = sorted(reader.vault.pack_names())
    report.packs_total = len(names)
    for name in subset(names) if subset else names:
        report.packs_checked += 1
        try:
            data = reader.vault.read_pack(name)
            if packs.pack_name(data) != name:
                raise StrongroomError("pack content does not match its name (corrupt)")
            refs = packs.read_header(data)
        except VaultUnreachable:
            raise
        except StrongroomError as exc:
            bad_packs[len(errors)] = name
            errors.append({"pack": name, "error": str(exc)})
            continue
        for ref in refs:
            report.blobs_checked += 1
            try:
                blobs.decode(reader.key, ref.blob_id, memoryview(data)[ref.offset:ref.offset + ref.length],
                             blobs.MAX_TREE_BYTES if ref.kind == packs.KIND_TREE else blobs.MAX_DATA_BYTES)
            except StrongroomError as exc:
                bad_blobs[len(errors)] = {ref.blob_id}
                errors.append({"pack": name, "blob": ref.blob_id.hex(), "error": str(exc)})


def _name_files(reader: BlobReader, points: list[OpenedPoint], errors: list[dict[str, Any]],
                bad_blobs: dict[int, set[bytes]], bad_packs: dict[int, str]) -> None:
    """A second walk, only when something is damaged: which files each problem hits."""
    hits: dict[int, list[str]] = {i: [] for i in (*bad_blobs, *bad_packs)}
    for file, ids in _contents(reader, points, None):
        for i, bad in bad_blobs.items():
            if len(hits[i]) < _FILES_LISTED and not bad.isdisjoint(ids):
                hits[i].append(file)
        if bad_packs:
            found = reader.vault.blob_locations(list(dict.fromkeys(ids)), reader.machine)
            held_in = {loc.pack for loc in found.values()}
            for i, pack in bad_packs.items():
                if len(hits[i]) < _FILES_LISTED and pack in held_in:
                    hits[i].append(file)
    for i, files in hits.items():
        errors[i]["files"] = sorted(files)
