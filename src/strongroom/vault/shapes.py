"""The plain records and limits the vault and the agent share, without SQLAlchemy.

The agent imports these on every command, before it has opened any vault: kept apart from
vault/service.py and vault/jobs.py (which re-export them), so that a command derives the
key (Argon2id, 64 MiB) before SQLAlchemy's 22 MiB are loaded, and its peak memory is the
smaller of the two sums (cli/common.py `open_agent`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

BLOB_PAGE = 262144  # blob IDs in one page of blob_ids_since: 8 MiB
LEASE_SECONDS = 90
LEASED = ("backup", "prune", "import")  # jobs that change a machine's data: one at a time
MAX_FAILED_RECORDED = 1000  # the first failures say what went wrong; a million would not
MAX_SEALED_FAILED = 512 * 1024  # base64 characters of the sealed list: well within a request


@dataclass(frozen=True)
class PointRecord:
    id: str
    machine: str
    created_ns: int
    kind: str
    mode: str
    stats: dict[str, Any]
    manifest: bytes


@dataclass(frozen=True, slots=True)  # a restore holds one per blob: no __dict__ each
class BlobLocation:
    pack: str
    offset: int
    length: int
    kind: int


@dataclass(frozen=True)
class JobRecord:
    id: str
    machine: str
    kind: str
    status: str
    started_ns: int
    ended_ns: int | None = None
    source_machine: str | None = None
    mode: str = ""
    point_id: str | None = None
    files: int = 0
    bytes: int = 0
    failed_count: int = 0
    failed_sealed: str | None = None  # base64 of the sealed list of {path, error}, opened by the agent
    message: str = ""
    mode_reason: str = ""  # why a backup ran optimized or unoptimized

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
