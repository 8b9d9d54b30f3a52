"""Recovery points as the agent sees them: find one by id, prefix or "latest"; open its manifest."""

from __future__ import annotations

from typing import Any

from strongroom.crypto import MasterKey
from strongroom.errors import UsageError
from strongroom.model import decode_manifest, encode_manifest
from strongroom.vault.service import PointRecord

MANIFEST_AAD = b"strongroom point manifest v1"


def find_point(points: list[PointRecord], ref: str) -> PointRecord:
    """`points` newest first; `ref` is an id, a unique id prefix, or "latest"."""
    if ref == "latest":
        if not points:
            raise UsageError("there are no recovery points yet")
        return points[0]
    matches = [p for p in points if p.id.startswith(ref)] if ref else []
    if not matches:
        raise UsageError(f"no recovery point {ref!r}")
    if len(matches) > 1:
        raise UsageError(f"{ref!r} matches {len(matches)} recovery points; give more of the id")
    return matches[0]


def open_manifest(key: MasterKey, point: PointRecord) -> dict[str, Any]:
    return decode_manifest(key.open(MANIFEST_AAD, point.manifest))


def seal_manifest(key: MasterKey, manifest: dict[str, Any]) -> bytes:
    return key.seal(MANIFEST_AAD, encode_manifest(manifest))
