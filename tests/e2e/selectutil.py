"""Trees for the selection tests: a source tree, and the copy a restore should give when
some of its entries were left out (for treeutil.assert_trees_equal)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from treeutil import copy_tree

PAST_NS = 1_600_000_000_123_456_789  # a fixed past time: no backup sees a file as "just changed"


def make_files(root: Path, files: dict[str, bytes | None]) -> Path:
    """Writes `files` (relative path -> content; None: an empty directory) under root, and
    dates everything PAST_NS."""
    for rel, data in files.items():
        p = root / rel
        if data is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    stamp(root)
    return root


def stamp(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), ns=(PAST_NS, PAST_NS), follow_symlinks=False)
    os.utime(root, ns=(PAST_NS, PAST_NS))


def expected_tree(src: Path, dst: Path, leave_out: list[str]) -> Path:
    """A copy of src without the entries `leave_out` names (relative paths), every remaining
    directory dated as in src: what a restore of a selective backup must equal."""
    copy_tree(src, dst)
    for rel in leave_out:
        p = dst / rel
        assert os.path.lexists(p), f"the test leaves out {rel}, which is not in the tree"
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    for dirpath, _dirnames, _files in os.walk(dst):
        st = os.lstat(src / os.path.relpath(dirpath, dst))
        os.utime(dirpath, ns=(st.st_atime_ns, st.st_mtime_ns))
    return dst
