"""Large files in a restore: from restore._STAGED_MIN on, written from page-aligned stages
with O_DIRECT (fsutil.write_staged), new and over existing files, hardlinked too."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

from strongroom.agent.restore import _STAGE, _STAGED_MIN
from treeutil import assert_trees_equal

MTIME = 1_600_000_000_123_456_789


def test_large_files_are_exact_and_written_past_the_page_cache(registered, tmp_path):
    """Files past restore._STAGED_MIN are written from page-aligned stages with O_DIRECT
    (fsutil.write_staged): several stages and an unaligned tail, a hardlink pair, and the same
    files again over themselves (--conflict overwrite: a temp name renamed over each) come
    back exact; a new file's stages do not stay in the page cache."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    sizes = {"exact-stages": _STAGED_MIN + 2 * _STAGE, "tail": _STAGED_MIN + _STAGE + 4097, "linked": _STAGED_MIN + 1}
    for name, size in sizes.items():  # random bytes (stored raw) and text (compressed)
        text = b"text " * (size // 10)
        (src / name).write_bytes(rng.randbytes(size // 2) + text + rng.randbytes(size - size // 2 - len(text)))
    os.link(src / "linked", src / "linked-too")
    for i, path in enumerate(sorted(src.iterdir())):
        os.chmod(path, 0o640)
        os.utime(path, ns=(MTIME + i, MTIME + 3 * i))
    registered.backup(src)
    target = tmp_path / "out"
    restored = target / str(src).lstrip("/")
    for _ in range(2):  # new files, then over themselves
        doc = registered.restore("latest", target=target, conflict="overwrite")
        assert doc["errors"] == []
        if shutil.which("fincore") is not None and _takes_direct(restored / "tail"):  # before reading it
            cached = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "PAGES",
                                     str(restored / "tail")], capture_output=True, text=True, check=True).stdout
            assert int(cached.split()[0]) <= 1  # the unaligned tail's page
        assert_trees_equal(src, restored)
    assert os.stat(restored / "linked").st_ino == os.stat(restored / "linked-too").st_ino


def _takes_direct(path: Path) -> bool:
    """Whether the filesystem of `path` (a file) accepts O_DIRECT (tmpfs before Linux 6.6 does not)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        return True
    except OSError:
        return False
