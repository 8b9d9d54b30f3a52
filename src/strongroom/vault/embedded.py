"""The embedded vault: the service called in-process on a folder (`file://` URLs)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from strongroom.credentials import Credentials
from strongroom.errors import UsageError, VaultError
from strongroom.vault.shapes import BlobLocation, JobRecord, PointRecord

# The service (SQLAlchemy, 22 MiB) is imported when a vault is opened, not with this module:
# commands derive the key first, and Argon2's 64 MiB then come on top of less (cli/common.py).


def _admin() -> Any:
    from strongroom.vault import machine_admin
    return machine_admin


def folder_url(path: Path) -> str:
    return path.resolve().as_uri()


def folder_of(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise UsageError(f"not a folder vault URL: {url}")
    return Path(unquote(parsed.path))


class EmbeddedVault:
    local = True

    def __init__(self, url: str) -> None:
        from strongroom.vault.service import VaultService

        self.url = url
        self.service = VaultService(folder_of(url))
        self.machine_id: int | None = None
        self.machine: str | None = None

    def register(self, creds: Credentials, machine: str, keyfile: str, key_check: str | None = None) -> str:
        token = self.service.register(creds, machine, keyfile, key_check)
        self.bind(token)
        return token

    # -- a machine's registration (vault/machine_admin.py) ---------------------------------------

    def replace_keyfile(self, creds: Credentials, machine: str) -> str:
        return _admin().replace_keyfile(self.service, creds, machine)

    def replace_machine(self, creds: Credentials, machine: str, proof: str | None) -> str:
        token = _admin().replace_machine(self.service, creds, machine, proof)
        self.bind(token)
        return token

    def change_keyfile(self, keyfile: str, proof: str | None = None) -> None:
        _admin().change_keyfile(self.service, self._me(), keyfile, proof)

    def former_names(self, machine: str) -> list[str]:
        self._me()
        return _admin().names_of(self.service, machine)

    def remove_machine(self, name: str, pin: str | None = None) -> int:
        self._me()
        return _admin().remove_machine(self.service, name, pin)

    def rename_machine(self, old: str, new: str, pin: str | None = None) -> None:
        self._me()
        _admin().rename_machine(self.service, old, new, pin)

    def bind(self, token: str) -> str:
        self.machine_id, self.machine = self.service.authenticate(token)
        return self.machine

    def _me(self) -> int:
        if self.machine_id is None:
            raise VaultError("this machine is not registered with the vault")
        return self.machine_id

    def _machine(self, name: str | None) -> int:
        return self._me() if name is None or name == self.machine else self.service.machine_id(name)

    def vault_id(self) -> str:
        return self.service.id

    def keyfile(self, machine: str | None = None) -> str:
        return self.service.keyfile(self._machine(machine))

    def blob_ids_since(self, epoch: str | None, since: int, after: bytes = b"") -> tuple[str, int, bytes]:
        return self.service.blob_ids_since(self._me(), epoch, since, after)

    def store_pack(self, name: str, data: bytes | memoryview) -> None:
        self.service.store_pack(self._me(), name, data)

    def add_point(self, kind: str, mode: str, stats: dict[str, Any], manifest: bytes,
                  refs: Iterable[bytes], point_id: str | None = None,
                  retain_until_ns: int | None = None) -> PointRecord:
        return self.service.add_point(self._me(), kind, mode, stats, manifest, refs, point_id, retain_until_ns)

    def add_point_delta(self, kind: str, mode: str, stats: dict[str, Any], manifest: bytes,
                        added: Iterable[bytes], removed: Iterable[bytes], base: str, count: int,
                        point_id: str | None = None, retain_until_ns: int | None = None,
                        checksum: str | None = None) -> PointRecord:
        return self.service.add_point_delta(self._me(), kind, mode, stats, manifest, added, removed, base, count,
                                            point_id, retain_until_ns, checksum)

    def points(self, machine: str | None = None, deleted: bool = False) -> list[PointRecord]:
        return self.service.points(self._machine(machine), deleted)

    def undelete_point(self, point_id: str) -> None:
        self.service.undelete_point(self._me(), point_id)

    def usage(self, point_id: str | None = None) -> dict[str, Any]:
        from strongroom.vault.usage import usage
        return usage(self.service, self._me(), point_id)

    def forget_points(self, point_ids: list[str], pin: str | None = None) -> dict[str, Any]:
        return self.service.forget_points(self._me(), point_ids, pin)

    def set_policy(self, doc: dict[str, Any] | None, pin: str | None = None) -> int:
        return self.service.set_policy(self._me(), doc, pin)

    def policy(self, machine: str | None = None) -> tuple[int, dict[str, Any] | None] | None:
        return self.service.policy(self._machine(machine))

    def stop_protection(self, delete_data: bool, pin: str | None = None) -> int:
        return self.service.stop_protection(self._me(), delete_data, pin)

    def blob_locations(self, ids: list[bytes], machine: str | None = None) -> dict[bytes, BlobLocation]:
        return self.service.blob_locations(self._machine(machine), ids)

    def read_range(self, pack: str, offset: int, length: int) -> bytes:
        return self.service.read_range(pack, offset, length)

    def read_ranges(self, ranges: list[tuple[str, int, int]]) -> list[memoryview]:
        return self.service.read_ranges(ranges)

    def read_pack(self, pack: str) -> bytes:
        return self.service.read_pack(pack)

    def pack_names(self) -> list[str]:
        return self.service.pack_names(self._me())

    def check_structure(self) -> list[dict[str, Any]]:
        return self.service.check_structure(self._me())

    def orphan_packs(self) -> list[str]:
        return self.service.orphan_packs()

    def machines(self) -> list[dict[str, Any]]:
        return self.service.machines()

    def start_job(self, job_id: str, kind: str, source_machine: str | None = None) -> JobRecord:
        source = self.service.machine_id(source_machine) if source_machine else None
        return self.service.jobs.start(self._me(), job_id, kind, source)

    def renew_job(self, job_id: str) -> None:
        self.service.jobs.renew(self._me(), job_id)

    def finish_job(self, job_id: str, status: str, **fields: Any) -> JobRecord:
        nbytes = fields.pop("bytes", 0)
        return self.service.jobs.finish(self._me(), job_id, status, nbytes=nbytes, **fields)

    def jobs(self, machine: str | None = None, limit: int = 100) -> list[JobRecord]:
        return self.service.jobs.list(self.service.machine_id(machine) if machine else None, limit, self._me())
