"""fsutil.Stage: pieces put into page-aligned memory and written past the page cache (O_DIRECT),
the unaligned tail the ordinary way; whatever the pieces' sizes (empty, filling the stage,
ending on a block's edge), the file reads back byte for byte, and a piece not kept (a decode
that failed half-way) never reaches the file."""

import os
from pathlib import Path

import pytest

from pagecache import needs_fincore, resident_pages
from strongroom import fsutil
from strongroom.fsutil import DIRECT_ALIGN, Stage

STAGE = 4 * DIRECT_ALIGN
LARGEST = STAGE - DIRECT_ALIGN + 1  # what fits behind any unaligned end


def _write(path: Path, pieces: list[bytes], dropped: bytes = b"", stage: Stage | None = None) -> int:
    """Writes `pieces` through a stage, `dropped` put into the room after them and not kept."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        stage = stage or Stage(STAGE)
        stage.start(fd)
        for piece in pieces:
            stage.room(len(piece))[:] = piece
            stage.keep(len(piece))
        stage.room(len(dropped))[:] = dropped
        return stage.finish()
    finally:
        os.close(fd)


@pytest.mark.parametrize("sizes", [
    [], [0], [10], [LARGEST], [STAGE - 1, 1], [DIRECT_ALIGN, STAGE - DIRECT_ALIGN, 5],
    [DIRECT_ALIGN + 1, LARGEST, 7, 0, LARGEST, 3], [1] * 100, [LARGEST] * 5,
])
def test_pieces_read_back_exactly(tmp_path: Path, sizes: list[int]) -> None:
    pieces = [os.urandom(n) for n in sizes]
    assert _write(tmp_path / "f", pieces) == sum(sizes)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


def test_a_piece_larger_than_the_room_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _write(tmp_path / "f", [b"x"], os.urandom(STAGE))


@pytest.mark.parametrize("sizes", [[], [DIRECT_ALIGN + 3], [LARGEST, LARGEST]])
def test_what_is_not_kept_is_not_written(tmp_path: Path, sizes: list[int]) -> None:
    pieces = [os.urandom(n) for n in sizes]
    assert _write(tmp_path / "f", pieces, dropped=b"unverified" * 100) == sum(sizes)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


def test_a_stage_kept_for_another_file_writes_only_that_files_pieces(tmp_path: Path) -> None:
    """A writer keeps its stage from file to file: a file that failed half-way (pieces kept,
    one not, no `finish`) leaves nothing of it in the next file."""
    stage = Stage(STAGE)
    fd = os.open(tmp_path / "failed", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        stage.start(fd)
        stage.room(DIRECT_ALIGN + 5)[:] = b"k" * (DIRECT_ALIGN + 5)
        stage.keep(DIRECT_ALIGN + 5)
        stage.room(100)[:] = b"u" * 100
    finally:
        os.close(fd)
    pieces = [os.urandom(LARGEST), os.urandom(7)]
    assert _write(tmp_path / "next", pieces, stage=stage) == LARGEST + 7
    assert (tmp_path / "next").read_bytes() == b"".join(pieces)


def test_without_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform or filesystem without O_DIRECT gets every stage the ordinary way."""
    monkeypatch.setattr(fsutil, "_O_DIRECT", 0)
    pieces = [os.urandom(LARGEST), os.urandom(LARGEST - 100), os.urandom(3)]
    assert _write(tmp_path / "f", pieces) == sum(map(len, pieces))
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


@needs_fincore
def test_stages_bypass_the_page_cache(tmp_path: Path) -> None:
    pieces = [os.urandom(n) for n in (LARGEST, LARGEST - 17, 1000)]
    _write(tmp_path / "f", pieces)
    assert resident_pages(tmp_path / "f") <= 1  # the unaligned tail's page
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)
