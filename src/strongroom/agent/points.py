"""Recovery points as the agent sees them: manifests sealed to their machine and point ID,
and finding a point by id, prefix or "latest".

The associated data of a manifest's seal names the format, the machine and the point ID, so
a manifest the vault presents under another point or machine does not open at all.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import msgpack

from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError, UsageError
from strongroom.model import MANIFEST_VERSION, decode_manifest, encode_manifest
from strongroom.vault.shapes import PointRecord

_LABEL = "strongroom point manifest"
_V1_AAD = b"strongroom point manifest v1"  # format 1's constant: kept only to name it in a refusal


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


P = TypeVar("P", bound=_HasId)


def find_point(points: list[P], ref: str) -> P:
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


def manifest_aad(machine: str, point_id: str) -> bytes:
    """The seal's associated data: versioned label, machine, point ID (msgpack: unambiguous)."""
    return msgpack.packb([_LABEL, MANIFEST_VERSION, machine, point_id], use_bin_type=True)


def seal_manifest(key: MasterKey, machine: str, point_id: str, manifest: dict[str, Any]) -> bytes:
    return key.seal(manifest_aad(machine, point_id), encode_manifest(manifest))


def open_manifest(key: MasterKey, machine: str, point: PointRecord) -> dict[str, Any]:
    """The manifest of `point`, which the vault presents as `machine`'s; refused with one line
    if it was sealed for another point or machine, altered, or is of an older format."""
    try:
        plain = key.open(manifest_aad(machine, point.id), point.manifest)
    except IntegrityError:
        if _opens(key, _V1_AAD, point.manifest):
            raise IntegrityError(f"point {point.id} has a manifest of format 1 (an older Strongroom); this "
                                 f"version reads format {MANIFEST_VERSION} only: back up into a new vault") from None
        raise IntegrityError(f"the vault presents point {point.id} as machine {machine}'s, but its sealed "
                             "manifest does not open as that point: it was sealed for another point or "
                             "machine, or altered; refusing to use it") from None
    try:
        return decode_manifest(plain)
    except IntegrityError as exc:
        raise IntegrityError(f"point {point.id}: {exc}") from None


def _opens(key: MasterKey, aad: bytes, sealed: bytes) -> bool:
    try:
        key.open(aad, sealed)
    except IntegrityError:
        return False
    return True
