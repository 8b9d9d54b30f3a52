"""The vault's records in storage: what the catalog indexes, written before the catalog points at it.

Storage alone is enough to rebuild the catalog (vault/rebuild.py): machines, pack indexes,
recovery points (with their refs, vault/refs.py), soft-delete marks, policies, settings and
finished jobs each have an object of their own, named so that a listing by prefix finds
them. docs/format.md specifies every one of them.
"""

from __future__ import annotations

import json
from collections.abc import Container
from typing import TYPE_CHECKING, Any

import msgpack

from strongroom.errors import IntegrityError, StrongroomError

if TYPE_CHECKING:
    from strongroom.vault.storage import Storage

RECORD_VERSION = 1

MACHINES = "machines/"
INDEX = "index/"
POINTS = "points/"
REFS = "refs/"
DELETED = "deleted/"
POLICIES = "policies/"
JOBS = "jobs/"
SETTINGS = "settings.json"


def pack_object(name: str) -> str:
    return f"packs/{name[:2]}/{name}"


def index_object(pack: str) -> str:
    return f"{INDEX}{pack[:2]}/{pack}"


def machine_object(uid: str) -> str:
    return f"{MACHINES}{uid}.json"


def point_object(uid: str, point_id: str) -> str:
    return f"{POINTS}{uid}/{point_id}"


def refs_object(uid: str, point_id: str) -> str:
    return f"{REFS}{uid}/{point_id}"


def deleted_object(uid: str, point_id: str) -> str:
    return f"{DELETED}{uid}/{point_id}"


def policy_object(uid: str, version: int) -> str:
    return f"{POLICIES}{uid}/{version:010d}.json"


def job_object(uid: str, job_id: str) -> str:
    return f"{JOBS}{uid}/{job_id}.json"


def last_part(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def encode_json(doc: dict[str, Any]) -> bytes:
    return json.dumps({"v": RECORD_VERSION, **doc}, indent=1, sort_keys=True).encode()


def decode_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise IntegrityError(f"{what} does not decode") from None
    return _versioned(doc, what)


def encode_binary(doc: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": RECORD_VERSION, **doc}, use_bin_type=True)


def decode_binary(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException):
        raise IntegrityError(f"{what} does not decode") from None
    return _versioned(doc, what)


def _versioned(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("v") != RECORD_VERSION:
        raise IntegrityError(f"{what} has an unknown version")
    return doc


def pack_index(pack: str, machine_uid: str, size: int, created: int,
               blobs: list[tuple[bytes, int, int, int]]) -> bytes:
    """A pack's index record: whose pack it is and where each blob lies in it (a tuple packs
    as the array a list does)."""
    return encode_binary({"pack": pack, "machine": machine_uid, "size": size, "created": created, "blobs": blobs})


def read_pack_index(data: bytes, pack: str) -> dict[str, Any]:
    doc = decode_binary(data, f"index record of pack {pack}")
    try:
        if doc["pack"] != pack or not isinstance(doc["machine"], str):
            raise ValueError
        doc["blobs"] = [(bytes(i), int(k), int(o), int(n)) for i, k, o, n in doc["blobs"]]
        int(doc["size"]), int(doc["created"])
    except (KeyError, TypeError, ValueError):
        raise IntegrityError(f"index record of pack {pack} is malformed") from None
    return doc


def machines_holding_records(storage: Storage, known_packs: Container[str] = ()) -> set[str]:
    """The uids of the machines that storage holds a record of besides their machine record:
    a point, refs, deletion mark, policy or job under their folder, or a pack's index record
    (those of `known_packs` are not read: the caller knows whose they are). A machine record
    whose uid is not among them is a registration that never finished (its catalog row never
    written: a kill, a failed commit) or a machine that never backed up."""
    holders = {name.split("/")[-2] for prefix in (POINTS, REFS, DELETED, POLICIES, JOBS)
               for name, _size in storage.list(prefix)}
    for name, _size in storage.list(INDEX):
        pack = last_part(name)
        if pack not in known_packs:
            try:
                holders.add(read_pack_index(storage.get(name), pack)["machine"])
            except StrongroomError:
                continue  # unreadable: whose it is cannot be told, and the caller judges it anyway
    return holders
