"""Restoring one path into a new target recreates its parent folders as they were."""

from __future__ import annotations

import os


def test_parents_of_a_restored_path_get_their_metadata(registered, tmp_path):
    src = tmp_path / "src"
    deep = src / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "file.txt").write_text("content\n")
    os.chmod(src / "a", 0o750)
    os.utime(src / "a", ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    os.utime(deep, ns=(1_400_000_000_000_000_001, 1_400_000_000_000_000_001))
    registered.backup(src)

    target = tmp_path / "target"
    registered.restore("latest", deep / "file.txt", target=target)
    restored = target / str(src).lstrip("/")
    assert (restored / "a" / "b" / "file.txt").read_text() == "content\n"
    for rel in ("a", "a/b"):
        want, got = os.stat(src / rel), os.stat(restored / rel)
        assert (got.st_mode, got.st_mtime_ns) == (want.st_mode, want.st_mtime_ns), rel
