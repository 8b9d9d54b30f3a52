"""Recording a backup or restore as a job in the vault, with the lease kept alive while it runs.

The vault refuses a second backup of the same machine while the first one's lease is
renewed; if this process dies, the lease lapses and the vault marks the job failed. The
files a job could not handle reach the vault sealed with the key of the data the job
handled (their paths are that machine's file names); `open_failed` reads them back.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strongroom.agent.backup import Backup, BackupResult
from strongroom.agent.home import AgentHome
from strongroom.agent.pointbook import PointBook
from strongroom.agent.selection import Selection
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError, StrongroomError, VaultReadOnly
from strongroom.fsutil import write_private
from strongroom.model import display_path
from strongroom.vault.embedded import folder_of
from strongroom.vault.interface import Vault
from strongroom.vault.shapes import LEASE_SECONDS, LEASED, MAX_FAILED_RECORDED, MAX_SEALED_FAILED

_RENEW_EVERY = LEASE_SECONDS / 4
_FAILED_AAD = b"strongroom job failed v1\0"


def seal_failed(key: MasterKey, job_id: str, failed: list[dict[str, str]]) -> str | None:
    """The first failures, sealed for the vault (base64), as many as fit its bound."""
    listed = failed[:MAX_FAILED_RECORDED]
    while listed:
        sealed = base64.b64encode(key.seal(_FAILED_AAD + job_id.encode(), json.dumps(listed).encode())).decode()
        if len(sealed) <= MAX_SEALED_FAILED:
            return sealed
        listed = listed[:len(listed) // 2]  # very long paths: fewer of them
    return None


def open_failed(key: MasterKey, job_id: str, sealed: str) -> list[dict[str, str]]:
    """The list `seal_failed` sealed; IntegrityError if this key did not seal it."""
    try:
        return [{"path": str(f["path"]), "error": str(f["error"])} for f in
                json.loads(key.open(_FAILED_AAD + job_id.encode(), base64.b64decode(sealed)))]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise IntegrityError(f"the failed files of job {job_id} are damaged") from None


@dataclass
class Outcome:
    """What the command fills in as it learns it; sent to the vault when the job ends."""

    mode: str = ""
    mode_reason: str = ""  # why a backup ran in its mode (never a path: the vault keeps it in plain)
    point_id: str | None = None
    files: int = 0
    bytes: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # problems recording the job, for the user
    ended_as: str | None = None  # a status other than completed when it ends well (an offline seed's)

    def fields(self, key: MasterKey, job_id: str) -> dict[str, Any]:
        return {"mode": self.mode, "mode_reason": self.mode_reason, "point_id": self.point_id, "files": self.files, "bytes": self.bytes,
                "failed_count": len(self.failed),
                "failed_sealed": seal_failed(key, job_id, self.failed) if self.failed else None}


@contextmanager
def recorded_job(vault: Vault, key: MasterKey, marker: Path, kind: str,
                 source_machine: str | None = None) -> Iterator[Outcome]:
    """Records the body as a job; `key` is the key of the data it handles (another machine's
    for a restore from it). `marker` is a file in the agent home that names the job while
    it runs; the caller holds the home's lock, so a marker left behind names a job whose
    agent died, and the vault is told at once instead of when its lease lapses."""
    if marker.exists():
        _finish(vault, key, marker.read_text().strip(), "failed", Outcome(), "the agent stopped before the job ended")
        marker.unlink()
    job_id = secrets.token_hex(8)
    try:
        vault.start_job(job_id, kind, source_machine)
    except VaultReadOnly as exc:
        if kind in LEASED:
            raise
        # A job that only reads (a restore, a mount) needs no writing: from a vault whose disk
        # is full or read-only it goes on, unrecorded
        yield Outcome(notes=[f"the vault could not record this {kind} as a job: {exc}"])
        return
    write_private(marker, job_id.encode())
    outcome = Outcome()
    stop = threading.Event()

    def keep_lease() -> None:
        while not stop.wait(_RENEW_EVERY):
            try:
                vault.renew_job(job_id)
            except Exception as exc:  # noqa: BLE001 - the job goes on; the vault says why at its end
                outcome.notes.append(f"renewing the job's lease failed: {exc}")

    renewer = threading.Thread(target=keep_lease, name="lease", daemon=True)
    renewer.start()
    try:
        yield outcome
    except KeyboardInterrupt:
        _finish(vault, key, job_id, "cancelled", outcome, "interrupted")
        raise
    except BaseException as exc:
        _finish(vault, key, job_id, "failed", outcome, str(exc) or type(exc).__name__)
        raise
    else:
        done = outcome.ended_as or ("completed_with_warnings" if outcome.failed else "completed")
        _finish(vault, key, job_id, done, outcome, "")
    finally:
        stop.set()
        marker.unlink(missing_ok=True)


def _finish(vault: Vault, key: MasterKey, job_id: str, status: str, outcome: Outcome, message: str) -> None:
    """Records the end; a vault that cannot be told must not hide what happened to the job."""
    try:
        vault.finish_job(job_id, status, message=message, **outcome.fields(key, job_id))
    except Exception as exc:  # noqa: BLE001
        outcome.notes.append(f"the vault did not record the end of job {job_id}: {exc}")


def run_backup_job(agent: AgentHome, vault: Vault, run: Backup,
                   ended_as: str | None = None) -> tuple[BackupResult, list[dict[str, str]], list[str]]:
    """Runs a prepared backup as a job of this home (its lock held): the result, the files
    it could not back up as they were, and notes about recording the job. `ended_as`: the
    job's status when it ends well, if not completed."""
    with agent.lock(), recorded_job(vault, run.key, agent.job_marker, "backup") as job:
        job.ended_as = ended_as
        try:
            result = run.run()
        except sqlite3.OperationalError as exc:  # the agent's own databases: all in its cache folder
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise StrongroomError(f"the cache folder {agent.cache} is full ({exc}): free some room there or move "
                                  "the folder with `strongroom agent cache move DIR`") from None
        s = result.stats
        warnings = [{"path": display_path(p), "error": m} for p, m in result.warnings]
        job.mode, job.point_id, job.failed = result.point.mode, result.point.id, warnings
        job.mode_reason = result.mode_reason
        job.notes += result.notes
        job.files = s["files_new"] + s["files_changed"] + s["files_unchanged"]
        job.bytes = s["bytes_added"]
    return result, warnings, job.notes


def prepare_backup(agent: AgentHome, vault: Vault, key: MasterKey, paths: list[bytes],
                   excludes: list[str], selection: Selection | None = None) -> Backup:
    """A backup of `paths` that never reads the agent home or an embedded vault into itself."""
    return Backup(vault, key, paths, excludes, own_folders(agent, vault), agent.cache, book=PointBook(agent, vault, key),
                  selection=selection)


def own_folders(agent: AgentHome, vault: Vault) -> list[bytes]:
    """The folders a backup must not read into itself: the agent home, an embedded vault."""
    skip = [os.fsencode(agent.path), os.fsencode(agent.cache)]  # the cache folder may be elsewhere
    if vault.local:
        skip.append(os.fsencode(folder_of(vault.url)))
    return skip
