"""Trees and recovery points: how a directory listing and a point's manifest are encoded.

A tree is a msgpack map {"v": 2, "e": [entry, ...]} sorted by name; an entry is a map with
short keys (see docs/format.md), absent keys meaning "none". Names and link targets are
bytes, so names that are not UTF-8 survive. Equal directories encode to equal bytes, hence
equal blob IDs: an unchanged directory costs nothing new.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack

from strongroom.errors import IntegrityError

# Of trees. 2: files list the plaintext length of each content blob (`cl`), so that a byte
# range maps to blobs without fetching them (1 had no `cl`; refused).
FORMAT_VERSION = 2
# Of point manifests. 2: sealed to their machine and point ID, holding their own creation
# time, kind and mode and their parent's ID and creation time (1 had none of these).
MANIFEST_VERSION = 2
# What a manifest must hold, and of which types (a manifest is written by this machine's key
# holder only, so this guards against bugs and old formats, not forgery).
_MANIFEST_FIELDS = {"created": int, "kind": str, "mode": str, "tree": bytes, "sources": list,
                    "parent": (str, type(None)), "parent_created": (int, type(None))}

# Entry types.
FILE, DIR, SYMLINK, FIFO, CHAR, BLOCK, SOCKET = "f", "d", "l", "p", "c", "b", "s"
TYPE_NAMES = {FILE: "file", DIR: "dir", SYMLINK: "symlink", FIFO: "fifo", CHAR: "chardev",
              BLOCK: "blockdev", SOCKET: "socket"}

Entry = dict[str, Any]


def encode_tree(entries: list[Entry]) -> bytes:
    entries.sort(key=lambda e: e["n"])
    return msgpack.packb({"v": FORMAT_VERSION, "e": entries}, use_bin_type=True)


def decode_tree(data: bytes) -> list[Entry]:
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
        entries = doc["e"]
        if not isinstance(entries, list):
            raise ValueError("no entry list")
        if doc.get("v") != FORMAT_VERSION:
            raise IntegrityError(f"a tree has format {doc.get('v')!r}; this version of Strongroom reads "
                                 f"format {FORMAT_VERSION} only: back up into a new vault")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"tree does not decode: {exc}") from None
    return entries


def is_safe_name(name: bytes) -> bool:
    """A name that stays inside its directory: not empty, not . or .., no slash, no NUL."""
    # 0x2F and 0 are "/" and NUL: an int test of bytes skips the TypeError that CPython raises
    # and clears inside `b"/" in name` (ten times slower; run for every entry a mount lists).
    return bool(name) and name not in (b".", b"..") and 0x2F not in name and 0 not in name


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return msgpack.packb({**manifest, "v": MANIFEST_VERSION}, use_bin_type=True)


def decode_manifest(data: bytes) -> dict[str, Any]:
    try:
        doc = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"point manifest does not decode: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != MANIFEST_VERSION:
        version = doc.get("v") if isinstance(doc, dict) else None
        raise IntegrityError(f"point manifest has format {version!r}; this version of Strongroom "
                             f"reads format {MANIFEST_VERSION} only")
    wrong = [name for name, kind in _MANIFEST_FIELDS.items() if not isinstance(doc.get(name), kind)]
    if wrong:
        raise IntegrityError(f"point manifest lacks or mistypes {', '.join(wrong)}")
    return doc


def display_path(path: bytes) -> str:
    """A path for people and JSON: bytes that are not UTF-8 appear as \\xNN escapes."""
    return path.decode("utf-8", "backslashreplace")


def join(parent: bytes, name: bytes) -> bytes:
    return parent.rstrip(b"/") + b"/" + name if parent else name


def split_abs(path: bytes) -> list[bytes]:
    """The components of an absolute path, normalised (no empty, no . or ..)."""
    return [p for p in os.path.normpath(path).split(b"/") if p]
