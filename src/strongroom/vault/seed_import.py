"""`vault import-seed`: a machine's first backup, shipped on a disk (agent/seed.py, the layout
in seedfmt.py), taken into the vault on the vault's host through the paths of an online upload.

Checked before anything is stored: the seed is for this vault and was made by a machine
registered here (the BLAKE3 of its token, which the vault keeps, matches: a machine of the
same name in another vault does not), its point record decodes and every pack it lists is
there at its size. Then each pack is verified (name = BLAKE3 of the content, header) and
stored and indexed as an upload is (storage first, catalog second); packs already indexed
are skipped, so a killed import is simply run again. The point is recorded last, under the
machine's data lease: nothing half-imported is ever a point. Credentials play no part: the
operator runs the import with the vault's folder, and a machine's registration does not expire.
"""

from __future__ import annotations

import fcntl
import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from strongroom.errors import IntegrityError, UsageError, VaultError
from strongroom.seedfmt import POINT_FILE, REFS_FILE, SeedIndex, read_index
from strongroom.vault import catalog as cat
from strongroom.vault import records, trust
from strongroom.vault import refs as reflist
from strongroom.vault.prune import Lease
from strongroom.vault.records import pack_object
from strongroom.vault.service import VaultService


@dataclass
class ImportReport:
    machine: str
    point: str
    already_imported: bool = False
    packs: int = 0  # the seed's
    packs_imported: int = 0
    packs_skipped: int = 0  # indexed already (by an interrupted import)
    bytes_imported: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_seed(root: Path, folder: Path) -> ImportReport:
    if "://" in str(root):
        raise UsageError("import-seed takes the vault's folder: run it on the vault's host")
    service = VaultService(root)
    trust.ensure_trusted(service)
    index = read_index(folder)
    if index.vault_id != service.id:
        raise VaultError(f"this seed was made for vault {index.vault_id}, not this one ({service.id}): "
                         "import it into the vault its machine is registered with")
    machine_id = _machine(service, index)
    report = ImportReport(index.machine, index.point, packs=len(index.packs))
    owner = _point_owner(service, index.point)
    if owner is not None:
        if owner != machine_id:
            raise VaultError(f"point {index.point} of the vault belongs to another machine; this seed cannot be imported")
        report.already_imported = True
        return report
    record = _point_record(folder, index)
    _check_packs_present(folder, index)
    with _one_import(service, index.point):
        lease = Lease(service, machine_id, False, job_id=f"seed-{index.point[:27]}", kind="import")
        try:
            _import_packs(service, machine_id, folder, index, report, lease)
            what = "the seed's refs"
            with open(folder / REFS_FILE, "rb") as stream:
                refs = reflist.verify_refs(reflist.read_refs(stream, what), record["refs"]["count"],
                                           record["refs"]["blake3"], what)
                service.add_point(machine_id, record["kind"], record["mode"], record["stats"], record["manifest"],
                                  refs, index.point, record["retain_until_ns"], created_ns=index.created_ns)
            service.jobs.seed_arrived(machine_id, index.point)
        except BaseException as exc:
            lease.finish("failed", str(exc) or type(exc).__name__)
            raise
        lease.finish("completed", point_id=index.point, nbytes=report.bytes_imported)
    return report


def _machine(service: VaultService, index: SeedIndex) -> int:
    """The registered machine that made the seed, by name and by the hash of its token."""
    with service.engine.connect() as db:
        row = db.execute(select(cat.machines.c.id, cat.machines.c.token_hash)
                         .where(cat.machines.c.name == index.machine)).first()
    if row is None:
        raise VaultError(f"this seed was made by machine {index.machine!r}, which is not registered with this vault")
    if row.token_hash != index.token_blake3:
        raise VaultError(f"this seed was made by another machine named {index.machine!r} (its registration "
                         "differs from this vault's): refusing to import it as this vault's machine")
    return row.id


def _point_owner(service: VaultService, point_id: str) -> int | None:
    with service.engine.connect() as db:
        return db.execute(select(cat.points.c.machine_id).where(cat.points.c.id == point_id)).scalar()


def _point_record(folder: Path, index: SeedIndex) -> dict[str, Any]:
    """The seed's point record, checked to be the point seed.json names, with fields of the right types."""
    try:
        doc = records.decode_binary((folder / POINT_FILE).read_bytes(), "the seed's point record")
    except FileNotFoundError:
        raise IntegrityError(f"the seed in {folder} has no point record ({POINT_FILE}); make the seed again") from None
    try:
        ok = (doc["id"] == index.point and doc["created_ns"] == index.created_ns
              and isinstance(doc["kind"], str) and isinstance(doc["mode"], str) and len(doc["kind"]) <= 16
              and len(doc["mode"]) <= 16 and isinstance(doc["stats"], dict) and isinstance(doc["manifest"], bytes)
              and isinstance(doc["retain_until_ns"], int | None) and isinstance(doc["refs"]["count"], int)
              and isinstance(doc["refs"]["blake3"], str))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise IntegrityError(f"the seed's point record does not match its index (point {index.point}): "
                             "the seed is damaged; make it again")
    return doc


def _check_packs_present(folder: Path, index: SeedIndex) -> None:
    """Every listed pack is in the folder at its size, before any is imported."""
    missing, wrong = [], []
    for name, size in index.packs:
        try:
            actual = (folder / pack_object(name)).stat().st_size
        except FileNotFoundError:
            missing.append(name)
            continue
        if actual != size:
            wrong.append(name)
    if missing:
        raise IntegrityError(f"the seed is missing {len(missing)} of its {len(index.packs)} packs (first: "
                             f"{missing[0]}); no point was recorded: copy the whole seed folder again")
    if wrong:
        raise IntegrityError(f"{len(wrong)} pack(s) of the seed have another size than seed.json says (first: "
                             f"{wrong[0]}); no point was recorded: copy the whole seed folder again")


def _import_packs(service: VaultService, machine_id: int, folder: Path, index: SeedIndex,
                  report: ImportReport, lease: Lease) -> None:
    with service.engine.connect() as db:
        indexed = set(db.execute(select(cat.packs.c.name).where(cat.packs.c.machine_id == machine_id)).scalars())
    for name, size in index.packs:
        if name in indexed:
            report.packs_skipped += 1
            continue
        with open(folder / pack_object(name), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            try:
                service.store_pack(machine_id, name, data)
            except IntegrityError as exc:
                raise IntegrityError(f"pack {name} of the seed is damaged ({exc}); its point was not recorded: "
                                     "copy that pack again from the seed disk and run the import again") from None
        report.packs_imported += 1
        report.bytes_imported += size
        lease.keep()


@contextmanager
def _one_import(service: VaultService, point_id: str) -> Iterator[None]:
    """One import of a seed at a time (a second would take over the first one's job)."""
    with open(service.spool_dir() / f".import-{point_id}.lock", "wb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VaultError(f"an import of this seed (point {point_id}) is running already") from None
        yield

