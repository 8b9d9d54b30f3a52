"""FolderStorage.put: large objects from page-aligned memory go to disk with O_DIRECT, bypassing the
page cache; any other buffer (bytes, odd lengths, a filesystem without O_DIRECT) is written the
ordinary way. Whatever the path, the object reads back byte for byte and no temp file is left."""

import mmap
import os
from pathlib import Path

import pytest

from pagecache import needs_fincore, resident_pages
from strongroom import fsutil
from strongroom.vault.storage.fs import FolderStorage

MIB = 1024 * 1024


def _mapped(data: bytes) -> mmap.mmap:
    buf = mmap.mmap(-1, len(data) + 4096)
    buf[: len(data)] = data
    return buf


@pytest.mark.parametrize("size", [4 * MIB, 4 * MIB + 123, 2 * MIB - 4095, MIB - 1, 10])
def test_aligned_memory_round_trips(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    buf = _mapped(data)
    storage = FolderStorage(tmp_path)
    with memoryview(buf) as view:
        storage.put("packs/ab/pack", view[:size])
    assert storage.get("packs/ab/pack") == data
    assert [n for n in os.listdir(tmp_path / "packs/ab")] == ["pack"]


@needs_fincore
def test_large_aligned_object_bypasses_page_cache(tmp_path: Path) -> None:
    size = 8 * MIB + 1000
    buf = _mapped(os.urandom(size))
    with memoryview(buf) as view:
        FolderStorage(tmp_path).put("pack", view[:size])
    # Only the unaligned tail (one page) went through the page cache.
    assert resident_pages(tmp_path / "pack") <= 1


@pytest.mark.parametrize("offset", [0, 1, 512])
def test_unaligned_or_immutable_buffers_fall_back(tmp_path: Path, offset: int) -> None:
    """bytes objects, and views that start off a block boundary, are refused by O_DIRECT
    (EINVAL) before anything is written: the write goes on the ordinary way."""
    data = os.urandom(3 * MIB + 77)
    storage = FolderStorage(tmp_path)
    storage.put("a", data[offset:])
    buf = _mapped(data)
    with memoryview(buf) as view:
        storage.put("b", view[offset: len(data)])
    assert storage.get("a") == data[offset:] and storage.get("b") == data[offset:]


def test_without_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform without O_DIRECT writes every object the ordinary way."""
    monkeypatch.setattr(fsutil, "_O_DIRECT", 0)
    data = os.urandom(2 * MIB)
    buf = _mapped(data)
    with memoryview(buf) as view:
        FolderStorage(tmp_path).put("x", view[: len(data)])
    assert (tmp_path / "x").read_bytes() == data
