"""Offline seeding, the agent's side: a machine's first backup written to a folder on an
attached disk, to be shipped to the vault's site and imported there (`vault import-seed`,
vault/seed_import.py), instead of being sent.

The backup runs as any backup does, against a `SeedVault`: the machine's vault answers what
is read (its points, of which there may be none; its policy), the seed folder takes what
would be sent (packs, then the point). The vault is told that a seed is on its way: the
backup's job ends `waiting_for_seed`, naming the point, until the import completes it.

A killed seed backup is run again on the same folder: the packs that landed there are
checked (name = BLAKE3 of the content, header) and their blobs count as stored, so only the
rest is written again; a pack that fails the check is removed.
"""

from __future__ import annotations

import bisect
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from strongroom.agent.backup import Backup
from strongroom.agent.home import AgentHome
from strongroom.agent.jobrun import own_folders
from strongroom.agent.pointbook import PointBook
from strongroom.agent.selection import Selection
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError, StrongroomError, UsageError
from strongroom.seedfmt import LAYOUT, PACKS, POINT_FILE, REFS_FILE, SEED_FILE, SeedIndex, read_index
from strongroom.vault import records
from strongroom.vault import refs as reflist
from strongroom.vault.interface import Vault
from strongroom.vault.records import pack_object
from strongroom.vault.shapes import BLOB_PAGE, JobRecord, PointRecord
from strongroom.vault.storage.fs import FolderStorage

WAITING = "waiting_for_seed"  # the job status of a seed backup until its import
# The temp files of a killed write (FolderStorage's `.NAME.tmp-…`, the refs'): of the seed's own
# names only, so that nothing else is ever removed from the folder.
_TEMP = re.compile(r"\.(seed\.json|point|refs|[0-9a-f]{64})\.tmp-")
_PACK_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SeedOwner:
    """Whose seed it is, as seed.json names it for the vault's checks."""

    vault_id: str
    machine: str
    token_blake3: str


class SeedFolder:
    """The folder a seed backup writes to, each file atomically (temp, fsync, rename)."""

    def __init__(self, folder: Path, owner: SeedOwner) -> None:
        self.root, self.owner = folder, owner
        self.storage = FolderStorage(folder)
        self.packs: dict[str, int] = {}
        self.known: list[bytes] | None = None  # blob IDs of the packs here, sorted; read on first need
        self.epoch = secrets.token_hex(8)  # a new set each run: the seed cache never carries one over

    @classmethod
    def open(cls, folder: Path, owner: SeedOwner) -> "SeedFolder":
        """The folder, made if missing; refused when it holds a finished seed or anything else
        than a seed's files (it may be the root of a fresh file system: lost+found is allowed)."""
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise UsageError(f"cannot make the seed folder {folder}: {exc.strerror}") from None
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder")
        names = set(os.listdir(folder))
        if SEED_FILE in names:
            point = read_index(folder).point
            raise UsageError(f"{folder} holds a finished seed already (point {point}): import it on the vault's "
                             f"host with `strongroom vault import-seed VAULT {folder}`, or give an empty folder")
        foreign = sorted(n for n in names - LAYOUT if not _TEMP.match(n))
        if foreign:
            raise UsageError(f"{folder} is not empty and not a seed folder (it holds {foreign[0]!r}); "
                             "give an empty folder")
        return cls(folder, owner)

    def _take_leftovers(self) -> list[bytes]:
        """What a killed run left: temp files go, whole packs stay and their blobs are known."""
        for name in os.listdir(self.root):
            if _TEMP.match(name):
                (self.root / name).unlink()
        from strongroom.vault.service import VaultService  # SQLAlchemy: only where a seed is written

        known: list[bytes] = []
        for sub in sorted((self.root / PACKS).glob("??")):
            for path in sorted(sub.iterdir()):
                if _TEMP.match(path.name):
                    path.unlink()
                elif _PACK_NAME.fullmatch(path.name) and path.is_file():
                    data = path.read_bytes()
                    try:
                        known.extend(r.blob_id for r in VaultService.verify_pack(path.name, data))
                    except StrongroomError:  # cut short or damaged: written again if needed
                        path.unlink()
                        continue
                    self.packs[path.name] = len(data)
        known.sort()
        return known

    def known_page(self, after: bytes) -> tuple[str, int, bytes]:
        """A page of the blob IDs the seed holds, as the vault's `blob_ids_since` answers."""
        if self.known is None:
            self.known = self._take_leftovers()
        start = bisect.bisect_right(self.known, after) if after else 0
        return self.epoch, 0, b"".join(self.known[start:start + BLOB_PAGE])

    def put_pack(self, name: str, data: bytes | memoryview) -> None:
        try:
            self.storage.put(pack_object(name), data)
        except OSError as exc:  # not a file's problem: the seed's disk
            raise StrongroomError(f"writing a pack to the seed folder {self.root} failed: {exc.strerror}") from None
        self.packs[name] = len(data)

    def finish(self, kind: str, mode: str, stats: dict[str, Any], manifest: bytes, refs: Iterable[bytes],
               point_id: str, retain_until_ns: int | None) -> PointRecord:
        """The point's refs, then its record, then seed.json: the seed is whole once it exists."""
        if self.known is None:
            self.known = self._take_leftovers()
        created = time.time_ns()
        fd, tmp = tempfile.mkstemp(prefix=f".{REFS_FILE}.tmp-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                count, checksum = reflist.write_refs(refs, out)
            self.storage.put_file(REFS_FILE, Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)
        record = {"id": point_id, "created_ns": created, "kind": kind, "mode": mode, "stats": stats,
                  "manifest": manifest, "retain_until_ns": retain_until_ns,
                  "refs": {"count": count, "blake3": checksum}}
        self.storage.put(POINT_FILE, records.encode_binary(record))
        o = self.owner
        index = SeedIndex(o.vault_id, o.machine, o.token_blake3, point_id, created, sorted(self.packs.items()))
        self.storage.put(SEED_FILE, index.encode())
        return PointRecord(point_id, o.machine, created, kind, mode, stats, manifest)


class SeedVault:
    """The machine's vault as a seed backup sees it: reads from the vault, writes to the seed."""

    def __init__(self, vault: Vault, seed: SeedFolder) -> None:
        self.vault, self.seed = vault, seed
        self.url, self.local, self.machine = vault.url, vault.local, vault.machine

    def points(self, machine: str | None = None, deleted: bool = False) -> list[PointRecord]:
        return self.vault.points(machine, deleted)

    def policy(self, machine: str | None = None) -> tuple[int, dict[str, Any] | None] | None:
        return self.vault.policy(machine)

    def blob_ids_since(self, epoch: str | None, since: int, after: bytes = b"") -> tuple[str, int, bytes]:
        return self.seed.known_page(after)

    def store_pack(self, name: str, data: bytes | memoryview) -> None:
        self.seed.put_pack(name, data)

    def add_point(self, kind: str, mode: str, stats: dict[str, Any], manifest: bytes,
                  refs: Iterable[bytes], point_id: str | None = None,
                  retain_until_ns: int | None = None) -> PointRecord:
        if point_id is None:
            raise IntegrityError("a seed's point needs its ID chosen by the agent")
        return self.seed.finish(kind, mode, stats, manifest, refs, point_id, retain_until_ns)


class SeedBook(PointBook):
    """The point book of a seed backup. The seed's point is not in the vault until imported,
    so it is not recorded as the newest point seen (every listing until the import would
    take the vault for rolled back); the agent takes it as newest when it first sees it in
    the vault, like any point it did not make itself."""

    def made(self, point_id: str, manifest: dict[str, Any]) -> None:
        pass


def prepare_seed(agent: AgentHome, vault: Vault, key: MasterKey, paths: list[bytes], excludes: list[str],
                 folder: Path, selection: Selection | None = None) -> Backup:
    """A first backup of `paths` written to `folder`; refused when the machine has points
    already (a seed carries a first backup only: later ones send what changed online)."""
    existing = vault.points()
    if existing:
        raise UsageError(f"this machine has {len(existing)} recovery point(s) in the vault already: an offline "
                         "seed carries the first backup only; back up online (only what changed is sent)")
    if vault.machine is None:
        raise UsageError("this machine is not registered with the vault")
    folder = folder.absolute()
    token = agent.token_path.read_text().strip()
    owner = SeedOwner(vault.vault_id(), vault.machine, blake3.blake3(token.encode()).hexdigest())
    seed = SeedVault(vault, SeedFolder.open(folder, owner))
    skip = own_folders(agent, vault) + [os.fsencode(folder)]
    return Backup(seed, key, paths, excludes, skip, agent.cache / "seed",  # type: ignore[arg-type]
                  book=SeedBook(agent, seed, key), selection=selection)  # type: ignore[arg-type]


def waiting_seeds(vault: Vault) -> list[JobRecord]:
    """This machine's seed backups the vault still waits for (newest first)."""
    return [j for j in vault.jobs(vault.machine) if j.status == WAITING and j.machine == vault.machine]
